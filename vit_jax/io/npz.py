"""The original ViT `.npz` parameter format: one array per '/'-joined parameter path.

Keys are the per-layer names (`Transformer/encoderblock_{i}/...`, see docs/design.md), also for a
model trained with `scan_layers`. Files are read with `allow_pickle=False`, always.

Export a run's newest checkpoint: `python -m vit_jax.io.npz --workdir RUN --out params.npz`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from vit_jax.io import layers


def save(path: str, params: Mapping[str, Any]) -> None:
  """Writes `params` (per-layer or scanned) to `path` in the original format, atomically."""
  per_layer = layers.to_per_layer(dict(params))
  flat = {k: np.asarray(jax.device_get(v))
          for k, v in traverse_util.flatten_dict(per_layer, sep="/").items()}
  tmp = f"{path}.tmp.npz"
  np.savez(tmp, **flat)
  os.replace(tmp, path)


def load(path: str) -> dict[str, Any]:
  """Reads an original-format file into nested per-layer parameters (no pickled objects)."""
  try:
    with np.load(path, allow_pickle=False) as data:
      return traverse_util.unflatten_dict({key: data[key] for key in data.files}, sep="/")
  except ValueError as e:  # an object array needs pickle
    raise ValueError(f"{path} holds pickled objects, which are never loaded ({e})") from None


def main(argv: Sequence[str]) -> None:
  """Exports the parameters of a run's checkpoint (the run is only read)."""
  from absl import flags
  from absl import logging as absl_logging

  from vit_jax.io import runs

  del argv
  absl_logging.set_verbosity(absl_logging.ERROR)
  workdir, out = flags.FLAGS.workdir, flags.FLAGS.out
  if os.path.exists(out) and not flags.FLAGS.overwrite:
    raise SystemExit(f"error: {out} exists; choose another --out or pass --overwrite")
  try:
    with runs.Run(workdir) as run:
      step = flags.FLAGS.step or run.latest_step()
      params = run.params(step)
  except runs.RunError as e:
    raise SystemExit(f"error: {e}") from None
  save(out, params)
  print(f"wrote {len(traverse_util.flatten_dict(params))} arrays of step {step} to {out}")


if __name__ == "__main__":
  from absl import app, flags

  flags.DEFINE_string("workdir", None, "A training run's directory.", required=True)
  flags.DEFINE_string("out", None, "The .npz file to write.", required=True)
  flags.DEFINE_integer("step", 0, "Checkpoint step (default: the newest).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing --out file.")
  app.run(main)
