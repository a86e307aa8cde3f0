"""The CPU-vs-timm table of docs/performance.md from repeated benchmark records.

    python experiments/scale/cpu_table.py experiments/scale/cpu_vs_timm/*.json

Groups the `python -m vit_jax.benchmark ... --timm on --json F` records by (model, mode,
batch, jax release) and prints one Markdown row per group: our and timm's images/s (median over
the repeats), the ratio timm step time / ours for each repeat and their median, min and max.
"""

from __future__ import annotations

import collections
import json
import statistics
import sys


def rows(records: list[dict]) -> list[str]:
  """Markdown rows, one per (model, mode, batch, jax), in the order first seen."""
  groups: dict[tuple, list[dict]] = collections.defaultdict(list)
  for r in records:
    # Records from before the benchmark wrote its versions ran on jax 0.10.2.
    groups[(r["model"], r["mode"], r["batch"], r.get("jax_version", "0.10.2"))].append(r)
  out = ["| model | mode | batch | jax | runs | ours img/s | timm img/s "
         "| ratio (median, min-max) |",
         "|---|---|---|---|---|---|---|---|"]
  for (model, mode, batch, jax_version), rs in groups.items():
    ours = statistics.median(r["img_per_sec"] for r in rs)
    if all("timm_img_per_sec" in r for r in rs):
      theirs = f"{statistics.median(r['timm_img_per_sec'] for r in rs):.3g}"
      ratios = [r["ratio_vs_timm"] for r in rs]
      ratio = (f"**{statistics.median(ratios):.2f}** ({min(ratios):.2f}-{max(ratios):.2f})")
    else:
      theirs, ratio = "–", "–"
    out.append(f"| {model} | {mode} | {batch} | {jax_version} | {len(rs)} | {ours:.3g} | "
               f"{theirs} | {ratio} |")
  return out


def main(paths: list[str]) -> None:
  if not paths:
    raise SystemExit("error: give the benchmark's JSON records, e.g. experiments/scale/"
                     "cpu_vs_timm/*.json")
  records = []
  for path in paths:
    with open(path) as f:
      records.append(json.load(f))
  print("\n".join(rows(records)))


if __name__ == "__main__":
  main(sys.argv[1:])
