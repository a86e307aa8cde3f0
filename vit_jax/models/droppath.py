"""Stochastic depth (Huang et al., 2016): drop a residual branch for whole examples.

Used by every family's blocks as `x + DropPath(rate)(branch(x), train)`. The per-block rates
rise linearly from 0 at the first block to `model.drop_path` at the last (`rates`), as in
DeiT, T2T-ViT and TNT. The random draw uses the `dropout` RNG stream, so it is reproducible
from the step's key like dropout.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def rates(drop_path: float, depth: int) -> tuple[float, ...]:
  """The drop rate of each of `depth` blocks: linear from 0 to `drop_path` (inclusive)."""
  if depth <= 1:
    return (0.0,) * depth
  return tuple(drop_path * i / (depth - 1) for i in range(depth))


class DropPath(nn.Module):
  """Zeroes the branch of each example with probability `rate` in training, else scales it.

  Kept examples are divided by 1 - rate, so the expected output is the input; evaluation (and
  rate 0) returns the input unchanged. `rate` may be a traced scalar (a scanned layer's rate).
  """

  rate: float | jax.Array = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if not train or (isinstance(self.rate, (int, float)) and self.rate == 0):
      return x
    keep = 1.0 - jnp.asarray(self.rate, jnp.float32)
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    kept = jax.random.uniform(self.make_rng("dropout"), shape) < keep
    return jnp.where(kept, x / keep.astype(x.dtype), jnp.zeros_like(x))
