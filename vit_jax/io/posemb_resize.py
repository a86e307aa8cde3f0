"""Carrying parameters over to a model with another patch grid (e.g. fine-tuning at 384 after 224).

Learned position tables are resampled on their 2-D grid: `learn1d` (and TNT's `patch_pos`) as
a gh x gw image (its class-token row untouched), `learn2d` each table along its own axis,
`relative` on its (2gh-1) x (2gw-1) offset grid (its class-token offsets untouched). Fixed kinds
have no parameters; the model recomputes them for the new grid (T2T-ViT's fixed table, stored as
a parameter, is taken from the new model, see `FIXED`).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import traverse_util

METHODS = ("bilinear", "bicubic")
# Fixed tables stored as parameters (T2T-ViT's sinusoids, kept for loading reference files
# bit-for-bit): at another grid the model's own table is used, not a resampled one.
FIXED = ("pos_embed",)
_JAX_METHOD = {"bilinear": "linear", "bicubic": "cubic"}
Grid = tuple[int, int]


def resample(array: np.ndarray, shape: tuple[int, int], method: str = "bilinear") -> np.ndarray:
  """Resamples the two leading (spatial) axes of `array` to `shape`; trailing axes are kept."""
  if method not in METHODS:
    raise ValueError(f"unknown resampling method '{method}'; choose one of: {', '.join(METHODS)}")
  array = np.asarray(array)
  out = jax.image.resize(array.astype(np.float32), (*shape, *array.shape[2:]),
                         _JAX_METHOD[method], antialias=False)
  return np.asarray(out).astype(array.dtype)


def resize_learn1d(table: np.ndarray, old: Grid, new: Grid, method: str = "bilinear") -> np.ndarray:
  """(1, prefix + gh*gw, D) -> (1, prefix + gh'*gw', D); prefix (class-token) rows are kept."""
  table = np.asarray(table)
  prefix = table.shape[1] - old[0] * old[1]
  if prefix < 0:
    raise ValueError(f"a learn1d table of {table.shape[1]} rows cannot hold a {old[0]}x{old[1]} "
                     "grid")
  grid = table[0, prefix:].reshape(*old, table.shape[2])
  grid = resample(grid, new, method).reshape(1, new[0] * new[1], table.shape[2])
  return np.concatenate([table[:, :prefix], grid], axis=1)


def resize_axis_table(table: np.ndarray, length: int, method: str = "bilinear") -> np.ndarray:
  """A learn2d row (gh, D/2) or column (gw, D/2) table resampled to `length` entries."""
  return resample(np.asarray(table)[:, None], (length, 1), method)[:, 0]


def resize_relative(table: np.ndarray, new: Grid, method: str = "bilinear") -> np.ndarray:
  """(2gh-1, 2gw-1, d) -> (2gh'-1, 2gw'-1, d)."""
  return resample(table, (2 * new[0] - 1, 2 * new[1] - 1), method)


def adapt_params(source: Any, target: Any, old: Grid, new: Grid, method: str = "bilinear",
                 fresh: tuple[str, ...] = ("head/",)) -> tuple[dict[str, Any], list[str]]:
  """Parameters shaped like `target`, taken from `source` and resampled where the grid changed.

  Parameters under a `fresh` prefix whose shape differs (a head for other classes) keep
  `target`'s values. Returns the tree and the names of the parameters that were not carried over.
  Raises ValueError naming a parameter that is missing or cannot be made to fit.
  """
  src = traverse_util.flatten_dict(source, sep="/")
  tgt = traverse_util.flatten_dict(target, sep="/")
  out, kept_fresh = {}, []
  for path, want in tgt.items():
    name = path.rsplit("/", 1)[-1]
    if path not in src:
      if any(path.startswith(p) for p in fresh):
        out[path], kept_fresh = want, [*kept_fresh, path]
        continue
      raise ValueError(f"the checkpoint has no parameter {path}; it was trained with another "
                       "architecture or position embedding")
    have = np.asarray(src[path])
    if name in FIXED and old != new:
      out[path] = want  # the model's own table for its grid
      continue
    if name in ("pos_embedding", "patch_pos"):
      have = resize_learn1d(have, old, new, method)
    elif name == "row_embedding":
      have = resize_axis_table(have, new[0], method)
    elif name == "col_embedding":
      have = resize_axis_table(have, new[1], method)
    elif name == "rel_embedding":
      have = resize_relative(have, new, method)
    if have.shape != tuple(want.shape):
      if any(path.startswith(p) for p in fresh):
        out[path], kept_fresh = want, [*kept_fresh, path]
        continue
      raise ValueError(f"parameter {path} has shape {have.shape} in the checkpoint but "
                       f"{tuple(want.shape)} in this model")
    out[path] = have
  return traverse_util.unflatten_dict(out, sep="/"), kept_fresh
