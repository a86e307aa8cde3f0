"""The parameters a run starts from (`init_from`): a workdir, an `.npz` or a `.safetensors` file.

A workdir gives its newest checkpoint and, from its `config.json`, the patch grid. An `.npz` file
(the original format, or big_vision's layout, converted by `vit_jax.io.big_vision`) and a
`.safetensors` file (a timm ViT's, converted by `vit_jax.io.timm`; timm's TNT, or the TNT or
T2T-ViT authors' state dict, converted by `vit_jax.io.torch_state`) have no config, so the grid
is read off the position tables (see `infer_grid`).
Every failure is a `PretrainedError` with one line naming the file and what to do.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from vit_jax.io import big_vision, npz, runs, timm, torch_state
from vit_jax.io.runs import error_reason

Grid = tuple[int, int]
_SOURCES = ("give a training run's workdir, an original-format .npz file or a timm .safetensors "
            "file")
_TIMM = ("give a .safetensors file of a timm ViT, a TNT (timm's or its authors') or the T2T-ViT "
         "authors' (converted by vit_jax.io.convert_torch), a training run's workdir or an .npz "
         "file")


class PretrainedError(ValueError):
  """A source of parameters that cannot be used; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """Loaded parameters and the patch grid they were trained at."""

  params: dict  # nested per-layer parameters, host numpy arrays
  grid: Grid | None  # the source's patch grid (gh, gw); None without a grid-dependent table
  source: str  # the path, for log messages
  gelu: str | None = None  # the GELU the source was trained with, where its format fixes it
  heads_recorded: bool = True  # False: the file leaves the attention's head count open

  def with_heads(self, num_heads: int) -> Pretrained:
    """These parameters for a model of `num_heads` heads (a timm file records no head count).

    Raises ValueError when the attention does not split into `num_heads` heads.
    """
    if self.heads_recorded:
      return self
    return dataclasses.replace(self, params=timm.split_heads(self.params, num_heads))


def _table_grid(path: str, key: str, flat: Mapping[str, np.ndarray], prefix: int) -> Grid:
  """The grid one position table was made for; raises PretrainedError when it fits none."""
  parent, _, name = key.rpartition("/")
  shape = flat[key].shape
  if name == "row_embedding":
    col = flat.get(f"{parent}/col_embedding")
    if col is None or len(shape) != 2 or col.ndim != 2:
      raise PretrainedError(f"{path}: {key} has no matching 2-D col_embedding; {_SOURCES}")
    return shape[0], col.shape[0]
  if name == "rel_embedding":
    if len(shape) != 3 or shape[0] % 2 == 0 or shape[1] % 2 == 0:
      raise PretrainedError(f"{path}: {key} of shape {shape} is no (2gh-1, 2gw-1, d) offset "
                            f"table; {_SOURCES}")
    return (shape[0] + 1) // 2, (shape[1] + 1) // 2
  rows = shape[1] - prefix if len(shape) == 3 else 0
  side = math.isqrt(max(rows, 0))
  if rows < 1 or side * side != rows:
    token = " after the class-token row" if prefix else ""
    raise PretrainedError(f"{path}: {key} of shape {shape} has {rows} patch rows{token}, no "
                          "square grid; give the run's workdir, whose config.json holds the grid")
  return side, side


def infer_grid(path: str, params: Mapping[str, Any]) -> Grid | None:
  """The patch grid the position tables of `params` were made for, or None without any table.

  `row_embedding`/`col_embedding` give (gh, gw) and `rel_embedding` (2gh-1, 2gw-1, d) gives
  (gh, gw). `pos_embedding` (1, rows, D) holds a class-token row exactly when the parameters have
  a class token (`cls`), as in our models and the original format; the remaining rows must be a
  square gh*gh (a non-square learn1d grid cannot be told from its table). All tables (one per
  layer in `every_layer` mode or for `relative`) must agree.
  """
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  prefix = int("cls" in params or "cls_token" in params)
  names = ("pos_embedding", "row_embedding", "rel_embedding", "pos_embed", "patch_pos")
  grids = {key: _table_grid(path, key, flat, prefix) for key in flat
           if key.rpartition("/")[2] in names}
  if len(set(grids.values())) > 1:
    found = ", ".join(f"{k} {g[0]}x{g[1]}" for k, g in grids.items())
    raise PretrainedError(f"{path}: the position tables disagree on the grid ({found}); "
                          f"{_SOURCES}")
  if not grids and "MixerBlock_0" in params:  # a Mixer's token-mixing weights fix its grid
    tokens = np.shape(params["MixerBlock_0"]["token_mixing"]["Dense_0"]["kernel"])[0]
    side = math.isqrt(tokens)
    return (side, side) if side * side == tokens else None
  return next(iter(grids.values()), None)


_GROUP_NORM = re.compile(r"(^|/)gn(_root|_proj|[123])/(scale|bias)$")


def _squeeze_group_norms(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """GroupNorm scales and biases stored as (1, 1, 1, C), as some hybrid files do, made (C,)."""
  return {key: value.reshape(-1) if _GROUP_NORM.search(key) and value.shape[:3] == (1, 1, 1)
          and value.ndim == 4 else value for key, value in flat.items()}


def _load_npz(path: str) -> Pretrained:
  if not zipfile.is_zipfile(path):
    raise PretrainedError(f"{path} is not an .npz archive (truncated or another format); "
                          f"{_SOURCES}")
  try:
    params = npz.load(path)
  except ValueError as e:
    if "allow_pickle" in str(e):
      raise PretrainedError(f"{path} holds pickled object arrays, which are never loaded; save "
                            "the parameters as numeric arrays (vit_jax.io.npz.save)") from None
    raise PretrainedError(f"{path} cannot be read ({error_reason(e)}); {_SOURCES}") from None
  except (OSError, EOFError, zipfile.BadZipFile) as e:
    raise PretrainedError(f"{path} cannot be read ({error_reason(e)}); {_SOURCES}") from None
  flat = traverse_util.flatten_dict(params, sep="/")
  if not flat:
    raise PretrainedError(f"{path} holds no arrays; {_SOURCES}")
  for key, value in flat.items():
    if not isinstance(value, np.ndarray):
      raise PretrainedError(f"{path}: member {key} is no .npy array; {_SOURCES}")
  flat = _squeeze_group_norms(flat)
  params = traverse_util.unflatten_dict(flat, sep="/")
  if big_vision.is_big_vision(flat):
    try:
      params = traverse_util.unflatten_dict(big_vision.to_original(flat), sep="/")
    except ValueError as e:
      raise PretrainedError(f"{path} (big_vision layout): {e}") from None
  return Pretrained(params, infer_grid(path, params), path)


def _load_safetensors(path: str) -> Pretrained:
  try:
    state = timm.read(path)
  except (ValueError, OSError) as e:
    raise PretrainedError(f"{path} is not a readable .safetensors file ({error_reason(e)}); "
                          f"{_TIMM}") from None
  if not state:
    raise PretrainedError(f"{path} holds no tensors; {_TIMM}")
  try:
    state = torch_state.from_tnt_authors(state)
  except ValueError as e:
    raise PretrainedError(f"{path}: {e}; {_TIMM}") from None
  family = torch_state.family_of_state(state)
  if family is not None:  # T2T-ViT or TNT: our names mirror the reference's
    try:
      params = torch_state.to_flax(torch_state.without_ignored(state, family))
    except ValueError as e:
      raise PretrainedError(f"{path}: {e}; {_TIMM}") from None
    return Pretrained(params, infer_grid(path, params), path, gelu="exact")
  try:
    params = traverse_util.unflatten_dict(timm.to_original(state), sep="/")
  except ValueError as e:
    raise PretrainedError(f"{path}: {e}; {_TIMM}") from None
  return Pretrained(params, infer_grid(path, params), path, gelu=timm.GELU, heads_recorded=False)


def _load_run(path: str) -> Pretrained:
  if not os.path.isfile(os.path.join(path, "config.json")):
    raise PretrainedError(f"{path} has no config.json, so it is no training run's workdir; "
                          f"{_SOURCES}")
  if not runs.has_checkpoint(path):
    raise PretrainedError(f"{path} has no checkpoint in checkpoints/; let that run save one, "
                          "or give another run's workdir or an .npz file")
  try:
    with runs.Run(path) as run:
      grid = run.grid()
      params = run.params()
  except runs.RunError as e:
    raise PretrainedError(str(e)) from None
  except Exception as e:  # Orbax/tensorstore errors come in many types
    raise PretrainedError(f"{path}: its checkpoint cannot be read ({error_reason(e)}); give "
                          "another run's workdir or an .npz file") from None
  return Pretrained(params, grid, path)


def load(path: str) -> Pretrained:
  """The parameters (and patch grid) of a run's workdir, an `.npz` or a timm `.safetensors` file.

  A timm file's attention is split as our preset of its width is, until `Pretrained.with_heads`
  names the model's head count.
  """
  is_timm = path.endswith(".safetensors")
  if not os.path.exists(path):
    raise PretrainedError(f"init_from {path} does not exist; {_TIMM if is_timm else _SOURCES}")
  if os.path.isdir(path):
    return _load_run(path)
  return _load_safetensors(path) if is_timm else _load_npz(path)

