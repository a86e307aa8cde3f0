"""Opening a run's dataset by name: the bundled digits, an image folder, or tensorflow-datasets.

Whatever the source, the result is a `vit_jax.data.types.Dataset` of per-process iterators of
numpy batches {"image" uint8, "label", "mask"} built by `data.batches.IndexedSource`; nothing
here touches the run's workdir.
"""

from __future__ import annotations

from typing import Any

from vit_jax.data import bundled, folder
from vit_jax.data.arrays import ArraySource
from vit_jax.data.presets import default_splits
from vit_jax.data.types import BAD_IMAGES, Dataset, DatasetError, Feed


def _load_bundled(config: Any, feed: Feed) -> Dataset:
  names = default_splits(bundled.NAME, ["train", "test"])
  names = (config.train_split or names[0], config.eval_split or names[1])
  arrays = []
  for split in names:
    try:
      arrays.append(bundled.load_split(split))
    except ValueError as e:
      raise DatasetError(str(e)) from None
  return ArraySource(arrays[0], arrays[1], feed, bundled.NUM_CLASSES, names).dataset()


def load(config: Any, feed: Feed) -> Dataset:
  """Opens `config.dataset` without touching the run's workdir.

  Raises DatasetError with a one-line explanation when the data cannot be had.
  """
  if feed.bad_images not in BAD_IMAGES:
    raise DatasetError(f"bad_images='{feed.bad_images}' is not one of {', '.join(BAD_IMAGES)}")
  if config.dataset == bundled.NAME:
    return _load_bundled(config, feed)
  if config.dataset.startswith(folder.PREFIX):
    return folder.load(config, feed)
  from vit_jax.data import tfds_source  # imports tensorflow-datasets: only for tfds datasets

  try:
    return tfds_source.load(config, feed)
  except DatasetError:
    raise
  except Exception as e:  # datasets without labels, unreadable metadata, ...
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    raise DatasetError(f"cannot read dataset '{config.dataset}': {first}") from None
