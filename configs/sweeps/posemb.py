"""The position-embedding ablation (the paper's Table 8) on the bundled MNIST digits.

`python -m vit_jax.sweep --config configs/sweeps/posemb.py --workdir DIR` trains every run of
`get_sweep()`, each a set of overrides of `get_config()`; `get_tables()` lays out results.md.
A 4-layer, width-64 ViT on 7x7 patches of 4x4 pixels, 10 epochs of the 4,000 training digits:
about a minute per run on a 2-core CPU.

`configs/sweeps/posemb.py:t2t` and `:tnt` run the same ablation on a T2T-ViT and a TNT with
the same backbone (4 layers, width 64, a 7x7 token grid, class-token pooling as their authors
use), with each family's own embedding as an extra row: T2T-ViT's fixed sinusoid table, and
TNT's `patch_pos`, which is `learn1d` at the stem. The GAP table is the ViT's alone. A second
argument sets the number of seeds: `:t2t,1` trains seed 0 only (the runs of seeds 1 and 2 can
be added later with `:t2t` and the same workdir).
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
FAMILIES = ("vit", "t2t", "tnt")
OWN = {"t2t": "sinusoid"}  # a family's own default embedding, added at the stem


def _parse(arg: str | None) -> tuple[str, tuple[int, ...]]:
  """`FAMILY[,SEEDS]` -> (family, seeds): `t2t,1` is the T2T-ViT ablation with seed 0 only."""
  family, _, count = (arg or "vit").partition(",")
  if family not in FAMILIES or (count and not (count.isdigit() and 1 <= int(count) <= 3)):
    raise ValueError(f"bad argument '{arg}' for the position-embedding sweep; use "
                     "configs/sweeps/posemb.py:FAMILY[,SEEDS] with FAMILY one of "
                     f"{', '.join(FAMILIES)} and SEEDS 1 to 3")
  return family, SEEDS[:int(count or 3)]


def _family(arg: str | None) -> str:
  return _parse(arg)[0]


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The ablation's base config for the family `arg` (vit, t2t or tnt; vit by default)."""
  family = _family(arg)
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
  backbone = dict(hidden_size=64, num_layers=4, num_heads=4, mlp_dim=128)
  if family == "t2t":  # soft splits 7x7/2, 3x3/2, 3x3/1: 14x14, then 7x7 tokens
    c.model = model_config("T2T-ViT-custom", token_dim=32, t2t_layer="performer",
                           t2t_strides=(2, 2, 1), **backbone)
  elif family == "tnt":  # 7x7 patches of 4x4 pixels, each 2x2 inner tokens of width 16
    c.model = model_config("TNT-custom", patch_size=4, inner_dim=16, inner_heads=2,
                           inner_mlp_dim=64, inner_stride=2, **backbone)
  else:
    c.model = model_config("ViT-custom", patch_size=4, pool="token", **backbone)
  return c


def get_sweep(arg: str | None = None) -> list[dict[str, Any]]:
  """Every kind x applicable mode with a class token (and the family's own embedding), then,
  for the ViT, every kind with GAP; seed-major."""
  family, seeds = _parse(arg)
  runs = []
  for seed in seeds:
    if family in OWN:
      runs.append({"model.posemb": OWN[family], "model.posemb_mode": "stem", "seed": seed})
    for kind, modes in CELLS:
      for mode in modes:
        pool = {"model.pool": "token"} if family == "vit" else {}
        runs.append({"model.posemb": kind, "model.posemb_mode": mode, **pool, "seed": seed})
    if family != "vit":
      continue
    for kind, _ in CELLS:
      runs.append({"model.posemb": kind, "model.posemb_mode": "stem", "model.pool": "gap",
                   "seed": seed})
  return runs


def get_tables(arg: str | None = None) -> list[dict[str, Any]]:
  """The tables of results.md: rows x columns, restricted to runs matching `where`."""
  if _family(arg) != "vit":
    return [{"title": f"Position embedding x where it is added ({_family(arg)}, class token), "
             "as Table 8",
             "rows": "model.posemb", "cols": "model.posemb_mode", "where": {}}]
  return [
      {"title": "Position embedding x where it is added (class-token pooling), as Table 8",
       "rows": "model.posemb", "cols": "model.posemb_mode", "where": {"model.pool": "token"}},
      {"title": "Class token vs global average pooling (embedding added at the stem)",
       "rows": "model.posemb", "cols": "model.pool", "where": {"model.posemb_mode": "stem"}},
  ]
