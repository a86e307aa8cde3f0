"""Reading a sweep config file: `get_config()`, `get_sweep()`, optionally `get_tables()` and
`get_selection()`.

`get_sweep()` lists one dict of `--config.key=value` overrides per run; `get_tables()` says how
results.md and results.png lay the runs out (`default_tables` when the file has none);
`get_selection()` makes it a transfer sweep (see vit_jax.transfer). The file may be given as
`FILE:ARG`; then each of these functions is called with ARG. One override key is reserved:
`config_arg`, the argument the run's `get_config` gets (`--config FILE:VALUE`) instead of ARG.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

CONFIG_ARG = "config_arg"


def run_name(overrides: dict[str, Any]) -> str:
  """A directory name from the overrides, e.g. `posemb=learn1d,posemb_mode=stem,seed=0`."""
  parts = [f"{key.rsplit('.', 1)[-1]}={value}" for key, value in overrides.items()]
  return ",".join(parts).replace("/", "_").replace(" ", "")


def split_arg(spec: str) -> tuple[str, str | None]:
  """`FILE:ARG` -> (FILE, ARG); `FILE` -> (FILE, None)."""
  path, colon, arg = spec.partition(":")
  return path, (arg if colon else None)


def call(module: Any, name: str, arg: str | None) -> Any:
  """`module.name(arg)`, or `module.name()` when the sweep was given no argument."""
  function = getattr(module, name)
  return function() if arg is None else function(arg)


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
