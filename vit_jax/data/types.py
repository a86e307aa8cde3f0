"""What the input pipelines hand the trainer: batches, the feed settings, `Dataset`, errors.

A leaf module: it imports no other module of vit_jax, so sources, the pipeline and the trainer
can all depend on it without depending on each other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np

Batch = dict[str, np.ndarray]
BAD_IMAGES = ("skip", "stop")  # what an unreadable image does to a run
# Training augmentations, defined in vit_jax.data.preprocess.
AUGMENTS = ("none", "flip", "shift", "inception_crop", "inception_crop_flip")


class DatasetError(ValueError):
  """A dataset cannot be found, read or prepared."""


class Examples(Protocol):
  """A split with random access: example `i` as (encoded bytes or uint8 array, label)."""

  def __len__(self) -> int: ...

  def read(self, index: int) -> tuple[bytes | np.ndarray, int]:
    """Raises OSError when the example cannot be read."""
    ...

  def name(self, index: int) -> str:
    """How a log line names example `index` (a file path, a split and index)."""
    ...


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
  eval_resize_small: int = 0  # 0: resize whole; S: shorter side to S, then the central crop
  workers: int = 0  # preparation threads; 0: one per CPU core this process may use
  bad_images: str = "skip"  # BAD_IMAGES
  prefetch: int = 2  # batches prepared ahead of the one the trainer is waiting for

  @classmethod
  def from_config(cls, config: Any, process_index: int = 0, process_count: int = 1) -> Feed:
    """The feed a run's config asks for; evaluation uses the micro-batch size."""
    return cls(batch_size=config.batch_size,
               eval_batch_size=config.batch_size // config.accum_steps,
               image_size=config.image_size, channels=config.image_channels,
               augment=config.augment, seed=config.seed, process_index=process_index,
               process_count=process_count,
               eval_resize_small=config.get("eval_resize_small", 0),
               workers=config.get("data_workers", 0),
               bad_images=config.get("bad_images", "skip"))

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
  class_names: tuple[str, ...] | None = None  # label i's name, where the source has names
