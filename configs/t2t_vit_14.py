"""T2T-ViT-14 trained from scratch on ImageNet (ILSVRC-2012) with its authors' recipe.

The T2T-ViT paper (Yuan et al., 2021) and its repository's training script: AdamW (0.9, 0.999)
with lr 5e-4 at global batch 512 and weight decay 0.05 (biases, norms, the class token and the
fixed tables not decayed), 10 warm-up epochs then cosine decay, 310 epochs (300 plus 10 of
cool-down in timm's scheduler, here folded into the cosine), no gradient clipping, label
smoothing 0.1, mixup 0.8 and CutMix 1.0 (one of the two per batch, probability 1), stochastic
depth 0.1, Inception crop and flip at 224, evaluation at 224 from a 248 resize (crop 0.9).
Published: 81.5% top-1 (81.7% for T2T-ViT_t-14, `--config.model.name=T2T-ViT_t-14`).

Not in this trainer, so expect a lower accuracy than published until they exist: RandAugment
(rand-m9-mstd0.5-inc1), random erasing 0.25, colour jitter 0.4, the EMA of the weights (decay
0.99996, whose weights the authors report), and the 1e-5 floor of the learning rate.
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs.models import model_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f"unknown variant '{arg}'; configs/t2t_vit_14.py takes no argument")
  c = common.get_config()
  c.dataset = "imagenet2012"
  c.image_size = 224
  c.augment = "inception_crop_flip"
  c.eval_resize_small = 248
  c.batch_size = 512
  c.num_epochs = 310.0
  c.optimizer = "adam"
  c.lr = 5e-4
  c.warmup_steps = 25_000  # about 10 epochs of 1,281,167 images at batch 512
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
  c.model = model_config("T2T-ViT-14", drop_path=0.1)
  return c
