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


def check(implementation: str, attention_dropout: float) -> str | None:
  """Why this implementation cannot be used (None when it can)."""
  if implementation not in IMPLEMENTATIONS:
    return (f"attention '{implementation}' is not one of {', '.join(IMPLEMENTATIONS)}")
  if implementation != "plain" and attention_dropout > 0:
    return (f"attention '{implementation}' has no dropout on attention weights; set "
            "attention=plain or attention_dropout=0")
  return None


def resolve(implementation: str, dtype: Any) -> str:
  """The concrete implementation `auto` stands for on this backend and compute dtype."""
  if implementation != "auto":
    return implementation
  half = jnp.dtype(dtype) in [jnp.dtype(d) for d in HALF]
  return "cudnn" if jax.default_backend() == "gpu" and half else "xla"


def attention_fn(implementation: str, dtype: Any,
                 extra_bias: Callable[[jax.Array], jax.Array] | None = None) -> Callable:
  """An `attention_fn` for nn.MultiHeadDotProductAttention.

  `extra_bias(query)` (optional) returns a (B, H, T, T) bias added to the scaled logits; the
  relative position embedding uses it.
  """
  impl = resolve(implementation, dtype)

  # Flax passes only the keyword arguments named in this signature, so they are spelled out.
  def attend(query: jax.Array, key: jax.Array, value: jax.Array, bias: Any = None,
             mask: Any = None, dropout_rng: Any = None, dropout_rate: float = 0.0,
             broadcast_dropout: bool = True, deterministic: bool = False, dtype: Any = None,
             precision: Any = None) -> jax.Array:
    if extra_bias is not None:
      more = extra_bias(query)
      bias = more if bias is None else bias + more
    if impl == "plain":
      return nn.dot_product_attention(
          query, key, value, bias=bias, mask=mask, dropout_rng=dropout_rng,
          dropout_rate=dropout_rate, broadcast_dropout=broadcast_dropout,
          deterministic=deterministic, dtype=dtype, precision=precision)
    if dropout_rate > 0 and not deterministic:
      raise ValueError(f"attention '{impl}' has no attention dropout; use attention=plain")
    if bias is not None:
      bias = bias.astype(query.dtype)
    return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask,
                                        implementation=impl)

  return attend
