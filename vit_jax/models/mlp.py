"""The Transformer's position-wise MLP block."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
# `tanh`: the original ViT's tanh approximation; `exact`: the erf form (PyTorch's nn.GELU, timm).
GELUS = ("tanh", "exact")


class MlpBlock(nn.Module):
  """Dense(mlp_dim) -> GELU -> dropout -> Dense(width) -> dropout.

  The initialisers default to the ViT's (Xavier-uniform kernels, biases of std 1e-6).
  """

  mlp_dim: int
  dropout: float = 0.0
  gelu: str = "tanh"  # one of GELUS
  kernel_init: Callable = nn.initializers.xavier_uniform()
  bias_init: Callable = nn.initializers.normal(stddev=1e-6)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    dense = dict(
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=self.kernel_init,
        bias_init=self.bias_init,
    )
    if self.gelu not in GELUS:
      raise ValueError(f"gelu '{self.gelu}' is not one of {', '.join(GELUS)}")
    *lead, width = x.shape
    # Products of 2-D arrays: XLA:CPU runs their gradients faster than over (batch, tokens, .)
    # (docs/performance.md). Same function; dropout draws the same mask for either shape.
    x = nn.Dense(self.mlp_dim, name="Dense_0", **dense)(x.reshape(-1, width))
    x = nn.gelu(x, approximate=self.gelu == "tanh")
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(width, name="Dense_1", **dense)(x)
    return nn.Dropout(self.dropout, deterministic=not train)(x).reshape(*lead, width)
