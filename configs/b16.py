"""ViT-B/16 pretraining on ImageNet-21k with the paper's recipe (Appendix B.1).

Global batch 4096, Adam(0.9, 0.999), lr 1e-3 with 10k warm-up steps then linear decay, weight
decay 0.03, dropout 0.1, 90 epochs at 224x224, a 768-wide tanh pre-logits layer and a head bias
of -10 under a sigmoid loss. `configs/b16.py:gap` pools by global average instead of the class
token. Training and evaluation use ImageNet-21k's images after and before the first 51,200
(the dataset's default splits here). ImageNet-21k has no tfds builder: prepare it as a tfds
dataset named `imagenet21k` and point --config.data_dir at it.
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs.models import model_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.get_config()
  c.dataset = "imagenet21k"
  c.image_size = 224
  c.augment = "inception_crop_flip"
  c.batch_size = 4096
  c.num_epochs = 90.0
  c.optimizer = "adam"
  c.lr = 1e-3
  c.warmup_steps = 10_000
  c.decay = "linear"
  c.weight_decay = 0.03
  c.loss = "sigmoid_xent"
  c.eval_every = 10_000
  c.checkpoint_every = 2_000
  c.model = model_config("ViT-B/16", dropout=0.1, representation_size=768,
                         head_bias_init=-10.0, dtype="bfloat16")
  if arg == "gap":
    c.model.pool = "gap"
  elif arg:
    raise ValueError(f"unknown variant '{arg}'; use configs/b16.py or configs/b16.py:gap")
  return c
