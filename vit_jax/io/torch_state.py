"""PyTorch state dicts of the families whose parameter names mirror them (T2T-ViT, TNT).

Those families name their Flax parameters after the reference PyTorch modules, so one rule
converts a state dict both ways:

  a.b.c.weight (out, in)            a/b/c/kernel (in, out)           nn.Linear
  a.b.c.weight (O, I, kh, kw)       a/b/c/kernel (kh, kw, I, O)      nn.Conv2d
  a.b.c.weight (C,)                 a/b/c/scale                      nn.LayerNorm
  a.b.c.bias                        a/b/c/bias
  blocks.3.norm1.weight             blocks_3/norm1/scale             a ModuleList index
  cls_token, pos_embed, w ...       the same name, shape and layout  an nn.Parameter

`to_flax` and `from_flax` are inverses on such trees. Which family a state dict is of, and
which of its tensors a family leaves out (TNT's unused `outer_tokens`), is decided by the loader
(`vit_jax.io.pretrained`). TNT follows timm's names; `from_tnt_authors` renames the TNT
authors' own (`patch_embed`, `outer_pos`, `inner_pos`, `blocks.i.inner_attn` ...) to them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

# A Flax module name made of a torch ModuleList's name and index ("blocks_3").
_INDEXED = re.compile(r"^(.+)_(\d+)$")
# The state-dict key prefixes that tell each family apart (see `family_of_state`).
PREFIXES = {"T2T-ViT": "tokens_to_token.", "TNT": "pixel_embed."}
# Tensors a reference file may hold that no parameter here corresponds to.
IGNORED = {"TNT": ("outer_tokens",)}


def _flax_path(key: str) -> list[str]:
  parts: list[str] = []
  for part in key.split("."):
    if part.isdigit() and parts:
      parts[-1] = f"{parts[-1]}_{part}"
    else:
      parts.append(part)
  return parts


def _flax_leaf(name: str, value: np.ndarray, key: str) -> tuple[str, np.ndarray]:
  if name != "weight":
    return name, value
  if value.ndim == 1:
    return "scale", value
  if value.ndim == 2:
    return "kernel", value.T
  if value.ndim == 4:
    return "kernel", value.transpose(2, 3, 1, 0)
  raise ValueError(f"{key} of shape {value.shape} is no Linear, Conv2d or LayerNorm weight")


def to_flax(state: Mapping[str, Any]) -> dict[str, Any]:
  """A nested Flax parameter tree (NumPy arrays) from a PyTorch state dict of NumPy arrays."""
  flat: dict[tuple[str, ...], np.ndarray] = {}
  for key, value in state.items():
    *path, name = _flax_path(key)
    leaf, array = _flax_leaf(name, np.asarray(value), key)
    flat[(*path, leaf)] = np.ascontiguousarray(array)
  return traverse_util.unflatten_dict(flat)


def _torch_key(path: tuple[str, ...]) -> str:
  parts = []
  for part in path:
    match = _INDEXED.match(part)
    parts.extend(match.groups() if match else (part,))
  return ".".join(parts)


def from_flax(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The PyTorch state dict (NumPy arrays) of a Flax parameter tree; `to_flax` inverted."""
  state: dict[str, np.ndarray] = {}
  for path, value in traverse_util.flatten_dict(params).items():
    *parents, name = path
    array = np.asarray(value)
    if name == "kernel":
      name, array = "weight", array.T if array.ndim == 2 else array.transpose(3, 2, 0, 1)
    elif name == "scale":
      name = "weight"
    state[_torch_key((*parents, name))] = np.ascontiguousarray(array)
  return state


# The TNT authors' module names (huawei-noah's tnt_pytorch) and timm's for the same module.
TNT_AUTHOR_NAMES = {
    "patch_embed": "pixel_embed", "outer_pos": "patch_pos", "inner_pos": "pixel_pos",
    "proj_norm1": "norm1_proj", "proj_norm2": "norm2_proj", "inner_norm1": "norm_in",
    "inner_attn": "attn_in", "inner_norm2": "norm_mlp_in", "inner_mlp": "mlp_in",
    "outer_norm1": "norm_out", "outer_attn": "attn_out", "outer_norm2": "norm_mlp",
    "outer_mlp": "mlp",
}


def from_tnt_authors(state: Mapping[str, Any]) -> dict[str, Any]:
  """A TNT state dict in the authors' names renamed to timm's; any other state as it is.

  The authors' `inner_pos` (1, h*w, c), row-major over the inner grid, becomes timm's
  `pixel_pos` (1, c, h, w). Told apart by their `outer_pos` and `inner_pos`.
  """
  if "outer_pos" not in state or "inner_pos" not in state:
    return dict(state)
  out = {}
  for key, value in state.items():
    out[".".join(TNT_AUTHOR_NAMES.get(part, part) for part in key.split("."))] = value
  inner = np.asarray(out["pixel_pos"])
  side = math.isqrt(inner.shape[1])
  if inner.ndim != 3 or side * side != inner.shape[1]:
    raise ValueError(f"inner_pos of shape {inner.shape} is not (1, h*w, c) of a square patch")
  out["pixel_pos"] = inner.transpose(0, 2, 1).reshape(1, inner.shape[2], side, side)
  return out


def family_of_state(state: Mapping[str, Any]) -> str | None:
  """The family name whose reference state dict `state` is ("T2T-ViT", "TNT"), or None."""
  return next((name for name, prefix in PREFIXES.items()
               if any(key.startswith(prefix) for key in state)), None)


def without_ignored(state: Mapping[str, Any], family: str) -> dict[str, Any]:
  """`state` without the tensors of the reference file that `family` has no parameter for."""
  ignored = IGNORED.get(family, ())
  return {key: value for key, value in state.items() if key not in ignored}
