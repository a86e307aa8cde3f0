"""How benchmark results are printed."""

from __future__ import annotations


def table(result: dict) -> str:
  """The result as a two-column markdown table."""
  lines = ["| quantity | value |", "|---|---|"]
  lines += [f"| {k} | {v} |" for k, v in result.items()]
  return "\n".join(lines)
