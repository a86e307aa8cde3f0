"""Prepares a folder written by make_photos.py as a tfds dataset in ArrayRecord files.

`python experiments/input_pipeline/photos_tfds.py PHOTOS_DIR DATA_DIR` writes the dataset
`photo_folder` into DATA_DIR, the JPEG files stored unchanged, so that
`python -m vit_jax.benchmark data --dataset photo_folder --data_dir DATA_DIR` measures the tfds
path on the same images as the folder path. Needs TensorFlow (tfds prepares with it).
"""

from __future__ import annotations

import os
import sys

import tensorflow_datasets as tfds


def prepare(photos: str, data_dir: str) -> None:
  classes = sorted(os.listdir(os.path.join(photos, "train")))

  class PhotoFolder(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(encoding_format="jpeg"),
          "label": tfds.features.ClassLabel(names=classes)}))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(os.path.join(photos, split))
              for split in ("train", "test")}

    def _generate_examples(self, split_dir):
      for label in classes:
        folder = os.path.join(split_dir, label)
        for name in sorted(os.listdir(folder)):
          yield f"{label}/{name}", {"image": os.path.join(folder, name), "label": label}

  PhotoFolder(data_dir=data_dir, file_format="array_record").download_and_prepare()


if __name__ == "__main__":
  prepare(sys.argv[1], sys.argv[2])
