"""Building blocks shared by the families born in PyTorch (T2T-ViT, TNT).

`dense` is an nn.Linear as those models initialise it (timm's trunc_normal_(std=.02), zero
bias), a `Linear` that multiplies the rows of its input as one 2-D product; `norm` a LayerNorm
with the module's epsilon, and `Mlp` the reference Mlp: fc1, GELU, dropout, fc2, dropout. Names
follow the reference state dicts (vit_jax.io.torch_state).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models.layernorm import LayerNorm

Dtype = Any
# timm's trunc_normal_(std=.02) cuts at +-2 absolute, i.e. 100 standard deviations.
TRUNC = nn.initializers.truncated_normal(0.02, lower=-100.0, upper=100.0)


def norm(module: nn.Module, name: str) -> LayerNorm:
  """A LayerNorm with `module`'s epsilon and dtypes."""
  return LayerNorm(epsilon=module.layernorm_epsilon, dtype=module.dtype,
                   param_dtype=module.param_dtype, name=name)


class Linear(nn.Dense):
  """`nn.Dense` applied to the rows of its input as one 2-D product, reshaped back.

  The same function and parameters as `nn.Dense`. Over (batch, tokens, features) XLA:CPU
  surrounds the gradients' products with layout copies; over rows it needs none.
  """

  def __call__(self, inputs: jax.Array) -> jax.Array:
    rows = super().__call__(inputs.reshape(-1, inputs.shape[-1]))
    return rows.reshape(*inputs.shape[:-1], self.features)


def dense(features: int, name: str, dtype: Dtype, param_dtype: Dtype,
           use_bias: bool = True) -> Linear:
  """A PyTorch-born Linear: trunc_normal(.02) kernel, zero bias, multiplying rows."""
  return Linear(features, use_bias=use_bias, kernel_init=TRUNC, dtype=dtype,
                param_dtype=param_dtype, name=name)


class Mlp(nn.Module):
  """fc1 -> GELU -> dropout -> fc2 -> dropout (the reference's Mlp)."""

  mlp_dim: int
  dropout: float = 0.0
  gelu: str = "exact"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    dt = (self.dtype, self.param_dtype)
    width = x.shape[-1]
    x = nn.gelu(dense(self.mlp_dim, "fc1", *dt)(x), approximate=self.gelu == "tanh")
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = dense(width, "fc2", *dt)(x)
    return nn.Dropout(self.dropout, deterministic=not train)(x)
