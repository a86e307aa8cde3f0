"""`python -m vit_jax.evaluate --workdir RUN [--step N] [--shots 1,5,10]`.

Evaluates a checkpoint of a run on the run's own dataset and prints one JSON line: `step`,
`eval/accuracy`, `eval/loss` and `fewshot/<k>shot_accuracy` (the shots of the run's config, else
1, 5 and 10). The run is only read (vit_jax.io.runs), so it may be training meanwhile. Exit
status 2 with one `error:` line when the run or its data cannot be read.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
from typing import Any

DEFAULT_SHOTS = (1, 5, 10)


def _shots(text: str) -> tuple[int, ...]:
  try:
    shots = tuple(int(k) for k in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
  if not shots or min(shots) <= 0:
    raise argparse.ArgumentTypeError(f"shots must be positive, got '{text}'")
  return shots


def evaluate_run(workdir: str, step: int | None = None,
                 shots: tuple[int, ...] | None = None) -> dict[str, Any]:
  """The metrics of checkpoint `step` (default: the newest) of the run in `workdir`.

  Raises RunError or DatasetError (one line) when the run, its model or its data cannot be read.
  """
  import jax
  from ml_collections import ConfigDict

  from vit_jax.data import pipeline
  from vit_jax.data.types import Feed
  from vit_jax.evaluate import classification, fewshot
  from vit_jax.io import runs
  from vit_jax.models import registry
  from vit_jax.train import chunks, cpu_matmul, multihost, sharding
  from vit_jax.train import step as step_lib

  with runs.Run(workdir) as run:
    config = ConfigDict(run.config)
    step = step or run.latest_step()
    params = run.params(step)
  config.fewshot.shots = shots or tuple(config.fewshot.shots) or DEFAULT_SHOTS
  feed = Feed.from_config(config, jax.process_index(), jax.process_count())
  data = pipeline.load(config, feed)
  # Checkpoints hold per-layer parameters: evaluate with the per-layer model, whatever the run's
  # layout.
  try:
    model = registry.build({**config.model.to_dict(), "scan_layers": False}, config.num_classes)
  except registry.ModelNameError as e:  # e.g. a run made before its name was registered
    raise runs.RunError(f"{workdir}/config.json: {e}") from None
  # As many devices as divide the evaluation batch (the run may have had other devices).
  devices = jax.devices()[:math.gcd(feed.eval_batch_size, jax.device_count())]
  mesh = sharding.make_mesh(devices=devices)
  repl, batch = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  image_shape = (config.image_size, config.image_size, config.image_channels)
  per_pass = chunks.images_per_pass(config.get("infer_chunk", 0), model, image_shape,
                                    jax.default_backend())
  forward_options = cpu_matmul.inference_options(
      config.get("cpu_matmul", "auto"), jax.default_backend(),
      *registry.family_and_width(config.model))
  eval_step = multihost.one_at_a_time(jax.jit(
      step_lib.make_eval_step(model, loss=config.loss, images_per_pass=per_pass,
                              devices=mesh.size),
      in_shardings=(repl, batch), out_shardings=repl, compiler_options=forward_options),
      mesh.size)
  feature_step = multihost.one_at_a_time(jax.jit(
      fewshot.make_feature_step(model, per_pass, mesh.size), in_shardings=(repl, batch),
      out_shardings=repl, compiler_options=forward_options), mesh.size)
  place = functools.partial(sharding.global_batch, mesh=mesh)
  result = classification.evaluate(eval_step, params, data.eval_batches(), place)
  row = {"step": step, "eval/accuracy": result["accuracy"], "eval/loss": result["loss"]}
  row.update(fewshot.evaluate(feature_step, params, data, config.fewshot, place))
  return row


def _split_cpu(workdir: str) -> None:
  """On a CPU-only host, splits the CPU into one device per core for the run's evaluation batch
  (vit_jax/evaluate/cpu_devices.py), before anything starts JAX's backends."""
  from vit_jax.evaluate import cpu_devices

  try:
    with open(os.path.join(workdir, "config.json")) as f:
      config = json.load(f)
    batch = int(config["batch_size"]) // int(config.get("accum_steps", 1))
  except (OSError, ValueError, TypeError, KeyError, ZeroDivisionError):
    return  # evaluate_run reports an unreadable run
  cpu_devices.split_for_inference(batch)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m vit_jax.evaluate",
      description="Evaluates a checkpoint of a run on its own dataset.")
  parser.add_argument("--workdir", required=True, help="a training run's directory")
  parser.add_argument("--step", type=int, default=0, help="checkpoint step (default: newest)")
  parser.add_argument("--shots", type=_shots, default=None,
                      help="few-shot k values, e.g. 1,5,10 (default: the run's, else 1,5,10)")
  args = parser.parse_args(argv)
  from absl import logging as absl_logging

  from vit_jax.data.types import DatasetError
  from vit_jax.io.runs import RunError

  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax logs every restore at INFO
  _split_cpu(args.workdir)
  try:
    row = evaluate_run(args.workdir, args.step or None, args.shots)
  except (RunError, DatasetError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(row))
  return 0


if __name__ == "__main__":
  sys.exit(main())
