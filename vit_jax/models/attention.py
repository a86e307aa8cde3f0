"""Choosing how softmax(q.k / sqrt(d) + bias) v is computed.

`plain` is Flax's own einsum-softmax-einsum (the only one with dropout on attention weights).
`xla` and `cudnn` call `jax.nn.dot_product_attention` with that implementation: on GPU, `cudnn`
is the fused flash-attention kernel (bfloat16/float16 only). `auto` takes `cudnn` on a GPU with a
half-precision compute dtype and `xla` elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "plain", "xla", "cudnn")
HALF = (jnp.bfloat16, jnp.float16)


def _half(dtype: Any) -> bool:
  return jnp.dtype(dtype) in [jnp.dtype(d) for d in HALF]


def check(implementation: str, attention_dropout: float, *, backend: str | None = None,
          dtype: Any = None, relative: bool = False) -> str | None:
  """Why this implementation cannot be used (None when it can).

  With `backend` and `dtype` given, `cudnn` is also checked against them.
  """
  if implementation not in IMPLEMENTATIONS:
    return (f"attention '{implementation}' is not one of {', '.join(IMPLEMENTATIONS)}")
  if implementation != "plain" and attention_dropout > 0:
    return (f"attention '{implementation}' has no dropout on attention weights; set "
            "attention=plain or attention_dropout=0")
  if implementation == "cudnn":
    if backend is not None and backend != "gpu":
      return f"attention 'cudnn' needs a GPU (this backend is {backend}); use auto or xla"
    if dtype is not None and not _half(dtype):
      return f"attention 'cudnn' needs dtype bfloat16 or float16, got {dtype}; use auto or xla"
    if relative:
      return "attention 'cudnn' does not take the relative position bias; use auto or xla"
  return None


def resolve(implementation: str, dtype: Any, *, has_bias: bool = False) -> str:
  """The concrete implementation `auto` stands for on this backend and compute dtype.

  A per-query bias (the relative position embedding) keeps `auto` on XLA: cuDNN's fused kernel
  restricts biases (e.g. to even sequence lengths in training) and ViT has 197 tokens.
  """
  if implementation != "auto":
    return implementation
  gpu_half = jax.default_backend() == "gpu" and _half(dtype)
  return "cudnn" if gpu_half and not has_bias else "xla"


def _float32_logits(subscripts: str, query: jax.Array, key: jax.Array, **kwargs: Any) -> jax.Array:
  """q.k products accumulated and returned in float32 (bfloat16 logits lose the softmax's tail)."""
  return jnp.einsum(subscripts, query, key, preferred_element_type=jnp.float32, **kwargs)


def _weighted_values(subscripts: str, weights: jax.Array, value: jax.Array,
                     **kwargs: Any) -> jax.Array:
  """The float32 attention weights, rounded to the values' dtype, applied to the values."""
  return jnp.einsum(subscripts, weights.astype(value.dtype), value, **kwargs)


def attention_fn(implementation: str, dtype: Any,
                 extra_bias: Callable[[jax.Array], jax.Array] | None = None) -> Callable:
  """An `attention_fn` for nn.MultiHeadDotProductAttention.

  `extra_bias(query)` (optional) returns a (B, H, T, T) bias added to the scaled logits; the
  relative position embedding uses it.
  """
  impl = resolve(implementation, dtype, has_bias=extra_bias is not None)

  # Flax passes only the keyword arguments named in this signature, so they are spelled out.
  def attend(query: jax.Array, key: jax.Array, value: jax.Array, bias: Any = None,
             mask: Any = None, dropout_rng: Any = None, dropout_rate: float = 0.0,
             broadcast_dropout: bool = True, deterministic: bool = False, dtype: Any = None,
             precision: Any = None) -> jax.Array:
    if extra_bias is not None:
      more = extra_bias(query)
      bias = more if bias is None else bias + more
    if impl == "plain":
      # Logits and softmax in float32 whatever the compute dtype, as in the fused paths.
      return nn.dot_product_attention(
          query, key, value, bias=bias, mask=mask, dropout_rng=dropout_rng,
          dropout_rate=dropout_rate, broadcast_dropout=broadcast_dropout,
          deterministic=deterministic, dtype=dtype, precision=precision,
          force_fp32_for_softmax=True, qk_attn_weights_einsum=_float32_logits,
          attn_weights_value_einsum=_weighted_values)
    if dropout_rate > 0 and not deterministic:
      raise ValueError(f"attention '{impl}' has no attention dropout; use attention=plain")
    if bias is not None and impl == "cudnn":  # XLA adds a float32 bias to its float32 logits
      bias = bias.astype(query.dtype)
    return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask,
                                        implementation=impl)

  return attend
