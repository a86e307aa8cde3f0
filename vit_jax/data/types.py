"""What the input pipelines hand the trainer: batches, the feed settings, `Dataset`, errors.

A leaf module: it imports no other module of vit_jax, so sources, the pipeline and the trainer
can all depend on it without depending on each other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

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
