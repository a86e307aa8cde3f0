"""Summaries of sweep results: mean and spread over seeds, laid out as Markdown tables."""

from __future__ import annotations

from typing import Any

import numpy as np


def shot_keys(rows: list[dict[str, Any]]) -> list[str]:
  """The `fewshot/<k>shot_accuracy` keys present, in increasing k."""
  keys = {k for row in rows for k in row if k.startswith("fewshot/")}
  return sorted(keys, key=lambda k: int(k.split("/")[1].split("shot")[0]))


def matches(row: dict[str, Any], where: dict[str, Any]) -> bool:
  """Whether a run has every key/value of `where`."""
  return all(str(row.get(k)) == str(v) for k, v in where.items())


def mean_std(values: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value)."""
  array = np.asarray(values, np.float64)
  return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def cells(rows: list[dict[str, Any]], table: dict[str, Any], metric: str
          ) -> dict[tuple[str, str], list[float]]:
  """Values of `metric` grouped by the table's (row value, column value)."""
  out: dict[tuple[str, str], list[float]] = {}
  for row in rows:
    if matches(row, table.get("where", {})) and metric in row:
      key = (str(row.get(table["rows"])), str(row.get(table["cols"])) if table["cols"] else "")
      out.setdefault(key, []).append(float(row[metric]))
  return out


def _order(runs: list[dict[str, Any]], key: str | None, where: dict[str, Any]) -> list[str]:
  if key is None:
    return [""]
  return list(dict.fromkeys(str(r.get(key)) for r in runs if matches(r, where)))


def _fmt(values: list[float] | None) -> str:
  if not values:
    return "n/a"
  mean, std = mean_std(values)
  return f"{mean:.4f} ± {std:.4f}" if len(values) > 1 else f"{mean:.4f}"  # one seed: no spread


def markdown(rows: list[dict[str, Any]], runs: list[dict[str, Any]],
             tables: list[dict[str, Any]]) -> str:
  """results.md: for each table, cells 'eval accuracy / k-shot accuracy' as mean ± std."""
  shots = shot_keys(rows)
  shot = shots[-1] if shots else None
  lines = ["# Sweep results", "",
           f"{len(rows)} of {len(runs)} runs finished. Each cell: mean ± sample standard deviation "
           "over seeds (the mean alone for one seed) of the final `eval/accuracy`" +
           (f", then of `{shot}`" if shot else "") + "; n is the number of seeds.", ""]
  for table in tables:
    where = table.get("where", {})
    row_values = _order(runs, table["rows"], where)
    col_values = _order(runs, table["cols"], where)
    evals = cells(rows, table, "eval/accuracy")
    fews = cells(rows, table, shot) if shot else {}
    lines += [f"## {table.get('title', 'Results')}", ""]
    if where:
      lines += ["Runs with " + ", ".join(f"`{k}={v}`" for k, v in where.items()) + ".", ""]
    header = [table["rows"]] + [c or "result" for c in col_values]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in row_values:
      cells_text = []
      for c in col_values:
        values = evals.get((r, c))
        if not values:
          cells_text.append("n/a")
          continue
        text = _fmt(values)
        if shot:
          text += f" / {_fmt(fews.get((r, c)))}"
        cells_text.append(f"{text} (n={len(values)})")
      lines.append("| " + " | ".join([r, *cells_text]) + " |")
    lines.append("")
  return "\n".join(lines)
