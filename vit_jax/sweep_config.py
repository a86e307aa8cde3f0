"""Reading a sweep config file: `get_config()`, `get_sweep()` and optionally `get_tables()`.

`get_sweep()` lists one dict of `--config.key=value` overrides per run; `get_tables()` says how
results.md and results.png lay the runs out (`default_tables` when the file has none).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any


def load_sweep(path: str) -> Any:
  """Imports a sweep config file as a module; it must define get_config and get_sweep."""
  if not os.path.isfile(path):
    raise ValueError(f"sweep config {path} not found; e.g. --config configs/sweeps/posemb.py")
  spec = importlib.util.spec_from_file_location("sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for name in ("get_config", "get_sweep"):
    if not hasattr(module, name):
      raise ValueError(f"{path} defines no {name}(); a sweep config needs get_config and get_sweep")
  return module


def default_tables(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One table: the first varied key as rows, the second (if any) as columns."""
  varied = [k for k in runs[0] if k != "seed" and len({str(r.get(k)) for r in runs}) > 1]
  varied = varied or [next(iter(runs[0]))]
  return [{"title": "Results", "rows": varied[0], "cols": varied[1] if len(varied) > 1 else None,
           "where": {}}]
