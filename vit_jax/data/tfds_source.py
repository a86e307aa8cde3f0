"""tensorflow-datasets input: find or prepare a dataset by name, then read it by random access.

Training reads tfds datasets prepared as ArrayRecord (`tfds.data_source`), which allows reading
any example by its index: the input pipeline's batches are a function of (seed, step), and a
resumed run starts reading where it stopped. Preparing (downloading) a dataset needs TensorFlow;
reading an ArrayRecord dataset does not. tfds is imported here only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from vit_jax.data import vtab
from vit_jax.data.batches import IndexedSource
from vit_jax.data.presets import default_splits
from vit_jax.data.types import Dataset, DatasetError, Feed

FILE_FORMAT = "array_record"  # random access; what datasets are prepared in when downloaded


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
  return (f"prepare it with `tfds build {name} --file_format={FILE_FORMAT} --data_dir {where}` "
          "on a machine with internet "
          f"(or copy a prepared {name}/<version>/ folder there) and pass --config.data_dir; "
          "datasets that need a manual download also need --config.manual_dir")


def open_builder(config: Any, name: str | None = None):
  """Returns a prepared tfds builder for `name` (default `config.dataset`), downloading it if
  allowed."""
  import tensorflow_datasets as tfds

  name, data_dir = name or config.dataset, config.data_dir
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format=FILE_FORMAT)
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


class TfdsExamples:
  """One split of a prepared tfds dataset, read by random access (ArrayRecord files).

  Images come as their stored encoded bytes (tfds decoding is skipped) and are decoded by the
  input pipeline like any file's; `image` may fix them up first (e.g. scale 0/1 pixels). The
  label is `label(example)`, by default the `label` feature.
  """

  def __init__(self, builder: Any, split: str,
               label: Callable[[Mapping[str, Any]], int] = lambda example: int(example["label"]),
               image: Callable[[Any], Any] | None = None):
    import tensorflow_datasets as tfds

    self.label, self.image = label, image
    self.title = f"{builder.name}/{split}"
    try:
      self.source = builder.as_data_source(split=split,
                                           decoders={"image": tfds.decode.SkipDecoding()})
    except NotImplementedError:  # prepared as TFRecord: sequential files only
      raise DatasetError(
          f"dataset '{builder.name}' in {builder.data_dir} is prepared as TFRecord, which has no "
          "random access; convert it once with `tfds convert_format --dataset_version_dir "
          f"{builder.data_dir} --out_file_format {FILE_FORMAT}` "
          f"(or prepare it with `tfds build {builder.name} --file_format={FILE_FORMAT}`)"
      ) from None
    except Exception as e:  # unknown split names, malformed slices
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
      raise DatasetError(f"dataset '{builder.name}' cannot read split '{split}': {first}; "
                         f"available: {', '.join(builder.info.splits) or 'unknown'}") from None
    self.size = len(self.source)

  def __len__(self) -> int:
    return self.size

  def read(self, index: int) -> tuple[bytes | np.ndarray, int]:
    example = self.source[index]
    image = example["image"]
    image = image if isinstance(image, bytes) else np.asarray(image)
    return (self.image(image) if self.image else image), self.label(example)

  def name(self, index: int) -> str:
    return f"{self.title}[{index}]"


def _load_vtab(config: Any, feed: Feed) -> Dataset:
  try:
    task = vtab.task(config.dataset)
  except ValueError as e:
    raise DatasetError(str(e)) from None
  builder = open_builder(config, task.tfds_name)
  missing = [f for f in ("image", *task.label_features) if f not in builder.info.features]
  if missing:
    raise DatasetError(f"dataset '{builder.name}' lacks the features {', '.join(missing)} that "
                       f"{config.dataset} reads; prepare the tfds version VTAB names")
  splits = (config.train_split or task.train800, config.eval_split or task.val200)
  names = None
  if task.label_features == ("label",) and hasattr(builder.info.features["label"], "names"):
    names = tuple(builder.info.features["label"].names)
  examples = [TfdsExamples(builder, s, task.label, task.image) for s in splits]
  return IndexedSource(*examples, feed, task.num_classes, splits, names).dataset()


def load(config: Any, feed: Feed) -> Dataset:
  """Opens the tfds dataset named by `config.dataset` (or a `vtab:TASK`); raises DatasetError
  if unavailable."""
  if config.dataset.startswith(vtab.PREFIX):
    return _load_vtab(config, feed)
  builder = open_builder(config)
  features = builder.info.features
  if "image" not in features or "label" not in features:
    raise DatasetError(f"dataset '{builder.name}' has no 'image' and 'label' features "
                       f"(it has: {', '.join(features)}); only image classification is read")
  train, evaluation = default_splits(config.dataset, list(builder.info.splits))
  splits = (config.train_split or train, config.eval_split or evaluation)
  classes = int(features["label"].num_classes)
  names = tuple(features["label"].names) if hasattr(features["label"], "names") else None
  return IndexedSource(TfdsExamples(builder, splits[0]), TfdsExamples(builder, splits[1]), feed,
                       classes, splits, names).dataset()
