"""Transfer sweeps: a hyper-parameter chosen per dataset on its minival, then one final run each.

A sweep config with `get_selection()` is a transfer sweep. The selection names the key that
groups runs (e.g. `config_arg`, one group per dataset), the key chosen within each group (e.g.
`lr`), and `final(overrides)`, the overrides of the final run made with the chosen value (e.g.
training on the whole training split and evaluating on the test split, as the ViT paper and
VTAB-1k do). `label(value)` (optional) names a group in tables, and `means` (optional) maps a
title to the group values averaged together (VTAB's natural / specialized / structured).
The selection runs' `eval/accuracy` (on minival) decides; a tie goes to the first in sweep order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vit_jax.sweep_config import run_name

Row = dict[str, Any]


def _label(selection: dict[str, Any]) -> Callable[[Any], str]:
  return selection.get("label") or str


def choose(rows: list[Row], runs: list[Row], selection: dict[str, Any]) -> dict[str, Row]:
  """For each group value (in sweep order) with a finished run, the overrides of its best run."""
  group = selection["group"]
  finished = {row["run"]: row for row in rows}
  best: dict[str, tuple[float, Row]] = {}
  for overrides in runs:
    row = finished.get(run_name(overrides))
    if row is None:
      continue
    key = str(overrides[group])
    if key not in best or row["eval/accuracy"] > best[key][0]:
      best[key] = (row["eval/accuracy"], overrides)
  return {key: overrides for key, (_, overrides) in best.items()}


def final_runs(chosen: dict[str, Row], selection: dict[str, Any]) -> list[Row]:
  """The final run's overrides for each chosen run."""
  return [selection["final"](dict(overrides)) for overrides in chosen.values()]


def _fmt(value: float | None) -> str:
  return "n/a" if value is None else f"{value:.4f}"


def report(rows: list[Row], runs: list[Row], finals: list[Row],
           selection: dict[str, Any]) -> tuple[str, list[tuple[str, float | None]]]:
  """The transfer table (Markdown) and the (label, test accuracy) of each group and mean."""
  group, key, label = selection["group"], selection["choose"], _label(selection)
  by_name = {row["run"]: row for row in rows}
  groups = list(dict.fromkeys(str(r[group]) for r in runs))
  values = list(dict.fromkeys(str(r[key]) for r in runs))
  chosen = choose(rows, runs, selection)
  final_of = {str(f[group]): by_name.get(run_name(f)) for f in finals}
  lines = ["## Transfer: the value chosen on minival, and the final run's test accuracy", "",
           f"Minival `eval/accuracy` for each `{key}`; the best (first on ties) is chosen, and its "
           "final run trains as `final` says and reports the test split's accuracy.", "",
           "| dataset | " + " | ".join(f"{key}={v}" for v in values) + f" | chosen {key} | test |",
           "|" + "---|" * (len(values) + 3)]
  tests: list[tuple[str, float | None]] = []
  test_by_group: dict[str, float | None] = {}
  for g in groups:
    cells = []
    for v in values:
      match = [r for r in runs if str(r[group]) == g and str(r[key]) == v]
      row = by_name.get(run_name(match[0])) if match else None
      cells.append(_fmt(row["eval/accuracy"]) if row else "n/a")
    pick = chosen.get(g)
    final = final_of.get(g)
    test = final["eval/accuracy"] if final else None
    test_by_group[g] = test
    tests.append((label(g), test))
    lines.append(f"| {label(g)} | " + " | ".join(cells) +
                 f" | {pick[key] if pick else 'n/a'} | {_fmt(test)} |")
  for title, members in (selection.get("means") or {}).items():
    have = [test_by_group.get(str(m)) for m in members]
    done = [t for t in have if t is not None]
    mean = float(np.mean(done)) if done and len(done) == len(have) else None
    tests.append((title, mean))
    count = "" if mean is not None else f" ({len(done)} of {len(have)} finished)"
    lines.append(f"| **{title}** |" + " |" * len(values) + f" | **{_fmt(mean)}**{count} |")
  lines.append("")
  return "\n".join(lines), tests


def plot(tests: list[tuple[str, float | None]], path: str, title: str = "") -> None:
  """Bars of the test accuracy of each dataset (and mean)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = [n for n, _ in tests]
  heights = [np.nan if t is None else t for _, t in tests]
  fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 2), 4))
  bars = ax.bar(np.arange(len(names)), heights, color="tab:blue")
  for bar, value in zip(bars, heights, strict=True):
    if np.isfinite(value):
      ax.annotate(f"{value:.3f}", (bar.get_x() + bar.get_width() / 2, value), ha="center",
                  va="bottom", fontsize=7)
  ax.set_xticks(np.arange(len(names)), names, rotation=45, ha="right", fontsize=8)
  ax.set_ylim(0, 1.05)
  ax.set_ylabel("test accuracy")
  ax.grid(axis="y", alpha=0.3)
  ax.set_title(title or "Transfer: test accuracy at the learning rate chosen on minival",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
