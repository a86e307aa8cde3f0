"""Fine-tuning a pretrained ViT with the paper's transfer recipe (Appendix B.1.1).

  python -m vit_jax.main --config configs/finetune.py:b16,cifar10 \\
      --config.init_from=PRETRAINED_RUN_OR_NPZ --workdir DIR

The argument is `MODEL,DATASET`. MODEL is a preset key (`ti16` ... `h14`, the hybrids `r50_b16`,
`r26_s32`, `r50_l32`, the Mixers `mixer_b16`, `mixer_b32`, `mixer_l16`; see `MODELS`), any
registered preset name (`ViT-B/16`, `Mixer-S/16`) or `quickstart`, `quickstart_hybrid`,
`quickstart_mixer` (configs/quickstart.py's small models). DATASET is one of `STEPS`'
tensorflow-datasets names, a VTAB-1k task `vtab:TASK` (vit_jax.data.vtab) or `folder:/path`.

The recipe: SGD with momentum 0.9, global batch 512, global-norm clipping at 1, no weight decay,
500 steps of linear warm-up then cosine decay, no dropout, resolution 384 (the dataset preset's),
Inception crop and flip, and the paper's number of steps for the dataset. The learning rate is one
of {0.001, 0.003, 0.01, 0.03} (`--config.lr`; 0.003 by default; the transfer sweep picks it on the
minival split). The head is always replaced by a zero-initialised one for the new classes
(`reset_head`); the pre-logits layer is dropped (`model.representation_size=0`; set it to the
source's width to keep it), and learned position embeddings are resampled to the new patch grid.
A Mixer cannot change resolution (its token-mixing weights fix the number of patches): it is
fine-tuned at its pretraining resolution (224 for the presets).
"""

from __future__ import annotations

import ml_collections

from configs import common, quickstart
from configs.models import model_config
from vit_jax.data import vtab
from vit_jax.data.presets import PRESETS
from vit_jax.models import registry

# Fine-tuning steps per dataset, as in the paper; folders take the small-dataset (Pets, Flowers)
# value. VTAB-1k tasks use 2,500.
STEPS = {"imagenet2012": 20_000, "cifar10": 10_000, "cifar100": 10_000, "oxford_iiit_pet": 500,
         "oxford_flowers102": 500}
FOLDER_STEPS = 500
VTAB_STEPS = 2_500
LEARNING_RATES = (0.001, 0.003, 0.01, 0.03)
RESOLUTION = 384  # the paper's fine-tuning resolution, for datasets without a preset
MODELS = {"ti16": "ViT-Ti/16", "s16": "ViT-S/16", "s32": "ViT-S/32", "b8": "ViT-B/8",
          "b16": "ViT-B/16", "b32": "ViT-B/32", "l16": "ViT-L/16", "l32": "ViT-L/32",
          "h14": "ViT-H/14", "r50_b16": "R50+ViT-B/16", "r26_s32": "R26+ViT-S/32",
          "r50_l32": "R50+ViT-L/32", "mixer_b16": "Mixer-B/16", "mixer_b32": "Mixer-B/32",
          "mixer_l16": "Mixer-L/16"}
QUICKSTARTS = {"quickstart": "vit", "quickstart_hybrid": "hybrid", "quickstart_mixer": "mixer"}
USAGE = "use configs/finetune.py:MODEL,DATASET, e.g. configs/finetune.py:b16,cifar10"


def _source(key: str) -> tuple[ml_collections.ConfigDict, int | None]:
  """The model section, and the resolution it must keep (a Mixer's) or None."""
  if key in QUICKSTARTS:
    source = quickstart.get_config(QUICKSTARTS[key])
    source.model.dropout = 0.0
    fixed = source.image_size if source.model.name.startswith("Mixer") else None
    return source.model, fixed
  name = MODELS.get(key, key)
  if name not in registry.PRESETS:
    raise ValueError(f"unknown model '{key}'; choose one of {', '.join(MODELS)}, "
                     f"{', '.join(QUICKSTARTS)}, or a preset name; {USAGE}")
  family = registry.PRESETS[name]
  return model_config(name), None if family.resizable else family.image_size


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  model_key, _, dataset = (arg or "").partition(",")
  if not model_key or not dataset:
    raise ValueError(f"missing MODEL,DATASET; {USAGE}")
  if dataset.startswith("folder:"):
    steps, size = FOLDER_STEPS, RESOLUTION
  elif dataset.startswith(vtab.PREFIX):
    try:
      vtab.task(dataset)
    except ValueError as e:
      raise ValueError(f"{e}; {USAGE}") from None
    steps, size = VTAB_STEPS, RESOLUTION
  elif dataset in STEPS:
    steps, size = STEPS[dataset], PRESETS[dataset].image_size
  else:
    raise ValueError(f"no fine-tuning preset for dataset '{dataset}'; choose one of "
                     f"{', '.join(STEPS)}, vtab:TASK or folder:/path; {USAGE}")
  c = common.get_config()
  c.dataset = dataset
  c.image_size = size
  c.augment = "inception_crop_flip"
  c.batch_size = 512
  c.total_steps = steps
  c.optimizer = "sgd"
  c.momentum = 0.9
  c.lr = 0.003
  c.warmup_steps = 500 if steps > 500 else 100
  c.decay = "cosine"
  c.weight_decay = 0.0
  c.grad_clip_norm = 1.0
  c.loss = "softmax_xent"
  c.reset_head = True
  c.eval_every = max(steps // 10, 100)
  c.checkpoint_every = c.eval_every
  c.log_every = min(50, steps // 10)
  c.model, fixed_size = _source(model_key)
  if fixed_size:  # a Mixer's token-mixing weights fix its resolution
    c.image_size = fixed_size
  if model_key in QUICKSTARTS:  # pretrained on grey digits: its first kernels take one channel
    c.image_channels = 1
  c.model.representation_size = 0
  c.model.head_bias_init = 0.0
  c.model.dropout = 0.0
  return c
