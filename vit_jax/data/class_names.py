"""Readable names of ImageNet's 1,000 classes, from the lists tensorflow-datasets ships.

tfds' imagenet2012 names its classes by WordNet synset (`n01440764`, in `labels.txt`); the same
package lists the readable names in that order (`tench, Tinca tinca`, ...). A model with a
1,000-class head and no names of its own, or a run whose classes are those synsets, is shown
with the first readable name of each class.
"""

from __future__ import annotations

import functools

IMAGENET_CLASSES = 1000


@functools.cache
def _imagenet() -> tuple[tuple[str, ...], tuple[str, ...]] | None:
  """(synsets, readable names) as tfds ships them, or None when tfds lacks them."""
  try:
    from tensorflow_datasets.datasets.imagenet2012 import imagenet_common
    from tensorflow_datasets.datasets.siscore import labels
  except ImportError:
    return None
  with open(imagenet_common.label_names_file()) as f:
    synsets = tuple(line.strip() for line in f if line.strip())
  readable = tuple(name.split(",")[0].strip() for name in labels.IMAGENET_LABELS_LIST)
  if len(synsets) != IMAGENET_CLASSES or len(readable) != IMAGENET_CLASSES:
    return None
  return synsets, readable


def imagenet_names() -> list[str] | None:
  """The 1,000 readable ImageNet class names in label order, or None without tfds."""
  lists = _imagenet()
  return list(lists[1]) if lists else None


def readable(names: list[str] | None, num_classes: int) -> list[str] | None:
  """`names` with ImageNet synsets replaced by readable names; for an unnamed 1,000-class
  model, the ImageNet names; else `names` as given."""
  lists = _imagenet()
  if lists is None or num_classes != IMAGENET_CLASSES:
    return names
  synsets, words = lists
  if names is None:
    return list(words)
  if tuple(names) == synsets:
    return [f"{word} ({synset})" for word, synset in zip(words, synsets, strict=True)]
  return names
