"""The one definition of image preprocessing, for every source: decode, crop, resize, augment.

An example arrives as encoded file bytes (image folders, tfds) or as a uint8 array (in-memory
data) and leaves as uint8 (image_size, image_size, channels); the model maps uint8 pixels to
[-1, 1] itself (on the device, where the conversion is free). Every augmentation is applied the
same way whatever the source, in this order: Inception crop (on the decoded image), resize to the
model's resolution (bilinear with half-pixel centres and no antialiasing, like TensorFlow's
`tf.image.resize`), shift (at the model's resolution), horizontal flip.

JPEGs are decoded by libjpeg-turbo (`simplejpeg`), at a reduced size (1/2, 1/4, 1/8) whenever
the crop still has the model's resolution there; other formats, and JPEGs it refuses (CMYK), by
Pillow. Resizing is OpenCV's. Grey conversion uses the ITU-R 601 luma weights everywhere.
"""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
import simplejpeg

from vit_jax.data.types import AUGMENTS

CROP_AREA = (0.05, 1.0)  # Inception crop: fraction of the image area kept
CROP_RATIO = (3 / 4, 4 / 3)  # and the range of its aspect ratio (width / height)
CROP_ATTEMPTS = 10  # draws before falling back to the whole image
SHIFT_PIXELS = 2  # "shift" translates by up to this many pixels in each direction
_JPEG_MAGIC = b"\xff\xd8\xff"

cv2.setNumThreads(1)  # parallelism comes from the input pipeline's worker threads


class UnreadableImage(Exception):
  """An example's bytes are not an image this pipeline can decode."""


Raw = bytes | np.ndarray


def _is_jpeg(raw: Raw) -> bool:
  return isinstance(raw, bytes) and raw[:3] == _JPEG_MAGIC


def _open_pillow(raw: bytes):
  from PIL import Image, UnidentifiedImageError

  try:
    return Image.open(io.BytesIO(raw))
  except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError,
          SyntaxError) as e:
    raise UnreadableImage(f"not an image ({e})") from None


def image_shape(raw: Raw) -> tuple[int, int]:
  """(height, width) of an example, reading only its header when it is encoded."""
  if isinstance(raw, np.ndarray):
    return raw.shape[0], raw.shape[1]
  if _is_jpeg(raw):
    try:
      return tuple(simplejpeg.decode_jpeg_header(raw)[:2])
    except ValueError:
      pass  # Pillow may still read it
  width, height = _open_pillow(raw).size
  return height, width


def _channels(image: np.ndarray, channels: int) -> np.ndarray:
  """uint8 (H, W) or (H, W, C) -> (H, W, channels)."""
  if image.ndim == 2:
    image = image[..., None]
  have = image.shape[-1]
  if have == 4:  # RGBA: the colour, without transparency
    image, have = image[..., :3], 3
  if have == channels:
    return image
  if have == 1:
    return np.repeat(image, channels, axis=-1)
  if channels == 1 and have == 3:
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)[..., None]
  raise UnreadableImage(f"cannot convert a {have}-channel image to {channels} channels")


def decode(raw: Raw, channels: int, min_shape: tuple[int, int] = (0, 0),
           shape: tuple[int, int] | None = None) -> np.ndarray:
  """uint8 (H', W', channels); a JPEG may come out smaller, but never below `min_shape`.

  `shape` is the image's (height, width) where the caller has read it already.
  Raises UnreadableImage for bytes that no decoder reads (corrupt, truncated, not an image).
  """
  if isinstance(raw, np.ndarray):
    return _channels(raw, channels)
  if _is_jpeg(raw):
    reduce = {}
    if min_shape != (0, 0):
      height, width = shape or image_shape(raw)
      if min(height / max(min_shape[0], 1), width / max(min_shape[1], 1)) >= 2:
        reduce = {"min_height": min_shape[0], "min_width": min_shape[1], "min_factor": 2}
    try:
      return _channels(simplejpeg.decode_jpeg(raw, "GRAY" if channels == 1 else "RGB",
                                              fastdct=True, fastupsample=True, **reduce),
                       channels)
    except ValueError:
      pass  # CMYK or unusual JPEGs: Pillow reads more of them; truly broken ones fail there too
  image = _open_pillow(raw)
  try:
    image = image.convert("L" if channels == 1 else "RGB")
    return _channels(np.asarray(image), channels)
  except (OSError, ValueError, SyntaxError) as e:
    raise UnreadableImage(f"cannot decode ({e})") from None


def inception_crop_box(height: int, width: int,
                       rng: np.random.Generator) -> tuple[int, int, int, int]:
  """(top, left, crop height, crop width): 5-100% of the area, aspect 3/4-4/3 (log-uniform).

  Falls back to the whole image when no draw fits, as TensorFlow's sampler does.
  """
  log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
  for _ in range(CROP_ATTEMPTS):
    area = height * width * rng.uniform(*CROP_AREA)
    ratio = math.exp(rng.uniform(*log_ratio))
    crop_h, crop_w = round(math.sqrt(area / ratio)), round(math.sqrt(area * ratio))
    if 0 < crop_h <= height and 0 < crop_w <= width:
      top = int(rng.integers(0, height - crop_h + 1))
      left = int(rng.integers(0, width - crop_w + 1))
      return top, left, crop_h, crop_w
  return 0, 0, height, width


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear resize of uint8 (H, W, C), half-pixel centres, no antialiasing."""
  if image.shape[:2] == (height, width):
    return image
  out = cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_LINEAR)
  return out.reshape(height, width, image.shape[-1])


def train_image(raw: Raw, size: int, channels: int, augment: str,
                rng: np.random.Generator) -> np.ndarray:
  """A training example: uint8 (size, size, channels), augmented with randomness from `rng`."""
  if augment not in AUGMENTS:
    raise ValueError(f"unknown augment '{augment}'; use one of {AUGMENTS}")
  if augment.startswith("inception_crop"):
    height, width = image_shape(raw)
    top, left, crop_h, crop_w = inception_crop_box(height, width, rng)
    # The decoder may shrink the image as long as the crop keeps at least `size` pixels.
    min_shape = (math.ceil(height * size / crop_h), math.ceil(width * size / crop_w))
    image = decode(raw, channels, min_shape, (height, width))
    fy, fx = image.shape[0] / height, image.shape[1] / width
    y0, x0 = round(top * fy), round(left * fx)
    y1 = max(y0 + 1, round((top + crop_h) * fy))
    x1 = max(x0 + 1, round((left + crop_w) * fx))
    image = resize(image[y0:y1, x0:x1], size, size)
  else:
    image = resize(decode(raw, channels), size, size)
  if augment == "shift":
    s = SHIFT_PIXELS
    dy, dx = rng.integers(0, 2 * s + 1, size=2)
    padded = np.pad(image, ((s, s), (s, s), (0, 0)))
    image = padded[dy:dy + size, dx:dx + size]
  if augment in ("flip", "inception_crop_flip") and rng.random() < 0.5:
    image = image[:, ::-1]
  return image


def eval_image(raw: Raw, size: int, channels: int, resize_small: int = 0) -> np.ndarray:
  """An evaluation example: resized to (size, size), or with `resize_small` = S, its shorter
  side resized to S and the central (size, size) crop kept."""
  if not resize_small:
    return resize(decode(raw, channels), size, size)
  height, width = image_shape(raw)
  scale = resize_small / min(height, width)
  new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
  image = resize(decode(raw, channels, (new_h, new_w), (height, width)), new_h, new_w)
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return image[top:top + size, left:left + size]


def to_model_range(images: np.ndarray) -> np.ndarray:
  """uint8 pixels -> float32 in [-1, 1], as the model computes them (for tools and tests)."""
  return images.astype(np.float32) / 127.5 - 1.0
