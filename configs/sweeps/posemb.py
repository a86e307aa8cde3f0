"""The position-embedding ablation (the paper's Table 8) on the bundled MNIST digits.

`python -m vit_jax.sweep --config configs/sweeps/posemb.py --workdir DIR` trains every run of
`get_sweep()`, each a set of overrides of `get_config()`; `get_tables()` lays out results.md.
A 4-layer, width-64 ViT on 7x7 patches of 4x4 pixels, 10 epochs of the 4,000 training digits:
about a minute per run on a 2-core CPU.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from configs import common
from configs.models import model_config

# (kind, modes that apply to it); `stem` is the paper's default column.
CELLS = (
    ("none", ("stem",)),
    ("learn1d", ("stem", "every_layer", "every_layer_shared")),
    ("learn2d", ("stem", "every_layer", "every_layer_shared")),
    ("sincos1d", ("stem", "every_layer")),
    ("sincos2d", ("stem", "every_layer")),
    ("relative", ("stem",)),
)
SEEDS = (0, 1, 2)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = common.get_config()
  c.dataset = "bundled_mnist"
  c.image_size = 28
  c.image_channels = 1
  c.augment = "none"
  c.batch_size = 128
  c.num_epochs = 10.0
  c.lr = 3e-3
  c.warmup_steps = 50
  c.decay = "cosine"
  c.weight_decay = 0.05
  c.log_every = 50
  c.eval_every = 0  # evaluate (and run few-shot) once, at the end
  c.checkpoint_every = 100
  c.keep_checkpoints = 1
  c.fewshot.shots = (1, 5, 10)
  c.fewshot.draws = 5
  c.fewshot.pool = 2000
  c.model = model_config("ViT-custom", patch_size=4, hidden_size=64, num_layers=4,
                         num_heads=4, mlp_dim=128, pool="token")
  return c


def get_sweep() -> list[dict[str, Any]]:
  """Every kind x applicable mode with a class token, then every kind with GAP; seed-major."""
  runs = []
  for seed in SEEDS:
    for kind, modes in CELLS:
      for mode in modes:
        runs.append({"model.posemb": kind, "model.posemb_mode": mode, "model.pool": "token",
                     "seed": seed})
    for kind, _ in CELLS:
      runs.append({"model.posemb": kind, "model.posemb_mode": "stem", "model.pool": "gap",
                   "seed": seed})
  return runs


def get_tables() -> list[dict[str, Any]]:
  """The tables of results.md: rows x columns, restricted to runs matching `where`."""
  return [
      {"title": "Position embedding x where it is added (class-token pooling), as Table 8",
       "rows": "model.posemb", "cols": "model.posemb_mode", "where": {"model.pool": "token"}},
      {"title": "Class token vs global average pooling (embedding added at the stem)",
       "rows": "model.posemb", "cols": "model.pool", "where": {"model.posemb_mode": "stem"}},
  ]
