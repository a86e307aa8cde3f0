"""Batches from uint8 images held in memory (the bundled digits, and tests' small arrays).

Training batches are a pure function of (seed, batch index): batch b holds the global examples
b*B ... b*B+B-1 of an endless stream of per-epoch permutations, so a run restarted at step s
continues with exactly the batches it would have seen. Each process yields its own slice of every
global batch. Evaluation batches cover the split exactly once; the last one is padded and the
padding has mask 0.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from vit_jax.data import preprocess
from vit_jax.data.types import Batch, Dataset, DatasetError, Feed


class ArraySource:
  """Batches from uint8 images (N, H, W, C) and int labels (N,) held in memory."""

  def __init__(self, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
               feed: Feed):
    if feed.augment not in preprocess.AUGMENTS:
      raise DatasetError(f"unknown augment '{feed.augment}'; use one of {preprocess.AUGMENTS}")
    self.train_images, self.train_labels = train
    self.test_images, self.test_labels = test
    self.feed = feed
    self._perms: dict[int, np.ndarray] = {}

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      rng = np.random.default_rng([self.feed.seed, epoch])
      # A batch spans at most two epochs, so keeping the newest two avoids recomputation.
      self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}
      self._perms[epoch] = rng.permutation(len(self.train_labels))
    return self._perms[epoch]

  def train_indices(self, batch_index: int) -> np.ndarray:
    """Global example indices of training batch `batch_index`."""
    n, b = len(self.train_labels), self.feed.batch_size
    stream = batch_index * b + np.arange(b)
    epochs, positions = np.divmod(stream, n)
    indices = np.empty(b, np.int64)
    for epoch in np.unique(epochs):
      here = epochs == epoch
      indices[here] = self._permutation(int(epoch))[positions[here]]
    return indices

  def train_batches(self, start: int = 0) -> Iterator[Batch]:
    """This process's slices of training batches `start`, `start` + 1, ... (endless)."""
    f = self.feed
    local = f.local(f.batch_size)
    batch_index = start
    while True:
      idx = self.train_indices(batch_index)
      rng = np.random.default_rng([f.seed, batch_index, 1])
      images = preprocess.numpy_augment(self.train_images[idx], f.augment, rng)[local]
      yield {
          "image": preprocess.numpy_to_model_input(images, f.image_size, f.channels),
          "label": self.train_labels[idx][local],
          "mask": np.ones(len(idx), np.float32)[local],
      }
      batch_index += 1

  def _padded_batches(self, images: np.ndarray, labels: np.ndarray) -> Iterator[Batch]:
    f = self.feed
    n, b = len(labels), f.eval_batch_size
    local = f.local(b)
    for start in range(0, n, b):
      idx = np.arange(start, start + b)
      mask = (idx < n).astype(np.float32)
      idx = np.minimum(idx, n - 1)
      yield {
          "image": preprocess.numpy_to_model_input(images[idx[local]], f.image_size, f.channels),
          "label": labels[idx[local]],
          "mask": mask[local],
      }

  def eval_batches(self) -> Iterator[Batch]:
    """The test split once, in order; the last batch padded with mask 0."""
    return self._padded_batches(self.test_images, self.test_labels)

  def pool_batches(self, size: int) -> Iterator[Batch]:
    """A fixed random `size` training examples (the same for every seed), unaugmented."""
    order = np.random.default_rng(0).permutation(len(self.train_labels))[:size]
    return self._padded_batches(self.train_images[order], self.train_labels[order])

  def dataset(self, num_classes: int, splits: tuple[str, str] = ("train", "test")) -> Dataset:
    """The trainer's view of these arrays."""
    return Dataset(num_classes, len(self.train_labels), len(self.test_labels),
                   self.train_batches, self.eval_batches, splits, self.pool_batches)
