"""R50+ViT-B/16 (the hybrid) pretraining on ImageNet-21k with the ViT-B/16 recipe.

The published R50+ViT-B/16 weights were pretrained on ImageNet-21k as ViT-B/16 was: this is
configs/b16.py (global batch 4096, Adam(0.9, 0.999), lr 1e-3 with 10k warm-up steps then linear
decay, weight decay 0.03, dropout 0.1, 90 epochs at 224x224, a 768-wide tanh pre-logits layer,
head bias -10 under a sigmoid loss) with the hybrid: a ResNet-50 stem of three stages (3, 4, 9
units; stride 16) under ViT-B with patch size 1 on its 14x14 feature map.
"""

from __future__ import annotations

import ml_collections

from configs import b16
from configs.models import model_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f"unknown variant '{arg}'; configs/r50_b16.py takes no argument")
  c = b16.get_config()
  c.model = model_config("R50+ViT-B/16", dropout=0.1, representation_size=768,
                         head_bias_init=-10.0, dtype="bfloat16")
  return c
