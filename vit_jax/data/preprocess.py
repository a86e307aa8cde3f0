"""Image preprocessing shared by the input pipelines: resize, channels, augmentation, scaling.

Model inputs are float32 in [-1, 1] with shape (image_size, image_size, channels). The numpy
functions serve in-memory datasets; the `tf_*` functions serve tf.data pipelines.
"""

from __future__ import annotations

import numpy as np

NUMPY_AUGMENTS = ("none", "flip", "shift")
TF_AUGMENTS = ("none", "flip", "shift", "inception_crop", "inception_crop_flip")
SHIFT_PIXELS = 2  # "shift" translates by up to this many pixels in each direction


def _resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
  from PIL import Image

  out = []
  for image in images:
    squeeze = image.shape[-1] == 1
    pil = Image.fromarray(image[..., 0] if squeeze else image)
    resized = np.asarray(pil.resize((size, size), Image.BILINEAR))
    out.append(resized[..., None] if squeeze else resized)
  return np.stack(out)


def _channels(images: np.ndarray, channels: int) -> np.ndarray:
  have = images.shape[-1]
  if have == channels:
    return images
  if have == 1:
    return np.repeat(images, channels, axis=-1)
  if channels == 1:
    return images.mean(axis=-1, keepdims=True, dtype=np.float32)
  raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


def numpy_augment(images: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
  """Applies augmentation `kind` to a uint8 batch (B, H, W, C) with randomness from `rng`."""
  if kind == "none":
    return images
  if kind == "flip":
    flip = rng.random(len(images)) < 0.5
    return np.where(flip[:, None, None, None], images[:, :, ::-1], images)
  if kind == "shift":
    s = SHIFT_PIXELS
    padded = np.pad(images, ((0, 0), (s, s), (s, s), (0, 0)))
    h, w = images.shape[1:3]
    offsets = rng.integers(0, 2 * s + 1, size=(len(images), 2))
    crops = [p[dy : dy + h, dx : dx + w] for p, (dy, dx) in zip(padded, offsets, strict=True)]
    return np.stack(crops)
  raise ValueError(f"augment '{kind}' is not available here; use one of {NUMPY_AUGMENTS}")


def numpy_to_model_input(images: np.ndarray, image_size: int, channels: int) -> np.ndarray:
  """uint8 (B, H, W, C) -> float32 (B, image_size, image_size, channels) in [-1, 1]."""
  if images.shape[1:3] != (image_size, image_size):
    images = _resize_uint8(images, image_size)
  x = _channels(images, channels).astype(np.float32)
  return x / 127.5 - 1.0


def tf_preprocess(image, *, image_size: int, channels: int, augment: str, seed):
  """One tf.data example: uint8 (H, W, C) -> float32 (image_size, image_size, channels) in [-1, 1].

  `seed` is a stateless seed (a shape-(2,) int tensor) so the pipeline is deterministic.
  """
  import tensorflow as tf

  if augment not in TF_AUGMENTS:
    raise ValueError(f"unknown augment '{augment}'; use one of {TF_AUGMENTS}")
  seeds = tf.random.experimental.stateless_split(seed, 3)
  if augment.startswith("inception_crop"):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.zeros([0, 0, 4], tf.float32),
        seed=seeds[0],
        area_range=(0.05, 1.0),
        min_object_covered=0.0,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, size)
  image = tf.image.resize(image, (image_size, image_size), method="bilinear")
  if augment == "shift":
    s = SHIFT_PIXELS
    padded = tf.pad(image, [[s, s], [s, s], [0, 0]])
    image = tf.image.stateless_random_crop(padded, tf.shape(image), seed=seeds[1])
  if augment in ("flip", "inception_crop_flip"):
    image = tf.image.stateless_random_flip_left_right(image, seed=seeds[2])
  have = image.shape[-1]
  if have == 1 and channels == 3:
    image = tf.image.grayscale_to_rgb(image)
  elif have == 3 and channels == 1:
    image = tf.image.rgb_to_grayscale(image)
  return tf.cast(image, tf.float32) / 127.5 - 1.0
