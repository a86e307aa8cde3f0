"""Pooling heads that turn the encoder's tokens into one feature vector per image."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models.layernorm import LayerNorm
from vit_jax.models.mlp import MlpBlock


class MAPHead(nn.Module):
  """Multihead attention pooling: a learned probe attends over the tokens, then an MLP block."""

  num_heads: int
  mlp_dim: int
  gelu: str = "tanh"  # see vit_jax.models.mlp.GELUS
  layernorm_epsilon: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    batch, _, width = x.shape
    probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, width),
                       self.param_dtype)
    probe = jnp.tile(probe.astype(x.dtype), (batch, 1, 1))
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform(),
        name="MultiHeadDotProductAttention_0", **dt)(probe, x)
    z = LayerNorm(epsilon=self.layernorm_epsilon, name="LayerNorm_0", **dt)(y)
    y = y + MlpBlock(self.mlp_dim, gelu=self.gelu, name="MlpBlock_0", **dt)(z, train=False)
    return y[:, 0]
