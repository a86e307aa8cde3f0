"""big_vision's ViT `.npz` layout, converted to the original (this project's) parameter names.

big_vision saves its parameters under `params/`, with the position table at the top level
(`params/pos_embedding`, patch rows only: its class token gets no position embedding), the
encoder blocks usually scanned (`params/Transformer/encoderblock/...` with a leading layer axis)
and its block's submodules numbered `LayerNorm_0`, `MultiHeadDotProductAttention_0`,
`LayerNorm_1`, `MlpBlock_0`. The tensors themselves (attention kernels (D, H, D/H), the patch
convolution, the MLP) have the same shapes and meaning as ours.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

# Block submodules: big_vision's name -> ours.
BLOCK = {"LayerNorm_0": "LayerNorm_0", "MultiHeadDotProductAttention_0":
         "MultiHeadDotProductAttention_1", "LayerNorm_1": "LayerNorm_2",
         "MlpBlock_0": "MlpBlock_3"}
_SCANNED = "Transformer/encoderblock/"
_PER_LAYER = re.compile(r"^Transformer/encoderblock_(\d+)/")


def is_big_vision(flat: Mapping[str, np.ndarray]) -> bool:
  """Whether '/'-joined keys are in big_vision's layout (its top-level `params/` collection)."""
  return bool(flat) and all(key.startswith("params/") for key in flat)


def _block_key(rest: str, layer: int) -> str:
  sub, _, leaf = rest.partition("/")
  if sub not in BLOCK:
    raise ValueError(f"unknown encoder-block part '{sub}' (expected one of {', '.join(BLOCK)})")
  return f"Transformer/encoderblock_{layer}/{BLOCK[sub]}/{leaf}"


def to_original(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """big_vision's '/'-joined parameters -> ours (per-layer names, class-token position row).

  Raises ValueError naming a key it cannot place.
  """
  out: dict[str, np.ndarray] = {}
  for key, value in flat.items():
    key = key.removeprefix("params/")
    if key.startswith(_SCANNED):
      rest = key[len(_SCANNED):]
      for layer in range(value.shape[0]):
        out[_block_key(rest, layer)] = value[layer]
    elif match := _PER_LAYER.match(key):
      out[_block_key(key[match.end():], int(match.group(1)))] = value
    elif key == "pos_embedding":
      if "params/cls" in flat:  # our table has a (zero) row for the class token
        value = np.concatenate([np.zeros_like(value[:, :1]), value], axis=1)
      out["Transformer/posembed_input/pos_embedding"] = value
    elif key.partition("/")[0] in ("embedding", "cls", "head", "pre_logits") or key.startswith(
        "Transformer/encoder_norm/"):
      out[key] = value
    else:
      raise ValueError(f"big_vision parameter '{key}' has no counterpart here")
  return out
