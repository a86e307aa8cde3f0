"""Mixer-B/16 pretraining on ImageNet (ILSVRC-2012) with the Mixer paper's recipe (Section 3).

Adam(0.9, 0.999), global batch 4096, 10k warm-up steps then linear decay from lr 1e-3, gradient
clipping at global norm 1, weight decay 1e-4 (decoupled, scaled by the learning rate as in
optax.adamw), 300 epochs at 224x224 with Inception crop and flip, and a sigmoid loss whose head
bias starts at -6.9 (log 1/1000). The paper's ImageNet runs also use RandAugment (2, 15), mixup
(p 0.5) and stochastic depth 0.1, which this trainer does not offer: expect a lower accuracy
than the paper's until they exist. The Mixer runs at the resolution it was built for only.
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs.models import model_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f"unknown variant '{arg}'; configs/mixer_b16.py takes no argument")
  c = common.get_config()
  c.dataset = "imagenet2012"
  c.image_size = 224
  c.augment = "inception_crop_flip"
  c.eval_resize_small = 256
  c.batch_size = 4096
  c.num_epochs = 300.0
  c.optimizer = "adam"
  c.lr = 1e-3
  c.warmup_steps = 10_000
  c.decay = "linear"
  c.weight_decay = 1e-4
  c.grad_clip_norm = 1.0
  c.loss = "sigmoid_xent"
  c.eval_every = 2_500
  c.checkpoint_every = 1_000
  c.model = model_config("Mixer-B/16", head_bias_init=-6.9, dtype="bfloat16")
  return c
