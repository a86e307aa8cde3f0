"""Resume cost on an image folder: time to the first trained step after a restart at step 10 and
at step 10,000 of the same run.

`python -m experiments.input_pipeline.resume_cost WORK_DIR` (from the repository root) writes
the bundled digits as a PNG folder, trains a tiny model to step 10 in one workdir and to step
10,000 in another (stopping through the trainer's own stop request, which saves that step), then
restarts each run three times, alternately, and times the trainer from its call to the end of
its first step (restore, compile, first batch and step; the stop after that step and its
checkpoint are excluded). It prints the medians as JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import jax

from configs import quickstart
from vit_jax import configuration
from vit_jax.data import bundled, pipeline
from vit_jax.data.types import Dataset, Feed
from vit_jax.train import loop
from vit_jax.train.preemption import StopRequest


def config(root: str):
  c = quickstart.get_config()
  c.dataset = f"folder:{root}"
  c.batch_size, c.total_steps, c.warmup_steps = 8, 20_000, 10
  c.log_every, c.eval_every, c.checkpoint_every = 1_000, 0, 1_000_000
  c.model.hidden_size, c.model.num_layers, c.model.num_heads, c.model.mlp_dim = 16, 1, 1, 16
  c = configuration.resolve_model(c)
  return c


def stopping(data: Dataset, stop: StopRequest, after: int, marks: list[float]) -> Dataset:
  """`data`, but a stop is requested with the `after`-th batch (the run stops after that step)."""

  def batches(start):
    for i, batch in enumerate(data.train_batches(start), 1):
      marks.append(time.perf_counter())  # batch i is asked for once step i - 1 has run
      if i == after:
        stop.request("the experiment")
      yield batch

  return Dataset(data.num_classes, data.num_train, data.num_eval, batches, data.eval_batches,
                 data.splits, data.pool_batches, data.class_names)


def train_until(c, workdir: str, steps: int) -> float:
  """Runs (or resumes) until `steps` more steps; the seconds from the call to the first step's
  end, measured when the second batch is asked for (or at the return for a single step)."""
  data = pipeline.load(c, Feed.from_config(c))
  c = configuration.resolve_data(c, num_train=data.num_train, num_classes=data.num_classes,
                                 splits=data.splits)
  stop, marks = StopRequest(), []
  start = time.perf_counter()
  try:
    loop.train(c, stopping(data, stop, steps, marks), workdir, stop)
  except loop.Interrupted:
    pass
  first_step_end = marks[1] if len(marks) > 1 else time.perf_counter()
  return first_step_end - start


def main(work: str) -> None:
  root = os.path.join(work, "digits")
  if not os.path.isdir(root):
    bundled.write_folder(root)
  c = config(root)
  runs = {10: os.path.join(work, "at_10"), 10_000: os.path.join(work, "at_10000")}
  for step, workdir in runs.items():
    if not os.path.isdir(workdir):
      began = time.perf_counter()
      train_until(c, workdir, step)
      print(f"trained to step {step} in {time.perf_counter() - began:.0f} s", file=sys.stderr)
  times = {step: [] for step in runs}
  for _ in range(3):
    for step, workdir in runs.items():
      # Two steps: the time to the end of the first is read when the second batch is asked for.
      times[step].append(train_until(c, workdir, 2))
  result = {f"restart_near_step_{s}_s": round(statistics.median(t), 3) for s, t in times.items()}
  result["all_s"] = {s: [round(x, 3) for x in t] for s, t in times.items()}
  result["ratio"] = round(result["restart_near_step_10000_s"] / result["restart_near_step_10_s"],
                          3)
  result["device"] = jax.devices()[0].device_kind
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main(sys.argv[1])
