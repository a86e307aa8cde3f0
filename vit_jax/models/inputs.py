"""What every model family does to its input images first."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import resnet


def to_unit_range(images: jax.Array) -> jax.Array:
  """uint8 pixels -> float32 in [-1, 1]; float images are taken to be there already.

  The input pipelines hand the device uint8 batches (a quarter of float32's transfer), and the
  conversion fuses into the patch embedding.
  """
  if jnp.issubdtype(images.dtype, jnp.integer):
    return images.astype(jnp.float32) / 127.5 - 1.0
  return images


def check_grid(height: int, width: int, patch_size: int,
               what: str = "the patch size") -> tuple[int, int]:
  """Returns the patch grid (gh, gw), or raises a clear error when the image does not tile.

  `patch_size` is the pixels per token along each axis (`what` names it in the error).
  """
  if height % patch_size or width % patch_size:
    raise ValueError(
        f"image size {height}x{width} is not divisible by {what} {patch_size}; "
        f"use an image size that is a multiple of {patch_size} (e.g. "
        f"{max(1, round(height / patch_size)) * patch_size}x"
        f"{max(1, round(width / patch_size)) * patch_size})"
    )
  return height // patch_size, width // patch_size


class PatchEmbedding(nn.Module):
  """Non-overlapping p x p patches of NHWC `x` -> `features` channels: a strided convolution.

  Its parameters are a convolution's (`kernel` (p, p, C, features), lecun-normal; `bias`,
  zeros), and for p > 1 so is its computation, except in training on a CPU (`train`), where it
  is `patch_product`, one 2-D product of the flattened patches: inside a loop (gradient
  accumulation's `lax.scan`) XLA:CPU lays the convolution's weight gradient out in a form its
  fast convolution library does not take, and computed it ~25x slower (a ViT-Ti/16 training
  step at batch 32 in 4 micro-batches on a 2-core Intel Xeon: 1763 ms with the convolution,
  1204 ms with the product, and with jax 0.12.0.1 8341 and 1197 ms; without accumulation both
  took the same time, and forward passes alone 1-3% longer with the product). For p = 1 (the
  hybrid, whose ResNet already strides) it is `resnet.pointwise`, one 2-D product over the
  pixels, for the reason given there.
  """

  features: int
  patch_size: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    p = self.patch_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (p, p, x.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
    if p == 1:
      return resnet.pointwise(x, kernel[0, 0]) + bias
    if train and jax.default_backend() == "cpu":
      return patch_product(x, kernel) + bias
    y = jax.lax.conv_general_dilated(x, kernel, (p, p), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias


def patch_product(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The VALID convolution of NHWC `x` with a (p, p, C, D) kernel of stride p, as one 2-D product
  of the flattened patches (rows and columns past the last whole patch are dropped)."""
  p, _, c, d = kernel.shape
  b, gh, gw = x.shape[0], x.shape[1] // p, x.shape[2] // p
  patches = x[:, :gh * p, :gw * p].reshape(b, gh, p, gw, p, c).swapaxes(2, 3)
  y = jnp.dot(patches.reshape(b * gh * gw, p * p * c), kernel.reshape(p * p * c, d))
  return y.reshape(b, gh, gw, d)


def conv_taps(x: jax.Array, size: int, stride: int, pad: int,
              channels_last: bool = True) -> jax.Array:
  """The size x size windows of NHWC `x` at `stride`, `pad` zeros on every side: (B, H', W', F).

  The F = size * size * C features of a window are in an HWIO kernel's order (row, column,
  channel) with `channels_last`, else in PyTorch's nn.Unfold order (channel, row, column).
  """
  b, h, w, c = x.shape
  out_h, out_w = (h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1
  x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  # Rows, then columns: 2 * size strided slices (size^2 slices compile several times slower).
  rows = jnp.stack([jax.lax.slice_in_dim(x, i, i + stride * (out_h - 1) + 1, stride, axis=1)
                    for i in range(size)], axis=3 if channels_last else 4)
  taps = jnp.stack([jax.lax.slice_in_dim(rows, j, j + stride * (out_w - 1) + 1, stride, axis=2)
                    for j in range(size)], axis=4 if channels_last else 5)
  return taps.reshape(b, out_h, out_w, size * size * c)


def conv_product(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
  """The convolution of NHWC `x` with a square (k, k, C, D) kernel at `stride`, `pad` zeros on
  every side, as one 2-D product of its gathered windows (`conv_taps`)."""
  size, _, c, d = kernel.shape
  taps = conv_taps(x, size, stride, pad)
  y = jnp.dot(taps.reshape(-1, size * size * c), kernel.reshape(size * size * c, d))
  return y.reshape(taps.shape[:3] + (d,))


class WindowConv(nn.Module):
  """A square convolution with nn.Conv's parameters (`kernel` (k, k, C, features), `bias`) and
  initial values for the same initialisers, which in training on a CPU is `conv_product`.

  As for `PatchEmbedding`: inside gradient accumulation's loop XLA:CPU took the convolution's
  weight gradient in a slow form (TNT-S's pixel convolution on a 2-core Intel Xeon: a step of 2
  micro-batches of 8 took 4045 ms with the convolution and 2977 with the product with jax
  0.12.0.1, 3166 and 2942 with 0.10.2); without the loop both took the same time within 2%.
  """

  features: int
  size: int
  stride: int
  pad: int
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    k = self.size
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
    if train and jax.default_backend() == "cpu":
      return conv_product(x, kernel, self.stride, self.pad) + bias
    pad = (self.pad, self.pad)
    y = jax.lax.conv_general_dilated(x, kernel, (self.stride,) * 2, (pad, pad),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias
