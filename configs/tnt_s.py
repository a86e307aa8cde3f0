"""TNT-S trained from scratch on ImageNet (ILSVRC-2012) with its authors' recipe (DeiT's).

The TNT paper (Han et al., 2021), Table 2: AdamW (0.9, 0.999) with lr 1e-3 at global batch
1024 and weight decay 0.05 (biases, norms, the class token and the position tables not
decayed), 5 warm-up epochs then cosine decay over 300 epochs, no gradient clipping, label
smoothing 0.1, mixup 0.8 and CutMix 1.0 (one of the two per batch, probability 1), stochastic
depth 0.1, Inception crop and flip at 224, evaluation at 224 from a 248 resize (crop 0.9).
Published: 81.5% top-1 for TNT-S (82.9% for TNT-B, `--config.model.name=TNT-B`).

Not in this trainer, so expect a lower accuracy than published until they exist: RandAugment
(9, 0.5), random erasing 0.25 and repeated augmentation.
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs.models import model_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f"unknown variant '{arg}'; configs/tnt_s.py takes no argument")
  c = common.get_config()
  c.dataset = "imagenet2012"
  c.image_size = 224
  c.augment = "inception_crop_flip"
  c.eval_resize_small = 248
  c.batch_size = 1024
  c.num_epochs = 300.0
  c.optimizer = "adam"
  c.lr = 1e-3
  c.warmup_steps = 6_250  # about 5 epochs of 1,281,167 images at batch 1024
  c.decay = "cosine"
  c.weight_decay = 0.05
  c.grad_clip_norm = 0.0
  c.label_smoothing = 0.1
  c.mixup_alpha = 0.8
  c.cutmix_alpha = 1.0
  c.mix_prob = 1.0
  c.mix_switch_prob = 0.5
  c.eval_every = 2_500
  c.checkpoint_every = 1_000
  c.model = model_config("TNT-S", drop_path=0.1)
  return c
