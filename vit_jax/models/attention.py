"""Choosing how softmax(q.k / sqrt(d) + bias) v is computed.

`plain` is Flax's own einsum-softmax-einsum (the only one with dropout on attention weights).
`xla` and `cudnn` call `jax.nn.dot_product_attention` with that implementation: on GPU, `cudnn`
is the fused flash-attention kernel (bfloat16/float16 only). `heads_first` (`SelfAttention`)
computes q, k and v with one matrix product and attends with heads as a leading batch axis, so
that every product, forward and backward, is a batched matrix product whose batch axes lead:
XLA:CPU then runs them without the layout copies the tokens-major layout costs (a ViT-Ti/16
block's attention, forward and backward: 24 ms with `xla`, 15 ms, on a 2-core CPU). `auto`
takes `cudnn` on a GPU with a half-precision compute dtype, `heads_first` on a CPU and `xla`
elsewhere. All compute the same function with the same parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "plain", "xla", "cudnn", "heads_first")
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
  backend = jax.default_backend()
  if backend == "cpu":
    return "heads_first"
  return "cudnn" if backend == "gpu" and _half(dtype) and not has_bias else "xla"


def _float32_logits(subscripts: str, query: jax.Array, key: jax.Array, **kwargs: Any) -> jax.Array:
  """q.k products accumulated and returned in float32 (bfloat16 logits lose the softmax's tail)."""
  return jnp.einsum(subscripts, query, key, preferred_element_type=jnp.float32, **kwargs)


def _weighted_values(subscripts: str, weights: jax.Array, value: jax.Array,
                     **kwargs: Any) -> jax.Array:
  """The float32 attention weights, rounded to the values' dtype, applied to the values."""
  return jnp.einsum(subscripts, weights.astype(value.dtype), value, **kwargs)


def attention_fn(implementation: str, dtype: Any,
                 extra_bias: Callable[[jax.Array], jax.Array] | None = None) -> Callable:
  """An `attention_fn` for nn.MultiHeadDotProductAttention (q, k, v of shape (B, T, H, d)).

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
    if impl == "heads_first":
      if mask is not None:
        raise ValueError("attention 'heads_first' takes no mask; use attention=xla")
      out = heads_first_attention(*(jnp.swapaxes(a, -2, -3) for a in (query, key, value)), bias)
      return jnp.swapaxes(out, -2, -3)
    if bias is not None and impl == "cudnn":  # XLA adds a float32 bias to its float32 logits
      bias = bias.astype(query.dtype)
    return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask,
                                        implementation=impl)

  return attend


def heads_first_parts(packed: jax.Array) -> jax.Array:
  """(..., T, parts, heads, d) projections -> (parts, ..., heads, T, d), in one layout copy.

  `packed` is a fused projection (q, k, v side by side) reshaped; index the result for q, k, v.
  """
  return jnp.moveaxis(packed, (-3, -2), (0, -3))


def heads_first_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          bias: jax.Array | None = None) -> jax.Array:
  """softmax(q.k / sqrt(d) + bias) v for q, k, v of shape (..., heads, tokens, d).

  Logits and softmax in float32; the unnormalised weights exp(logit - max) are rounded to the
  values' dtype for the product, and the softmax's division is applied to its result: T x d
  divisions instead of T x T, and one kernel fewer on each side of the product.
  `bias` broadcasts against (..., heads, T, T).
  """
  _, total, out = _softmax_parts(query, key, value, bias)
  return (out / total).astype(value.dtype)


def _softmax_parts(query: jax.Array, key: jax.Array, value: jax.Array,
                   bias: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(exp(logit - max), its sum over the keys, weights @ values), the latter two unnormalised."""
  # Scaling the queries, not the (T x T) logits: XLA:CPU's library fusions take a scalar
  # operand as a materialised array of the operand's shape, which is T / d times larger there.
  query = query * jnp.asarray(query.shape[-1] ** -0.5, query.dtype)
  logits = jnp.einsum("...qd,...kd->...qk", query, key, preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias
  # The maximum only keeps exp() in range; it cancels in the value, so it takes no gradient.
  weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
  out = jnp.einsum("...qk,...kd->...qd", weights.astype(value.dtype), value,
                   preferred_element_type=jnp.float32)
  return weights, weights.sum(axis=-1, keepdims=True), out


@jax.custom_vjp
def small_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
  """softmax(q.k / sqrt(d)) v for q, k, v of shape (..., heads, tokens, d), with a backward
  pass written for many small heads (TNT's inner attention: 16 tokens of 6).

  `heads_first_attention` without a bias, computed by the same code (logits and softmax in
  float32); its gradients are computed in float32. Differentiated by XLA, the two
  gradient products that contract over the token axis of the weights (dK = dL^T q, dV = P^T dO)
  are batched products XLA:CPU runs at ~2 GFLOP/s on (16 x 16) by (16 x 6) matrices; here the
  weights are transposed first, so all products take the form the forward pass runs in. On a
  2-core Intel Xeon the attention's forward and backward on TNT-S's inner shapes took 5.5
  instead of 14 ms, and the TNT-S training step 18% less time with jax 0.10.2 (14% with jax
  0.12's own products; 4% more with its oneDNN weight gradients). On ViT-sized heads (197 x
  64) it is slower, so the large attentions do not use it. Forward values are identical;
  gradients agree to rounding.
  """
  return _small_forward(query, key, value)[0]


def _small_forward(query: jax.Array, key: jax.Array, value: jax.Array
                   ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
  weights, total, out = _softmax_parts(query, key, value, None)  # heads_first_attention's
  out = out / total
  return out.astype(value.dtype), (query, key, value, weights, total, out)


def _small_backward(residuals: tuple[jax.Array, ...], grad: jax.Array
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
  query, key, value, weights, total, out = residuals
  q, k, v = (a.astype(jnp.float32) for a in (query, key, value))
  scale = q.shape[-1] ** -0.5
  grad = grad.astype(jnp.float32) / total  # d out / d (weights @ value) is 1 / total

  def transposed(x: jax.Array) -> jax.Array:
    # Materialised: XLA would otherwise fold the transpose back into the product.
    return jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))

  d_value = jnp.einsum("...kq,...qd->...kd", transposed(weights), grad)
  d_weights = jnp.einsum("...qd,...kd->...qk", grad, v)
  d_logits = weights * (d_weights - jnp.sum(grad * out, axis=-1, keepdims=True))
  d_query = jnp.einsum("...qk,...kd->...qd", d_logits, k) * scale
  d_key = jnp.einsum("...kq,...qd->...kd", transposed(d_logits), q * scale)
  return d_query.astype(query.dtype), d_key.astype(key.dtype), d_value.astype(value.dtype)


small_attention.defvjp(_small_forward, _small_backward)


class _DenseParams(nn.Module):
  """The kernel and bias of an nn.DenseGeneral (same names, shapes and initialisation).

  Declares them without applying them: `SelfAttention` fuses the products itself.
  """

  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  kernel_init: Callable
  bias_init: Callable
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array]:
    fan_in, fan_out = math.prod(self.in_shape), math.prod(self.out_shape)

    # DenseGeneral draws a kernel as the 2-D (fan_in, fan_out) matrix, and a bias flat.
    def kernel_init(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
      return self.kernel_init(key, (fan_in, fan_out), dtype).reshape(shape)

    def bias_init(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
      return self.bias_init(key, (fan_out,), dtype).reshape(shape)

    kernel = self.param("kernel", kernel_init, self.in_shape + self.out_shape, self.param_dtype)
    bias = self.param("bias", bias_init, self.out_shape, self.param_dtype)
    return kernel, bias


class SelfAttention(nn.Module):
  """Multi-head self-attention, `heads_first`, with nn.MultiHeadDotProductAttention's parameters.

  `query`, `key`, `value` (kernels (D, heads, d), biases (heads, d)) and `out` (kernel
  (heads, d, D), bias (D,)) are named, shaped and initialised as Flax's module does, so either
  module reads the other's checkpoints. `extra_bias(query)` (optional) is called with the
  tokens-major query (B, T, heads, d) and returns a (B, heads, T, T) logit bias.
  """

  num_heads: int
  kernel_init: Callable = nn.initializers.xavier_uniform()
  bias_init: Callable = nn.initializers.zeros_init()
  extra_bias: Callable[[jax.Array], jax.Array] | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, queries: int = 0) -> jax.Array:
    """x (..., T, D) -> (..., T, D); with `queries` n > 0, only the first n tokens attend (to
    all T) and (..., n, D) is returned."""
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not a multiple of num_heads {self.num_heads}")
    heads = (self.num_heads, width // self.num_heads)
    init = dict(kernel_init=self.kernel_init, bias_init=self.bias_init,
                param_dtype=self.param_dtype)
    qkv = [_DenseParams((width,), heads, name=n, **init)() for n in ("query", "key", "value")]
    out_kernel, out_bias = _DenseParams(heads, (width,), name="out", **init)()
    x, out_kernel, out_bias = (a.astype(self.dtype) for a in (x, out_kernel, out_bias))

    def project(inputs: jax.Array, params: list[tuple[jax.Array, jax.Array]]) -> jax.Array:
      # One product for all of `params`, of 2-D arrays: their gradients run faster on XLA:CPU.
      kernel = jnp.concatenate([k.reshape(width, -1) for k, _ in params], axis=1)
      bias = jnp.concatenate([b.reshape(-1) for _, b in params])
      packed = jnp.dot(inputs.reshape(-1, width), kernel.astype(self.dtype))
      packed = packed + bias.astype(self.dtype)
      return heads_first_parts(packed.reshape(*inputs.shape[:-1], len(params), *heads))

    if queries:
      (q,), (k, v) = project(x[..., :queries, :], qkv[:1]), project(x, qkv[1:])
    else:
      q, k, v = project(x, qkv)
    bias_qk = None if self.extra_bias is None else self.extra_bias(jnp.swapaxes(q, -2, -3))
    y = jnp.swapaxes(heads_first_attention(q, k, v, bias_qk), -2, -3)  # (..., T, heads, d)
    out = jnp.dot(y.reshape(-1, width), out_kernel.reshape(width, width)) + out_bias
    return out.reshape(*y.shape[:-2], width)
