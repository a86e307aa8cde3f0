"""Writes an ImageNet-like folder of distinct JPEGs cut from scikit-image's sample photographs.

`python experiments/input_pipeline/make_photos.py DIR [--count 1000]` writes
DIR/{train,test}/<photo>/<i>.jpg: crops of 60-100% of a photo's height at a random place, rescaled
(bicubic) to 500x375 (three in four) or 375x500, saved at JPEG quality 90. Each crop differs,
so no file decodes faster for being a copy of another. Needs `pip install scikit-image` (a
benchmark-only install); it reads only the photos shipped inside the package.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket",
          "chelsea")  # the colour photographs bundled with scikit-image (no download)


def write(root: str, count: int, seed: int = 0) -> None:
  import skimage.data

  photos = {name: getattr(skimage.data, name)()[..., :3] for name in PHOTOS}
  rng = np.random.default_rng(seed)
  for i in range(count):
    name = PHOTOS[i % len(PHOTOS)]
    photo = photos[name]
    h, w = photo.shape[:2]
    size = (500, 375) if rng.random() < 0.75 else (375, 500)  # (width, height)
    crop_w = int(min(w, h * rng.uniform(0.6, 1.0) * size[0] / size[1]))
    crop_h = int(crop_w * size[1] / size[0])
    top, left = rng.integers(0, h - crop_h + 1), rng.integers(0, w - crop_w + 1)
    split = "test" if i % 10 == 9 else "train"
    folder = os.path.join(root, split, name)
    os.makedirs(folder, exist_ok=True)
    image = Image.fromarray(photo[top:top + crop_h, left:left + crop_w])
    image.resize(size, Image.BICUBIC).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("root")
  parser.add_argument("--count", type=int, default=1000)
  args = parser.parse_args()
  write(args.root, args.count)
