"""What every model family does to its input images first."""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
