"""Datasets by name -> per-process iterators of numpy batches {"image", "label", "mask"}.

Training batches are a pure function of (seed, batch index): batch b holds the global examples
b*B ... b*B+B-1 of an endless stream of per-epoch permutations, so a run restarted at step s
continues with exactly the batches it would have seen. Each process yields its own slice of every
global batch. Evaluation batches cover the split exactly once; the last one is padded and the
padding has mask 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from vit_jax.data import bundled, preprocess

Batch = dict[str, np.ndarray]


# (train, eval) splits of datasets whose default would be wrong: ImageNet-21k has one split, of
# which the first 51,200 images are held out. Others use "train" and "test" (or "validation").
DEFAULT_SPLITS = {"imagenet21k": ("full[51200:]", "full[:51200]")}


class DatasetError(ValueError):
  """A dataset cannot be found, read or prepared."""


def default_splits(name: str, available: list[str]) -> tuple[str, str]:
  """The (train, eval) splits used when the config leaves them unset."""
  if name in DEFAULT_SPLITS:
    return DEFAULT_SPLITS[name]
  if available and "test" not in available and "validation" in available:
    return "train", "validation"
  return "train", "test"


@dataclasses.dataclass(frozen=True)
class Feed:
  """How batches are cut and preprocessed, independent of where the examples come from."""

  batch_size: int  # global training batch
  eval_batch_size: int  # global evaluation batch
  image_size: int
  channels: int
  augment: str
  seed: int
  process_index: int = 0
  process_count: int = 1

  @classmethod
  def from_config(cls, config: Any, process_index: int = 0, process_count: int = 1) -> Feed:
    """The feed a run's config asks for; evaluation uses the micro-batch size."""
    return cls(batch_size=config.batch_size,
               eval_batch_size=config.batch_size // config.accum_steps,
               image_size=config.image_size, channels=config.image_channels,
               augment=config.augment, seed=config.seed, process_index=process_index,
               process_count=process_count)

  def local(self, global_size: int) -> slice:
    """The slice of a global batch that belongs to this process."""
    n = global_size // self.process_count
    return slice(self.process_index * n, (self.process_index + 1) * n)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """What the trainer sees of a dataset: sizes and batch iterators, never its name."""

  num_classes: int
  num_train: int
  num_eval: int
  train_batches: Callable[[int], Iterator[Batch]]  # first batch index -> endless iterator
  eval_batches: Callable[[], Iterator[Batch]]
  splits: tuple[str, str] = ("train", "test")  # the (train, eval) splits read
  # pool size -> padded, unaugmented batches of a fixed set of that many training examples
  pool_batches: Callable[[int], Iterator[Batch]] | None = None


class ArraySource:
  """Batches from uint8 images held in memory."""

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
    return self._padded_batches(self.test_images, self.test_labels)

  def pool_batches(self, size: int) -> Iterator[Batch]:
    """A fixed random `size` training examples (the same for every seed), unaugmented."""
    order = np.random.default_rng(0).permutation(len(self.train_labels))[:size]
    return self._padded_batches(self.train_images[order], self.train_labels[order])

  def dataset(self, num_classes: int, splits: tuple[str, str] = ("train", "test")) -> Dataset:
    return Dataset(num_classes, len(self.train_labels), len(self.test_labels),
                   self.train_batches, self.eval_batches, splits, self.pool_batches)


def load(config: Any, feed: Feed) -> Dataset:
  """Opens `config.dataset` (bundled or tfds) without touching the run's workdir.

  Raises DatasetError with a one-line explanation when the data cannot be had.
  """
  if config.dataset == bundled.NAME:
    names = default_splits(bundled.NAME, ["train", "test"])
    names = (config.train_split or names[0], config.eval_split or names[1])
    arrays = []
    for split in names:
      try:
        arrays.append(bundled.load_split(split))
      except ValueError as e:
        raise DatasetError(str(e)) from None
    return ArraySource(arrays[0], arrays[1], feed).dataset(bundled.NUM_CLASSES, names)
  from vit_jax.data import tfds_source

  try:
    return tfds_source.load(config, feed)
  except DatasetError:
    raise
  except Exception as e:  # malformed split strings, datasets without labels, ...
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    raise DatasetError(f"cannot read dataset '{config.dataset}': {first}") from None
