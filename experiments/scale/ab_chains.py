"""The training step with different `train_chains`, compiled once each and timed alternately.

    python experiments/scale/ab_chains.py --model ViT-Ti/16 --batch 32 --chains 1 2 4

One process, so each setting sees the same machine: `--rounds` rounds of `--steps` timed steps
per setting (after one untimed step each round); prints the median and best step in ms. Freed
host memory stays mapped, as in training runs (vit_jax/train/host_memory.py).
"""

from __future__ import annotations

import argparse
import statistics
import time

from vit_jax.train import host_memory


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="ViT-Ti/16")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--chains", type=int, nargs="+", default=[1, 0])
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=3)
  args = p.parse_args()
  host_memory.configure("retain")  # before the first computation starts a backend

  import jax

  from vit_jax.benchmark import measure

  runs = {}
  for chains in args.chains:
    setup = measure.Setup(model=args.model, mode="train", batch=args.batch, train_chains=chains)
    compiled, step_args, _ = measure.compile_step(setup)
    runs[chains] = [compiled, step_args, [], measure.train_chains(setup, jax.device_count())]
  for _ in range(args.rounds):
    for run in runs.values():
      compiled, step_args, times, _ = run
      for i in range(args.steps + 1):
        start = time.perf_counter()
        state, _ = jax.block_until_ready(compiled(*step_args))
        if i:
          times.append(time.perf_counter() - start)
        step_args = (state, step_args[1])
      run[1] = step_args
  for chains, (_, _, times, used) in runs.items():
    print(f"train_chains {chains} ({used} parts): median {statistics.median(times) * 1e3:7.1f} "
          f"ms, best {min(times) * 1e3:7.1f} ms over {len(times)} steps")


if __name__ == "__main__":
  main()
