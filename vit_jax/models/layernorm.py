"""LayerNorm over the last axis with a backward pass that XLA:CPU runs in fewer kernels.

`LayerNorm` is flax's `nn.LayerNorm`: the same parameters (`scale`, `bias`), initialisers and
forward computation, operation for operation. On the CPU backend its gradient is `layer_norm`'s
custom VJP instead of the one JAX derives. Derived, the backward pass reduces products with
broadcast statistics, and XLA:CPU's YNNPACK reductions take no broadcast, so each LayerNorm of
a training step ran as seven kernels forward and seven backward with the broadcasts copied out
in full. `layer_norm` keeps the input and the row statistics; its backward pass is one
full-size elementwise product that the reductions share (`dy * xhat`), two matrix-vector
products with `scale`, the parameters' two sums and one elementwise kernel
(docs/performance.md, "What changed: LayerNorm's own backward pass on the CPU"). Other
backends, and options this form does not cover (a mask, other axes, a named axis), keep
flax's own.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


def _statistics(x: jax.Array, epsilon: float) -> tuple[jax.Array, jax.Array]:
  """The last axis' mean and 1/sqrt(variance + epsilon), in float32 or wider, kept as axes of
  size 1. flax's order of operations: E[x^2] - E[x]^2, clipped at zero."""
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean, mean2 = x.mean(-1), jax.lax.square(x).mean(-1)
  var = jnp.maximum(0.0, mean2 - jax.lax.square(mean))
  return mean[..., None], jax.lax.rsqrt(var[..., None] + epsilon)


def _normalize(x: jax.Array, scale: jax.Array, bias: jax.Array, mean: jax.Array,
               rstd: jax.Array) -> jax.Array:
  return (x - mean) * (rstd * scale) + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
  """(x - mean) / sqrt(var + epsilon) * scale + bias over the last axis, in float32 or wider."""
  return _normalize(x, scale, bias, *_statistics(x, epsilon))


def _forward(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
             ) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array, jax.Array]]:
  mean, rstd = _statistics(x, epsilon)
  return _normalize(x, scale, bias, mean, rstd), (x, scale, mean, rstd)


def _backward(epsilon: float, residuals: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
              dy: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  del epsilon
  x, scale, mean, rstd = residuals
  rows = tuple(range(x.ndim - 1))
  xhat = (x - mean) * rstd
  dy_xhat = dy * xhat  # the one full-size array the reductions share
  scale32 = scale.astype(dy.dtype)
  # With g = dy * scale: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)). Both means are
  # matrix-vector products with `scale`, so no reduction needs `scale` broadcast to full size.
  sum_g = jnp.dot(dy, scale32)[..., None]
  sum_g_xhat = jnp.dot(dy_xhat, scale32)[..., None]
  d = x.shape[-1]
  # Grouped so that the row means are subtracted before the products with rstd: in float32
  # this lands closer to float64's gradient than the derived form (measured on a tiny ViT).
  dx = (rstd * (dy * scale32 - sum_g / d)) - (rstd * xhat) * (sum_g_xhat / d)
  return (dx.astype(x.dtype), dy_xhat.sum(rows).astype(scale.dtype),
          dy.sum(rows).astype(scale.dtype))


layer_norm.defvjp(_forward, _backward)


class LayerNorm(nn.LayerNorm):
  """flax's nn.LayerNorm, whose gradient on the CPU backend is `layer_norm`'s custom VJP."""

  @nn.compact
  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    if not self._custom_backward(x, mask):
      return super().__call__(x, mask=mask)
    features = (x.shape[-1],)
    scale = self.param("scale", self.scale_init, features, self.param_dtype)
    bias = self.param("bias", self.bias_init, features, self.param_dtype)
    return layer_norm(x, scale, bias, self.epsilon).astype(
        self.dtype or jnp.result_type(x, scale, bias))

  def _custom_backward(self, x: jax.Array, mask: jax.Array | None) -> bool:
    last = (-1, x.ndim - 1)
    return (jax.default_backend() == "cpu" and mask is None and self.axis_name is None
            and self.use_bias and self.use_scale and self.use_fast_variance
            and self.force_float32_reductions and self.reduction_axes in last
            and self.feature_axes in last and jnp.issubdtype(x.dtype, jnp.floating))
