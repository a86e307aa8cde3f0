"""What the common tensorflow-datasets datasets are: classes, default splits, resolution.

The default evaluation split is a minival held out of the training data (as the ViT paper does
for choosing hyper-parameters); the dataset's own test split is `test_split`, to be asked for by
`--config.eval_split` when reporting final numbers. A leaf module: it imports nothing of vit_jax.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Preset:
  """One dataset's facts and defaults."""

  num_classes: int
  train_split: str  # what training reads by default
  eval_split: str  # the held-out minival evaluated by default
  test_split: str  # the dataset's own test split
  image_size: int  # the paper's fine-tuning resolution (ImageNet-21k: its pre-training one)
  manual: bool = False  # the files must be downloaded by hand (tfds manual_dir)
  train_all: str = "train"  # all training data: minival included (a transfer sweep's final run)


PRESETS: dict[str, Preset] = {
    "cifar10": Preset(10, "train[:98%]", "train[98%:]", "test", 384),
    "cifar100": Preset(100, "train[:98%]", "train[98%:]", "test", 384),
    "imagenet2012": Preset(1000, "train[:99%]", "train[99%:]", "validation", 384, manual=True),
    # One split: the first 51,200 images are held out, as the paper's ImageNet-21k runs do.
    "imagenet21k": Preset(21843, "full[51200:]", "full[:51200]", "full[:51200]", 224,
                          manual=True, train_all="full[51200:]"),
    "oxford_iiit_pet": Preset(37, "train[:90%]", "train[90%:]", "test", 384),
    "oxford_flowers102": Preset(102, "train", "validation", "test", 384,
                                train_all="train+validation"),
}


def default_splits(name: str, available: list[str]) -> tuple[str, str]:
  """The (train, eval) splits used when the config leaves them unset."""
  if name in PRESETS:
    return PRESETS[name].train_split, PRESETS[name].eval_split
  if available and "test" not in available and "validation" in available:
    return "train", "validation"
  return "train", "test"
