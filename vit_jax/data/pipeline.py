"""Opening a run's dataset by name: `load` dispatches to the bundled digits or tensorflow-datasets.

Either way the result is a `vit_jax.data.types.Dataset` of per-process iterators of numpy batches
{"image", "label", "mask"}; nothing here touches the run's workdir.
"""

from __future__ import annotations

from typing import Any

from vit_jax.data import bundled
from vit_jax.data.arrays import ArraySource
from vit_jax.data.types import Dataset, DatasetError, Feed, default_splits


def _load_bundled(config: Any, feed: Feed) -> Dataset:
  names = default_splits(bundled.NAME, ["train", "test"])
  names = (config.train_split or names[0], config.eval_split or names[1])
  arrays = []
  for split in names:
    try:
      arrays.append(bundled.load_split(split))
    except ValueError as e:
      raise DatasetError(str(e)) from None
  return ArraySource(arrays[0], arrays[1], feed).dataset(bundled.NUM_CLASSES, names)


def load(config: Any, feed: Feed) -> Dataset:
  """Opens `config.dataset` (bundled or tfds) without touching the run's workdir.

  Raises DatasetError with a one-line explanation when the data cannot be had.
  """
  if config.dataset == bundled.NAME:
    return _load_bundled(config, feed)
  from vit_jax.data import tfds_source  # imports TensorFlow: only for tfds datasets

  try:
    return tfds_source.load(config, feed)
  except DatasetError:
    raise
  except Exception as e:  # malformed split strings, datasets without labels, ...
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    raise DatasetError(f"cannot read dataset '{config.dataset}': {first}") from None
