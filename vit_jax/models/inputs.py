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
