"""Image preprocessing shared by the input pipelines: resize, channels, augmentation, scaling.

Model inputs are float32 in [-1, 1] with shape (image_size, image_size, channels). The numpy
functions serve in-memory datasets; the `tf_*` functions serve tf.data pipelines.
"""

from __future__ import annotations

import numpy as np

AUGMENTS = ("none", "flip", "shift", "inception_crop", "inception_crop_flip")
CROP_AREA = (0.05, 1.0)  # inception crop: fraction of the image area kept
CROP_RATIO = (3 / 4, 4 / 3)  # and the range of its aspect ratio
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


def _inception_crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A random crop of 5-100% of the area, aspect 3/4-4/3, resized back to the input size."""
  from PIL import Image

  h, w = image.shape[:2]
  for _ in range(10):
    area = h * w * rng.uniform(*CROP_AREA)
    ratio = np.exp(rng.uniform(*np.log(CROP_RATIO)))
    ch, cw = round(np.sqrt(area / ratio)), round(np.sqrt(area * ratio))
    if 0 < ch <= h and 0 < cw <= w:
      top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
      break
  else:
    top, left, ch, cw = 0, 0, h, w
  squeeze = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  out = np.asarray(pil.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BILINEAR))
  return out[..., None] if squeeze else out


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
  if kind not in AUGMENTS:
    raise ValueError(f"unknown augment '{kind}'; use one of {AUGMENTS}")
  if kind.startswith("inception_crop"):
    images = np.stack([_inception_crop(image, rng) for image in images])
  if kind in ("flip", "inception_crop_flip"):
    flip = rng.random(len(images)) < 0.5
    return np.where(flip[:, None, None, None], images[:, :, ::-1], images)
  if kind == "shift":
    s = SHIFT_PIXELS
    padded = np.pad(images, ((0, 0), (s, s), (s, s), (0, 0)))
    h, w = images.shape[1:3]
    offsets = rng.integers(0, 2 * s + 1, size=(len(images), 2))
    crops = [p[dy : dy + h, dx : dx + w] for p, (dy, dx) in zip(padded, offsets, strict=True)]
    return np.stack(crops)
  return images


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

  if augment not in AUGMENTS:
    raise ValueError(f"unknown augment '{augment}'; use one of {AUGMENTS}")
  seeds = tf.random.experimental.stateless_split(seed, 3)
  if augment.startswith("inception_crop"):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.zeros([0, 0, 4], tf.float32),
        seed=seeds[0],
        area_range=CROP_AREA,
        aspect_ratio_range=CROP_RATIO,
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
