import io

import numpy as np
import pytest
from PIL import Image

from vit_jax.data import bundled, preprocess


def encode(image, fmt="PNG", **kw):
  buf = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, fmt, **kw)
  return buf.getvalue()


def photo(h=60, w=90):
  """A smooth colour image with structure in both directions."""
  y, x = np.mgrid[0:h, 0:w]
  return np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (h + w)], -1).astype(np.uint8)


def test_inception_crop_areas_and_ratios_stay_in_range():
  rng = np.random.default_rng(0)
  h, w = 300, 400
  boxes = np.array([preprocess.inception_crop_box(h, w, rng) for _ in range(4000)])
  top, left, ch, cw = boxes.T
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + ch <= h).all() and (left + cw <= w).all()
  area = ch * cw / (h * w)
  ratio = cw / ch
  # Rounding to whole pixels moves area and ratio by a little at small crops.
  assert area.min() >= 0.05 * 0.95 and area.max() <= 1.0
  assert ratio.min() >= 0.75 * 0.97 and ratio.max() <= 4 / 3 * 1.03
  # Area is drawn uniformly before the fit test: the accepted draws spread over the range.
  assert np.quantile(area, 0.1) < 0.2 and np.quantile(area, 0.9) > 0.6
  assert np.mean(ratio < 1) > 0.25 and np.mean(ratio > 1) > 0.25


def test_inception_crop_falls_back_to_the_whole_of_a_very_thin_image():
  rng = np.random.default_rng(0)
  assert preprocess.inception_crop_box(1, 500, rng) == (0, 0, 1, 500)


@pytest.mark.parametrize("shape", [(7, 9), (32, 32), (375, 500), (500, 375), (1, 40)])
@pytest.mark.parametrize("augment", preprocess.AUGMENTS)
def test_training_output_has_the_model_shape_for_any_input(shape, augment):
  image = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
  for channels in (1, 3):
    out = preprocess.train_image(encode(image, "JPEG"), 24, channels, augment,
                                 np.random.default_rng(2))
    assert out.shape == (24, 24, channels) and out.dtype == np.uint8


@pytest.mark.parametrize("augment", preprocess.AUGMENTS)
def test_encoded_and_in_memory_examples_get_the_same_augmentation(augment):
  """One definition: a losslessly encoded image and its array give identical outputs."""
  image = photo()
  digits, _ = bundled.load_split("test")
  for raw, array in ((encode(image), image), (encode(digits[7]), digits[7])):
    for channels in (1, 3):
      a = preprocess.train_image(raw, 32, channels, augment, np.random.default_rng(5))
      b = preprocess.train_image(array, 32, channels, augment, np.random.default_rng(5))
      np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(preprocess.eval_image(raw, 16, 3, 20),
                                  preprocess.eval_image(array, 16, 3, 20))


def test_flip_flips_and_half_of_the_draws_flip():
  image = photo(32, 32)
  flipped = 0
  for seed in range(200):
    out = preprocess.train_image(image, 32, 3, "flip", np.random.default_rng(seed))
    if np.array_equal(out, image[:, ::-1]):
      flipped += 1
    else:
      np.testing.assert_array_equal(out, image)
  assert 70 < flipped < 130


def test_shift_moves_the_image_at_the_model_resolution():
  image = photo(32, 32)
  out = preprocess.train_image(image, 32, 3, "shift", np.random.default_rng(0))
  shifted = [np.array_equal(out[2:-2, 2:-2], np.pad(image, ((2, 2), (2, 2), (0, 0)))[
      dy:dy + 32, dx:dx + 32][2:-2, 2:-2]) for dy in range(5) for dx in range(5)]
  assert sum(shifted) == 1


def test_grey_conversion_uses_the_luma_weights_for_arrays_and_files():
  image = np.zeros((4, 4, 3), np.uint8)
  image[..., 0] = 200  # red: luma 0.299 * 200 = 59.8
  for raw in (image, encode(image)):
    out = preprocess.eval_image(raw, 4, 1)
    assert out.shape == (4, 4, 1) and np.all(out == 60)


def test_eval_resize_small_keeps_the_central_crop():
  image = np.zeros((40, 80, 3), np.uint8)
  image[:, 30:50] = 255  # a white band in the middle
  out = preprocess.eval_image(image, 20, 3, resize_small=20)
  # 40x80 -> 20x40, the central 20x20 is columns 10..30 of it: the band covers 15..25.
  assert out.shape == (20, 20, 3)
  assert out[:, 6:14].min() == 255 and out[:, :4].max() == 0 and out[:, -4:].max() == 0


def test_jpeg_crops_are_decoded_at_reduced_size_only_when_they_keep_the_resolution():
  image = np.random.default_rng(0).integers(0, 256, (400, 600, 3), dtype=np.uint8)
  raw = encode(image, "JPEG", quality=90)
  h, w, _ = preprocess.decode(raw, 3, (101, 150)).shape  # 3/8 (1/4 would be 100 high)
  assert (h, w) == (150, 225)
  assert preprocess.decode(raw, 3, (100, 150)).shape == (100, 150, 3)  # 1/4
  assert preprocess.decode(raw, 3, (50, 75)).shape == (50, 75, 3)  # 1/8
  assert preprocess.decode(raw, 3, (300, 10)).shape == (400, 600, 3)  # 1/2 would be too small
  assert preprocess.decode(raw, 3).shape == (400, 600, 3)


def test_cmyk_jpegs_are_read():
  image = Image.fromarray(photo()).convert("CMYK")
  buf = io.BytesIO()
  image.save(buf, "JPEG")
  assert preprocess.decode(buf.getvalue(), 3).shape == (60, 90, 3)


@pytest.mark.parametrize("raw", [b"", b"not an image", encode(photo(), "JPEG")[:300],
                                 encode(photo())[:100]])
def test_unreadable_bytes_raise_unreadable_image(raw):
  with pytest.raises(preprocess.UnreadableImage):
    preprocess.train_image(raw, 16, 3, "inception_crop", np.random.default_rng(0))


def test_model_range():
  out = preprocess.to_model_range(np.array([0, 255], np.uint8))
  np.testing.assert_array_equal(out, [-1.0, 1.0])
  assert out.dtype == np.float32
