"""Writes an ImageNet-like folder of distinct JPEGs cut from scikit-image's sample photographs.

`python experiments/input_pipeline/make_photos.py DIR [--count 1000]` writes
DIR/{train,test}/<photo>/<i>.jpg, a tenth of each photo's crops in test: crops of 60-100% of a
photo's height at a random place, rescaled (bicubic) to 500x375 (three in four) or 375x500,
saved at JPEG quality 90. Each crop differs, so no file decodes faster for being a copy of
another. Needs `pip install scikit-image` (a benchmark-only install); it reads only the photos
shipped inside the package.

`--grey` makes a harder, one-channel classification task: the colour photographs in grey plus
scikit-image's grey photographs and textures (brick, grass, gravel, ...), 15 classes. With
`--crop 0.15 0.4` a crop shows a small piece of its photo, so the class is told by texture.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket",
          "chelsea")  # the colour photographs bundled with scikit-image (no download)
GREY_PHOTOS = ("brick", "camera", "cell", "clock", "coins", "grass", "gravel", "moon")


def load(grey: bool) -> dict[str, np.ndarray]:
  """The photographs by name: (H, W, 3) uint8 in colour, (H, W) uint8 with `grey`."""
  import skimage.color
  import skimage.data

  if not grey:
    return {name: getattr(skimage.data, name)()[..., :3] for name in PHOTOS}
  photos = {}
  for name in sorted(PHOTOS + GREY_PHOTOS):
    photo = getattr(skimage.data, name)()
    if photo.ndim == 3:
      photo = np.round(skimage.color.rgb2gray(photo[..., :3]) * 255).astype(np.uint8)
    photos[name] = photo
  return photos


def write(root: str, count: int, seed: int = 0, grey: bool = False,
          crop: tuple[float, float] = (0.6, 1.0), size: tuple[int, int] = (500, 375)) -> None:
  """Writes `count` crops, every tenth of each photo to test; `crop` is the range of crop
  heights (a fraction of the photo's height) and `size` the (width, height) of a landscape file.
  """
  photos = load(grey)
  names = sorted(photos) if grey else PHOTOS
  rng = np.random.default_rng(seed)
  for i in range(count):
    name = names[i % len(names)]
    photo = photos[name]
    h, w = photo.shape[:2]
    shape = size if rng.random() < 0.75 else size[::-1]  # (width, height)
    crop_w = int(min(w, h * rng.uniform(*crop) * shape[0] / shape[1]))
    crop_h = int(crop_w * shape[1] / shape[0])
    top, left = rng.integers(0, h - crop_h + 1), rng.integers(0, w - crop_w + 1)
    split = "test" if (i // len(names)) % 10 == 9 else "train"  # every photo's 10th crop
    folder = os.path.join(root, split, name)
    os.makedirs(folder, exist_ok=True)
    image = Image.fromarray(photo[top:top + crop_h, left:left + crop_w])
    image.resize(shape, Image.BICUBIC).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("root")
  parser.add_argument("--count", type=int, default=1000)
  parser.add_argument("--grey", action="store_true", help="15 grey photographs and textures")
  parser.add_argument("--crop", type=float, nargs=2, default=(0.6, 1.0), metavar=("MIN", "MAX"),
                      help="range of crop heights as fractions of the photo's (0.6 1.0)")
  parser.add_argument("--size", type=int, nargs=2, default=(500, 375),
                      metavar=("WIDTH", "HEIGHT"), help="landscape file size (500 375)")
  args = parser.parse_args()
  if not 0 < args.crop[0] <= args.crop[1] <= 1:
    parser.error(f"--crop {args.crop[0]} {args.crop[1]}: need 0 < MIN <= MAX <= 1")
  write(args.root, args.count, grey=args.grey, crop=tuple(args.crop), size=tuple(args.size))
