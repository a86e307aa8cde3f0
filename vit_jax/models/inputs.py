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
