"""The ResNet stem of the hybrid ViT: weight-standardised convolutions, GroupNorm, bottlenecks.

As the original hybrid (BiT-style ResNet, post-activation units): a 7x7/2 root convolution with
GroupNorm, ReLU and a 3x3/2 max-pool, then stages of bottleneck units. Parameter names are the
original format's, at the top level of the ViT that calls `stem`: `conv_root`, `gn_root`,
`block{b}/unit{u}/{conv1,gn1,conv2,gn2,conv3,gn3}` and, on the first unit of a stage,
`conv_proj`/`gn_proj`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
WS_EPSILON = 1e-5  # added to the kernel's standard deviation
GN_GROUPS = 32


def standardize(kernel: jax.Array, epsilon: float = WS_EPSILON) -> jax.Array:
  """A conv kernel (H, W, C_in, C_out) with zero mean and unit deviation per output channel."""
  kernel = kernel - jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
  return kernel / (jnp.std(kernel, axis=(0, 1, 2), keepdims=True) + epsilon)


class StdConv(nn.Module):
  """A bias-free convolution (SAME padding) whose stored kernel is standardised on every call."""

  features: int
  kernel_size: int
  strides: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, x.shape[-1], self.features), self.param_dtype)
    kernel = standardize(kernel.astype(jnp.float32)).astype(self.dtype)
    x = x.astype(self.dtype)
    if k == 1:
      return pointwise(x, kernel[0, 0], self.strides)
    if jax.default_backend() == "cpu":
      return same_conv(x, kernel, self.strides)
    return jax.lax.conv_general_dilated(
        x, kernel, (self.strides, self.strides), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


_NHWC = ("NHWC", "HWIO", "NHWC")


def _same_padding(size: int, kernel: int, strides: int) -> tuple[int, int, int]:
  """(output size, padding before, padding after) of a SAME convolution along one axis."""
  out = -(-size // strides)
  total = max((out - 1) * strides + kernel - size, 0)
  return out, total // 2, total - total // 2


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def same_conv(x: jax.Array, kernel: jax.Array, strides: int) -> jax.Array:
  """The SAME convolution of NHWC `x` with a square HWIO kernel, whose gradients are themselves
  convolutions in the NHWC/HWIO form, their operands transposed explicitly.

  JAX's own gradients are convolutions in other forms (the weight gradient contracts over the
  batch as `f01b_i01o->01bf`). XLA:CPU rewrites those into this form with transposes in the
  step's top-level computation, but not inside a loop: there, with gradient accumulation's
  `lax.scan`, they ran in a generic kernel up to ~100x slower: an R50+ViT-B/16 step of 2
  micro-batches of 8 on a 2-core Intel Xeon took 69.3 s with jax 0.10.2 and 82.0 s with
  0.12.0.1, and 12.3 and 11.7 s with these gradients (docs/performance.md). Used on a CPU only.
  """
  return _conv(x, kernel, strides)


def _conv(x: jax.Array, kernel: jax.Array, strides: int) -> jax.Array:
  k = kernel.shape[0]
  pads = [_same_padding(n, k, strides)[1:] for n in x.shape[1:3]]
  return jax.lax.conv_general_dilated(x, kernel, (strides, strides), pads,
                                      dimension_numbers=_NHWC)


def _same_conv_fwd(x: jax.Array, kernel: jax.Array, strides: int):
  return _conv(x, kernel, strides), (x, kernel)


def _same_conv_bwd(strides: int, residuals: tuple[jax.Array, jax.Array], g: jax.Array):
  x, kernel = residuals
  k = kernel.shape[0]
  axes = [_same_padding(n, k, strides) for n in x.shape[1:3]]
  # Weight gradient: the input's channels as the batch, the batch as the features, the output
  # gradient (dilated by the stride) as the kernel.
  weight_pads = [(lo, k + strides * (out - 1) - n - lo)
                 for (out, lo, _), n in zip(axes, x.shape[1:3], strict=True)]
  dkernel = jax.lax.conv_general_dilated(
      x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), (1, 1), weight_pads,
      rhs_dilation=(strides, strides), dimension_numbers=_NHWC).transpose(1, 2, 0, 3)
  # Input gradient: the output gradient dilated by the stride, with the flipped kernel.
  input_pads = [(k - 1 - lo, n - 1 - strides * (out - 1) + lo)
                for (out, lo, _), n in zip(axes, x.shape[1:3], strict=True)]
  dx = jax.lax.conv_general_dilated(
      g, kernel[::-1, ::-1].transpose(0, 1, 3, 2), (1, 1), input_pads,
      lhs_dilation=(strides, strides), dimension_numbers=_NHWC)
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


same_conv.defvjp(_same_conv_fwd, _same_conv_bwd)


def pointwise(x: jax.Array, kernel: jax.Array, strides: int = 1) -> jax.Array:
  """A 1x1 convolution (SAME padding) of NHWC `x` with a (C_in, C_out) kernel, as one 2-D product.

  The same function as the convolution, but XLA:CPU computes its weight gradient as a product
  over the pixels of `x` as laid out, where the convolution's gradient first copied `x` (and
  the normalisations fused into it) into a channels-major layout: the R50+ViT-B/16 training
  step ran 19% faster on a 2-core Intel Xeon (docs/performance.md).
  """
  if strides > 1:  # a 1x1 window with SAME padding reads every `strides`-th pixel, no padding
    x = x[:, ::strides, ::strides, :]
  batch, height, width, channels = x.shape
  y = x.reshape(batch * height * width, channels) @ kernel
  return y.reshape(batch, height, width, kernel.shape[-1])


class GroupNorm(nn.Module):
  """GroupNorm of NHWC inputs, the function and parameters (`scale`, `bias`) of `nn.GroupNorm`.

  The statistics are summed over the pixels first, per channel, and then over each group's
  channels; the normalisation is then one multiply-add per element with a per-channel factor
  and shift. `nn.GroupNorm` reduces a (N, H, W, groups, C / groups) view in one pass, which
  XLA:CPU runs several times slower at the stem's sizes: the R50+ViT-B/16 training step is 3%
  faster this way on a 2-core CPU, and the sums are closer to a float64 reference
  (docs/performance.md). Statistics are float32 whatever the input's dtype.
  """

  num_groups: int = GN_GROUPS
  epsilon: float = 1e-6
  scale_init: Any = nn.initializers.ones
  dtype: Dtype | None = None  # of the output; None: the input's promoted with the parameters'
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    if channels % self.num_groups:
      raise ValueError(f"GroupNorm: {channels} channels do not split into {self.num_groups} "
                       "groups; use a width that is a multiple of the group count")
    per_group = channels // self.num_groups
    scale = self.param("scale", self.scale_init, (channels,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (channels,), self.param_dtype)
    x32 = x.astype(jnp.float32)

    def group_mean(values: jax.Array) -> jax.Array:  # (N, H, W, C) -> (N, groups)
      per_channel = jnp.sum(values, axis=(1, 2)).reshape(batch, self.num_groups, per_group)
      return jnp.sum(per_channel, axis=-1) / (height * width * per_group)

    mean = group_mean(x32)
    var = jnp.maximum(0.0, group_mean(jnp.square(x32)) - jnp.square(mean))
    factor = jnp.repeat(jax.lax.rsqrt(var + self.epsilon), per_group, axis=1) * scale
    shift = bias - jnp.repeat(mean, per_group, axis=1) * factor  # (N, C)
    y = x32 * factor[:, None, None, :] + shift[:, None, None, :]
    return y.astype(self.dtype or jnp.result_type(x.dtype, self.param_dtype))


def _norm(name: str, dt: dict, zero_scale: bool = False) -> GroupNorm:
  scale_init = nn.initializers.zeros if zero_scale else nn.initializers.ones
  return GroupNorm(scale_init=scale_init, name=name, **dt)


class Bottleneck(nn.Module):
  """Post-activation bottleneck: relu(shortcut + GN(1x1(relu(GN(3x3(relu(GN(1x1(x))))))))).

  The 3x3 convolution carries the unit's stride; the shortcut is a projection (1x1 conv with the
  stride, then GroupNorm) where the shape changes. The last GroupNorm's scale starts at zero, so
  a fresh unit is the identity on its shortcut.
  """

  width: int  # of the 1x1 and 3x3 convolutions; the unit outputs 4 * width channels
  strides: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    out = 4 * self.width
    shortcut = x
    if x.shape[-1] != out or self.strides != 1:
      shortcut = StdConv(out, 1, self.strides, name="conv_proj", **dt)(x)
      shortcut = _norm("gn_proj", dt)(shortcut)
    y = nn.relu(_norm("gn1", dt)(StdConv(self.width, 1, name="conv1", **dt)(x)))
    y = nn.relu(_norm("gn2", dt)(StdConv(self.width, 3, self.strides, name="conv2", **dt)(y)))
    y = _norm("gn3", dt, zero_scale=True)(StdConv(out, 1, name="conv3", **dt)(y))
    return nn.relu(shortcut + y)


class Stage(nn.Module):
  """`units` bottlenecks named `unit1`...; the first one carries the stage's stride."""

  units: int
  width: int
  strides: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for u in range(self.units):
      x = Bottleneck(self.width, self.strides if u == 0 else 1, name=f"unit{u + 1}",
                     dtype=self.dtype, param_dtype=self.param_dtype)(x)
    return x


def stem(x: jax.Array, layers: Sequence[int], width: int, dtype: Dtype = jnp.float32,
         param_dtype: Dtype = jnp.float32) -> jax.Array:
  """The root and the stages, built inside the calling module's compact method.

  Stage b (1-based) has `layers[b-1]` units of width `width * 2**(b-1)`; every stage after the
  first halves the resolution.
  """
  dt = dict(dtype=dtype, param_dtype=param_dtype)
  x = StdConv(width, 7, 2, name="conv_root", **dt)(x)
  x = nn.relu(_norm("gn_root", dt)(x))
  x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
  for b, units in enumerate(layers):
    x = Stage(units, width * 2**b, 1 if b == 0 else 2, name=f"block{b + 1}", **dt)(x)
  return x


def stride(layers: Sequence[int]) -> int:
  """Input pixels per output pixel along each axis: 4 from the root, 2 from every later stage."""
  return 4 * 2 ** max(len(layers) - 1, 0)


def out_channels(layers: Sequence[int], width: int) -> int:
  """Channels of the stem's output."""
  return width if not layers else 4 * width * 2 ** (len(layers) - 1)


def forward_flops(layers: Sequence[int], width: int, image_size: tuple[int, int],
                  channels: int) -> int:
  """Convolution FLOPs (2 per multiply-add) of the stem for one image; sizes must tile."""
  h, w = image_size[0] // 2, image_size[1] // 2
  total = 2 * h * w * 7 * 7 * channels * width
  h, w, c = h // 2, w // 2, width
  for b, units in enumerate(layers):
    mid = width * 2**b
    for u in range(units):
      s = 2 if b > 0 and u == 0 else 1
      oh, ow = h // s, w // s
      total += 2 * h * w * c * mid  # conv1 at the input resolution
      total += 2 * oh * ow * 9 * mid * mid  # conv2 carries the stride
      total += 2 * oh * ow * mid * 4 * mid  # conv3
      if c != 4 * mid or s != 1:
        total += 2 * oh * ow * c * 4 * mid  # conv_proj
      h, w, c = oh, ow, 4 * mid
  return total
