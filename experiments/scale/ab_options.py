"""The inference pass compiled with different XLA:CPU compiler options, timed alternately.

    python experiments/scale/ab_options.py --model ViT-Ti/16 --batch 8 \
        --options xla_cpu_enable_concurrency_optimized_scheduler=true

Each `--options` entry is one variant, comma-separated `key=value` pairs (`true`/`false` are
booleans); the first variant is always XLA's defaults. One process, so every variant sees the
same machine: `--rounds` rounds of `--steps` timed steps per variant, the order reversed every
other round. Prints each variant's largest logit difference from the defaults, then the median
and best step in ms. An option this jaxlib does not know is reported and skipped.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from vit_jax.train import host_memory


def parse_options(text: str) -> dict[str, Any]:
  """'a=1,b=true' -> {'a': '1', 'b': True}."""
  options = {}
  for pair in text.split(","):
    key, _, value = pair.partition("=")
    options[key] = {"true": True, "false": False}.get(value, value)
  return options


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="ViT-Ti/16")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--options", nargs="*", default=[])
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--steps", type=int, default=10)
  args = p.parse_args()
  host_memory.configure("retain")  # before the first computation starts a backend

  import jax
  import numpy as np

  from vit_jax.models import registry

  model = registry.build(registry.section(args.model), 1000)
  rng = np.random.default_rng(0)
  images = jax.numpy.asarray(rng.integers(0, 256, (args.batch, 224, 224, 3), dtype=np.uint8))
  params = jax.jit(lambda: model.init(jax.random.key(0), images[:1])["params"])()
  forward = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
  variants = {"defaults": {}, **{text: parse_options(text) for text in args.options}}
  compiled = {}
  for name, options in variants.items():
    try:
      compiled[name] = jax.jit(forward, compiler_options=options).lower(params, images).compile()
    except Exception as e:  # an option unknown to this jaxlib, or a value it refuses
      print(f"{name}: not compiled ({str(e).splitlines()[0]})")
  reference = np.asarray(compiled["defaults"](params, images))
  for name, fn in compiled.items():
    difference = np.abs(np.asarray(fn(params, images)) - reference).max()
    print(f"{name}: largest logit difference {difference:.1e}")
  times: dict[str, list[float]] = {name: [] for name in compiled}
  for r in range(args.rounds):
    for name in list(compiled)[:: 1 if r % 2 == 0 else -1]:
      for _ in range(args.steps):
        start = time.perf_counter()
        jax.block_until_ready(compiled[name](params, images))
        times[name].append(time.perf_counter() - start)
  for name, t in times.items():
    print(f"{name}: median {statistics.median(t) * 1e3:7.1f} ms, best {min(t) * 1e3:7.1f} ms "
          f"over {len(t)} steps")


if __name__ == "__main__":
  main()
