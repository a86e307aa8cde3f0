"""Examples held in memory as uint8 arrays (the bundled digits, tests' small datasets)."""

from __future__ import annotations

import numpy as np

from vit_jax.data.batches import IndexedSource
from vit_jax.data.types import Dataset, Feed


class ArrayExamples:
  """Images uint8 (N, H, W, C) and labels (N,) as random-access `Examples`."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, split: str = "arrays"):
    if len(images) != len(labels):
      raise ValueError(f"{len(images)} images but {len(labels)} labels")
    self.images, self.labels, self.split = images, labels, split

  def __len__(self) -> int:
    return len(self.labels)

  def read(self, index: int) -> tuple[np.ndarray, int]:
    return self.images[index], int(self.labels[index])

  def name(self, index: int) -> str:
    return f"{self.split}[{index}]"


class ArraySource(IndexedSource):
  """Batches from in-memory (images, labels) pairs for training and evaluation."""

  def __init__(self, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
               feed: Feed, num_classes: int = 0, splits: tuple[str, str] = ("train", "test")):
    classes = num_classes or int(max(np.max(train[1], initial=0), np.max(test[1], initial=0))) + 1
    super().__init__(ArrayExamples(*train, splits[0]), ArrayExamples(*test, splits[1]), feed,
                     classes, splits)

  def dataset(self, num_classes: int | None = None,
              splits: tuple[str, str] | None = None) -> Dataset:
    """The trainer's view; `num_classes` and `splits` override what the source was given."""
    if num_classes is not None:
      self.num_classes = num_classes
    if splits is not None:
      self.splits = splits
    return super().dataset()
