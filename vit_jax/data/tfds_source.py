"""tensorflow-datasets input: find or prepare a dataset by name, then stream it with tf.data.

TensorFlow is imported here only, so runs on in-memory data never load it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from vit_jax.data import preprocess
from vit_jax.data.types import Batch, Dataset, DatasetError, Feed, default_splits

SHUFFLE_BUFFER = 50_000


def _hide_accelerators_from_tensorflow() -> None:
  try:
    import tensorflow as tf
  except ImportError:  # tfds can read some datasets without TensorFlow
    return
  try:
    tf.config.set_visible_devices([], "GPU")  # the accelerators belong to JAX
  except RuntimeError:  # already initialised in this process, with the same setting
    pass


def _hint(name: str, data_dir: str | None) -> str:
  where = data_dir or "~/tensorflow_datasets"
  return (f"prepare it with `tfds build {name} --data_dir {where}` on a machine with internet "
          f"(or copy a prepared {name}/<version>/ folder there) and pass --config.data_dir; "
          "datasets that need a manual download also need --config.manual_dir")


def open_builder(config: Any):
  """Returns a prepared tfds builder for `config.dataset`, downloading it if allowed."""
  import tensorflow_datasets as tfds

  name, data_dir = config.dataset, config.data_dir
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises several types for unknown or unreadable datasets
    raise DatasetError(
        f"dataset '{name}' is not available offline ({type(e).__name__}); {_hint(name, data_dir)}"
    ) from None
  if builder.is_prepared():
    _hide_accelerators_from_tensorflow()
    return builder
  needs_manual = bool(getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None))
  if not config.download or (needs_manual and not config.manual_dir):
    raise DatasetError(
        f"dataset '{name}' is not prepared in {builder.data_dir}; {_hint(name, data_dir)}")
  _hide_accelerators_from_tensorflow()
  try:
    download_config = tfds.download.DownloadConfig(manual_dir=config.manual_dir)
    builder.download_and_prepare(download_config=download_config)
  except Exception as e:  # network errors, missing manual files, missing tensorflow
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise DatasetError(f"could not prepare dataset '{name}': {first}; {_hint(name, data_dir)}"
                       ) from None
  return builder


def _num_examples(builder: Any, split: str) -> int:
  """Examples in `split`, from the dataset's metadata, or counted when the metadata lacks it."""
  if builder.info.splits:
    try:
      return int(builder.info.splits[split].num_examples)
    except Exception as e:
      raise DatasetError(f"dataset '{builder.name}' has no split '{split}' ({e}); "
                         f"available: {', '.join(builder.info.splits)}") from None
  ds = builder.as_dataset(split=split)
  count = int(ds.cardinality())
  return count if count >= 0 else sum(1 for _ in ds)


class TfdsSource:
  """Per-process tf.data pipelines over one prepared tfds builder."""

  def __init__(self, builder: Any, config: Any, feed: Feed):
    import tensorflow_datasets as tfds

    self.builder, self.feed = builder, feed
    if feed.augment not in preprocess.AUGMENTS:
      raise DatasetError(f"unknown augment '{feed.augment}'; use one of {preprocess.AUGMENTS}")
    train, evaluation = default_splits(config.dataset, list(builder.info.splits))
    self.splits = (config.train_split or train, config.eval_split or evaluation)
    self.train_split = tfds.even_splits(self.splits[0], feed.process_count)[feed.process_index]
    self.eval_splits = tfds.even_splits(self.splits[1], feed.process_count)
    self.num_train = _num_examples(builder, self.splits[0])
    self.num_eval = _num_examples(builder, self.splits[1])
    label = builder.info.features["label"]
    self.num_classes = int(label.num_classes)

  def _pipeline(self, split: str, train: bool):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    f = self.feed
    read = tfds.ReadConfig(shuffle_seed=f.seed, interleave_cycle_length=16 if train else 1)
    ds = self.builder.as_dataset(split=split, shuffle_files=train, read_config=read)
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options)
    if train:
      ds = ds.repeat().shuffle(SHUFFLE_BUFFER, seed=f.seed)
    augment = f.augment if train else "none"

    def prepare(index, example):
      seed = tf.stack([tf.constant(f.seed, tf.int64), index])
      image = preprocess.tf_preprocess(example["image"], image_size=f.image_size,
                                       channels=f.channels, augment=augment, seed=seed)
      return {"image": image, "label": tf.cast(example["label"], tf.int32)}

    return ds.enumerate().map(prepare, num_parallel_calls=tf.data.AUTOTUNE)

  def train_batches(self, start: int = 0) -> Iterator[Batch]:
    import tensorflow_datasets as tfds

    local = self.feed.local(self.feed.batch_size)
    size = local.stop - local.start
    ds = self._pipeline(self.train_split, train=True).batch(size, drop_remainder=True)
    for batch in tfds.as_numpy(ds.skip(start).prefetch(2)):
      batch["mask"] = np.ones(size, np.float32)
      yield batch

  def eval_batches(self) -> Iterator[Batch]:
    return self._padded_batches(self.eval_splits)

  def pool_batches(self, size: int) -> Iterator[Batch]:
    """The first `size` training examples (in the split's file order), unaugmented."""
    import tensorflow_datasets as tfds

    shards = tfds.even_splits(self.splits[0], self.feed.process_count)
    return self._padded_batches(shards, limit=max(1, size // self.feed.process_count))

  def _padded_batches(self, splits: list[str], limit: int | None = None) -> Iterator[Batch]:
    import tensorflow_datasets as tfds

    f = self.feed
    local = f.local(f.eval_batch_size)
    size = local.stop - local.start
    # Every process runs the same number of steps: the largest shard decides.
    most = max(_num_examples(self.builder, s) for s in splits)
    most = most if limit is None else min(most, limit)
    steps = math.ceil(most / size)
    split = splits[f.process_index]
    ds = self._pipeline(split, train=False)
    ds = ds if limit is None else ds.take(limit)
    batches = iter(tfds.as_numpy(ds.batch(size).prefetch(2)))
    shape = (size, f.image_size, f.image_size, f.channels)
    for _ in range(steps):
      batch = next(batches, None) or {"image": np.zeros((0, *shape[1:]), np.float32),
                                       "label": np.zeros((0,), np.int32)}
      n = len(batch["label"])
      pad = size - n
      yield {
          "image": np.concatenate([batch["image"], np.zeros((pad, *shape[1:]), np.float32)]),
          "label": np.concatenate([batch["label"], np.zeros((pad,), np.int32)]),
          "mask": np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)]),
      }

  def dataset(self) -> Dataset:
    return Dataset(self.num_classes, self.num_train, self.num_eval,
                   self.train_batches, self.eval_batches, self.splits, self.pool_batches)


def load(config: Any, feed: Feed) -> Dataset:
  """Opens the tfds dataset named by `config.dataset`; raises DatasetError if unavailable."""
  return TfdsSource(open_builder(config), config, feed).dataset()
