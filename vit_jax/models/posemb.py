"""Additive position embeddings, selected by name.

Every kind maps a patch grid (gh, gw) and width D to an array added to the token sequence.
`learn1d` follows the original ViT format: when the model has a class token the table has one
extra leading row for it, so checkpoints and parameter counts match the paper exactly.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

KINDS = ("none", "learn1d")


class Learned1D(nn.Module):
  """A learned (1, num_tokens, D) table added to the token sequence in raster order."""

  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.normal(stddev=0.02)
    table = self.param("pos_embedding", init, (1, x.shape[1], x.shape[2]), self.param_dtype)
    return x + table.astype(x.dtype)


def check_kind(kind: str) -> None:
  """Raises a clear error for an unknown position-embedding kind."""
  if kind not in KINDS:
    raise ValueError(f"unknown position embedding '{kind}'; choose one of: {', '.join(KINDS)}")


def add_position_embedding(kind: str, x: jax.Array, param_dtype: Any = jnp.float32) -> jax.Array:
  """Adds the position embedding `kind` to tokens `x` (B, T, D); call inside a compact module."""
  check_kind(kind)
  if kind == "none":
    return x
  return Learned1D(param_dtype=param_dtype, name="posembed_input")(x)
