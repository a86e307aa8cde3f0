"""`python -m vit_jax.benchmark data --dataset folder:DIR --image_size 224 [...]`.

Measures the input pipeline on a real dataset (an image folder or a prepared tfds name):

- the training preprocessing (read, decode, Inception crop, resize, flip) in images per second,
  on one worker thread (images per second per core) and on one thread per core;
- with `--train_steps N`, the share of a training step's wall time spent waiting for input while
  `--model` trains on those batches (the trainer's own loop: next batch, place, step).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import jax
import ml_collections

from vit_jax.benchmark import measure
from vit_jax.benchmark.report import table
from vit_jax.data import batches, pipeline
from vit_jax.data.types import AUGMENTS, DatasetError, Feed
from vit_jax.train import sharding


def parse(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m vit_jax.benchmark data", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset", required=True, help="folder:DIR or a prepared tfds name")
  p.add_argument("--data_dir", default=None, help="tfds data_dir")
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--augment", default="inception_crop_flip", choices=AUGMENTS)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--batches", type=int, default=10, help="timed batches per measurement")
  p.add_argument("--workers", type=int, default=0, help="threads for the all-cores figure; "
                 "0: one per core")
  p.add_argument("--model", default="ViT-Ti/16", help="the model of the input-wait measurement")
  p.add_argument("--train_steps", type=int, default=0,
                 help="timed training steps for the input-wait share (0: not measured)")
  p.add_argument("--json", default=None, help="also write the results to this file")
  args = p.parse_args(argv)
  for name in ("image_size", "batch", "batches"):
    if getattr(args, name) <= 0:
      p.error(f"--{name} must be positive, got {getattr(args, name)}")
  return args


def _open(args: argparse.Namespace, workers: int, prefetch: int):
  config = ml_collections.ConfigDict(dict(
      dataset=args.dataset, data_dir=args.data_dir, manual_dir=None, download=False,
      train_split=None, eval_split=None))
  feed = Feed(batch_size=args.batch, eval_batch_size=args.batch, image_size=args.image_size,
              channels=3, augment=args.augment, seed=0, workers=workers, prefetch=prefetch)
  return pipeline.load(config, feed)


def preprocessing_rate(args: argparse.Namespace, workers: int) -> float:
  """Training images per second prepared by `workers` threads (no prefetch: batch by batch)."""
  it = _open(args, workers, prefetch=0).train_batches(0)
  next(it)  # starts the threads, warms the file cache's first batch
  start = time.perf_counter()
  for _ in range(args.batches):
    next(it)
  return args.batch * args.batches / (time.perf_counter() - start)


def input_wait(args: argparse.Namespace, workers: int) -> dict[str, Any]:
  """Trains `--model` on the dataset's batches: the share of wall time spent waiting for them."""
  data = _open(args, workers, prefetch=2)
  setup = measure.Setup(model=args.model, batch=args.batch, image_size=args.image_size,
                        num_classes=data.num_classes, input_dtype="uint8")
  problem = measure.check(setup, jax.device_count())
  if problem:
    raise ValueError(problem)
  compiled, (state, _), _ = measure.compile_step(setup)
  mesh = sharding.make_mesh(-1, 1)
  it = data.train_batches(0)
  state, metrics = compiled(state, sharding.global_batch(next(it), mesh))
  jax.block_until_ready(metrics)
  waited, start = 0.0, time.perf_counter()
  for _ in range(args.train_steps):
    before = time.perf_counter()
    local = next(it)
    waited += time.perf_counter() - before
    state, metrics = compiled(state, sharding.global_batch(local, mesh))
  jax.block_until_ready(metrics)
  wall = time.perf_counter() - start
  return {"model": args.model, "train_steps": args.train_steps,
          "train_img_per_sec": round(args.batch * args.train_steps / wall, 1),
          "input_wait_fraction": round(waited / wall, 4)}


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Every measurement the arguments ask for, as one record."""
  cores = batches.cores()
  workers = args.workers or cores
  one = preprocessing_rate(args, 1)
  many = preprocessing_rate(args, workers)
  result = {"dataset": args.dataset, "image_size": args.image_size, "augment": args.augment,
            "batch": args.batch, "cores": cores, "workers": workers,
            "img_per_sec_one_thread": round(one, 1),
            "img_per_sec_all_workers": round(many, 1),
            "img_per_sec_per_core": round(many / min(workers, cores), 1)}
  if args.train_steps:
    result.update(input_wait(args, workers))
  return result


def main(argv: list[str]) -> None:

  args = parse(argv)
  try:
    result = run(args)
  except (ValueError, DatasetError) as e:
    raise SystemExit(f"error: {str(e).splitlines()[0]}") from None
  print(table(result))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
