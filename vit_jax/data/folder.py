"""`dataset=folder:/path`: images in class folders, `/path/<split>/<class>/<file>`.

Splits are sub-folders (`train`, and `test`, `val` or `validation` for evaluation). A split may
be cut by percentages as in tensorflow-datasets, `train[:90%]` and `train[90%:]`: per class, in a
fixed pseudo-random order of its files, so the two are disjoint, cover the folder and keep its class
balance (a minival held out of the training images). Classes are the sorted names of the training
split's sub-folders; label i is the i-th of them. Files are those with an extension Pillow knows
(case-insensitive); other files and hidden entries are ignored. Every problem with the layout is
found before anything is read or written.
"""

from __future__ import annotations

import functools
import os
import re
import zlib
from typing import Any

import numpy as np

from vit_jax.data.batches import IndexedSource
from vit_jax.data.types import Dataset, DatasetError, Feed

PREFIX = "folder:"
EVAL_SPLITS = ("test", "val", "validation")  # tried in this order when eval_split is unset
_SLICE = re.compile(r"^([^\[\]]+)\[(?:(\d+(?:\.\d+)?)%)?:(?:(\d+(?:\.\d+)?)%)?\]$")


@functools.cache
def image_extensions() -> frozenset[str]:
  """Lower-case file extensions (with the dot) of every format Pillow reads."""
  from PIL import Image

  Image.init()
  return frozenset(ext.lower() for ext in Image.registered_extensions())


class FolderExamples:
  """Image files with labels, as random-access `Examples`."""

  def __init__(self, paths: list[str], labels: np.ndarray):
    self.paths, self.labels = paths, labels

  def __len__(self) -> int:
    return len(self.paths)

  def read(self, index: int) -> tuple[bytes, int]:
    with open(self.paths[index], "rb") as f:
      return f.read(), int(self.labels[index])

  def name(self, index: int) -> str:
    return self.paths[index]


def _entries(path: str) -> list[os.DirEntry]:
  with os.scandir(path) as it:
    return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _images(class_dir: str) -> list[str]:
  known = image_extensions()
  return [e.path for e in _entries(class_dir)
          if e.is_file() and os.path.splitext(e.name)[1].lower() in known]


def class_folders(split_dir: str) -> list[str]:
  """Sorted names of the class sub-folders of a split."""
  return [e.name for e in _entries(split_dir) if e.is_dir()]


def parse_split(split: str) -> tuple[str, float, float]:
  """`train` -> ("train", 0, 100); `train[:90%]` -> ("train", 0, 90); `train[90%:]` -> 90, 100.

  Raises DatasetError for other forms (only percentage slices are defined for folders).
  """
  if "[" not in split:
    return split, 0.0, 100.0
  match = _SLICE.match(split)
  low, high = (float(match[2] or 0), float(match[3] or 100)) if match else (0.0, -1.0)
  if not match or not 0 <= low < high <= 100:
    raise DatasetError(f"folder split '{split}' is not a sub-folder name or a percentage slice "
                       "of one, such as train[:90%] or train[90%:]")
  return match[1], low, high


def _slice(files: list[str], name: str, low: float, high: float) -> list[str]:
  """The files of one class in [low%, high%) of a fixed order seeded by the class name."""
  if (low, high) == (0.0, 100.0):
    return files
  order = np.random.default_rng(zlib.crc32(name.encode())).permutation(len(files))
  start, stop = (round(len(files) * p / 100) for p in (low, high))
  return [files[i] for i in sorted(order[start:stop])]


def read_split(root: str, split: str, classes: list[str] | None = None
               ) -> tuple[FolderExamples, list[str]]:
  """The images of `root/split` and its class names; labels index `classes` when given.

  Raises DatasetError for a missing split, no class folders, an empty class folder (or class
  slice), or a class that `classes` (the training split's) lacks.
  """
  folder, low, high = parse_split(split)
  split_dir = os.path.join(root, folder)
  if not os.path.isdir(split_dir):
    have = ", ".join(class_folders(root)) or "none"
    raise DatasetError(f"image folder {root} has no split '{folder}' (sub-folders: {have}); "
                       f"expected {root}/{folder}/<class>/<image files>")
  names = class_folders(split_dir)
  if not names:
    raise DatasetError(f"{split_dir} has no class folders; put each class's images in "
                       f"{split_dir}/<class name>/")
  if classes is not None:
    unknown = [c for c in names if c not in classes]
    if unknown:
      raise DatasetError(f"{split_dir} has classes the training split lacks: "
                         f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}; every "
                         "evaluation class needs a training folder of the same name")
  index = {c: i for i, c in enumerate(classes if classes is not None else names)}
  paths, labels = [], []
  for name in names:
    files = _images(os.path.join(split_dir, name))
    if not files:
      raise DatasetError(f"class folder {os.path.join(split_dir, name)} has no image files "
                         f"(extensions Pillow reads, e.g. .jpg .png); add images or remove it")
    kept = _slice(files, name, low, high)
    if not kept:
      raise DatasetError(f"split '{split}' keeps none of the {len(files)} images of class folder "
                         f"{os.path.join(split_dir, name)}; widen the slice or add images")
    files = kept
    paths += files
    labels += [index[name]] * len(files)
  return FolderExamples(paths, np.asarray(labels, np.int32)), names


def eval_split_name(root: str, configured: str | None) -> str:
  """The configured evaluation split, else the first of EVAL_SPLITS that exists."""
  if configured:
    return configured
  for name in EVAL_SPLITS:
    if os.path.isdir(os.path.join(root, name)):
      return name
  raise DatasetError(f"image folder {root} has no evaluation split: add {root}/test/<class>/ "
                     "(or val/), or name one with --config.eval_split")


def load(config: Any, feed: Feed) -> Dataset:
  """Opens `config.dataset` = "folder:PATH"; raises DatasetError naming any layout problem."""
  root = os.path.abspath(os.path.expanduser(config.dataset[len(PREFIX):]))
  if not os.path.isdir(root):
    raise DatasetError(f"image folder {root} does not exist; give folder:PATH with "
                       "PATH/train/<class>/<image files>")
  train_split = config.train_split or "train"
  train, classes = read_split(root, train_split)
  eval_split = eval_split_name(root, config.eval_split)
  evaluation, _ = read_split(root, eval_split, classes)
  return IndexedSource(train, evaluation, feed, len(classes), (train_split, eval_split),
                       tuple(classes)).dataset()
