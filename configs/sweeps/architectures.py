"""Five architectures at matched small sizes on the bundled digits: ViT, ResNet+ViT, T2T-ViT,
TNT and Mixer, each the quickstart's model of its family (configs/quickstart.py), with the same
recipe and number of steps, three seeds each.

  python -m vit_jax.sweep --config configs/sweeps/architectures.py --workdir DIR

`python -m experiments.architectures.summary DIR` adds parameters, FLOPs and throughput to the
sweep's results (experiments/architectures/README.md). The argument `FILE:EPOCHS` changes the
training length (10 epochs by default).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from configs import quickstart

ARCHITECTURES = ("vit", "hybrid", "t2t", "tnt", "mixer")
SEEDS = (0, 1, 2)
EPOCHS = 10.0


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The quickstart config of architecture `arg` (a run's `config_arg`), evaluated at the end."""
  c = quickstart.get_config(arg)
  c.num_epochs = EPOCHS
  c.eval_every = 0  # evaluate (and run few-shot) once, at the end
  c.checkpoint_every = 100
  c.keep_checkpoints = 1
  c.fewshot.shots = (1, 5, 10)
  return c


def get_sweep(arg: str | None = None) -> list[dict[str, Any]]:
  """Every architecture once per seed, seed-major; `arg` sets the epochs."""
  epochs = {"num_epochs": float(arg)} if arg else {}
  return [{"config_arg": name, "seed": seed, **epochs}
          for seed in SEEDS for name in ARCHITECTURES]


def get_tables(arg: str | None = None) -> list[dict[str, Any]]:
  """One table: an architecture per row."""
  del arg
  return [{"title": "Architectures at quickstart size, same recipe and steps",
           "rows": "config_arg", "cols": None, "where": {}}]
