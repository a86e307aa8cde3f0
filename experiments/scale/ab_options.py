"""A benchmark step compiled with different XLA:CPU compiler options, timed alternately.

    python experiments/scale/ab_options.py --model ViT-Ti/16 --batch 8 \
        --options xla_cpu_enable_concurrency_optimized_scheduler=true
    python experiments/scale/ab_options.py --mode train --options xla_cpu_prefer_vector_width=512

Each `--options` entry is one variant, comma-separated `key=value` pairs (`true`/`false` are
booleans); the first variant is always the benchmark's own options (XLA's defaults, plus
`cpu_matmul`'s). `--mode infer` (default) times the model's forward pass on the whole
batch; `--mode infer_step` the benchmark's inference step (one host device per core, chunks);
`--mode train` the benchmark's training step (`vit_jax.benchmark.measure`), with freed memory
retained as the benchmark does. One process, so every variant sees the same
machine: `--rounds` rounds of `--steps` timed steps per variant, the order reversed every other
round. Prints each variant's largest difference from the first, relative to each array's
largest value (logits in inference; in training the parameters and the optimizer's state after
one step, whose first moments are the gradient scaled: AdamW's first update is about the
learning rate times the gradient's sign, so the parameters alone hide rounding differences),
then the median and best step in ms. An option this
jaxlib does not know is reported and skipped.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from vit_jax.train import host_memory


def parse_options(text: str) -> dict[str, Any]:
  """'a=1,b=true' -> {'a': '1', 'b': True}; a piece without '=' continues the value before it
  ('a=X,Y,b=1' -> {'a': 'X,Y', 'b': '1'}), as in lists of enum values."""
  pairs: list[list[str]] = []
  for piece in text.split(","):
    if "=" in piece or not pairs:
      pairs.append(list(piece.partition("=")[::2]))
    else:
      pairs[-1][1] += "," + piece
  return {key: {"true": True, "false": False}.get(value, value) for key, value in pairs}


def _infer_clocks(args: argparse.Namespace, variants: dict[str, dict[str, Any]]) -> tuple:
  import jax
  import numpy as np

  from vit_jax.models import registry

  model = registry.build(registry.section(args.model), 1000)
  rng = np.random.default_rng(0)
  images = jax.numpy.asarray(rng.integers(0, 256, (args.batch, 224, 224, 3), dtype=np.uint8))
  params = jax.jit(lambda: model.init(jax.random.key(0), images[:1])["params"])()
  forward = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
  clocks, outputs = {}, {}
  for name, options in variants.items():
    try:
      compiled = jax.jit(forward, compiler_options=options).lower(params, images).compile()
    except Exception as e:  # an option unknown to this jaxlib, or a value it refuses
      print(f"{name}: not compiled ({str(e).splitlines()[0]})")
      continue
    outputs[name] = [np.asarray(compiled(params, images))]

    def clock(compiled: Any = compiled) -> float:
      start = time.perf_counter()
      jax.block_until_ready(compiled(params, images))
      return time.perf_counter() - start

    clocks[name] = clock
  return clocks, outputs


def _compiled_steps(args: argparse.Namespace, variants: dict[str, dict[str, Any]], mode: str):
  """(name, setup, compiled step, its arguments) of each variant: the benchmark's step of `mode`,
  compiled with the variant's options added to those `cpu_matmul` gives it."""
  from vit_jax.benchmark import measure
  from vit_jax.train import cpu_matmul

  attribute = "compiler_options" if mode == "train" else "inference_options"
  own = getattr(cpu_matmul, attribute)
  for name, options in variants.items():
    setattr(cpu_matmul, attribute, lambda *a, extra=options: {**(own(*a) or {}), **extra})
    setup = measure.Setup(model=args.model, mode=mode, batch=args.batch)
    try:
      compiled, step_args, _ = measure.compile_step(setup)
    except Exception as e:  # an option unknown to this jaxlib, or a value it refuses
      print(f"{name}: not compiled ({str(e).splitlines()[0]})")
      continue
    finally:
      setattr(cpu_matmul, attribute, own)
    yield name, setup, compiled, step_args


def _train_clocks(args: argparse.Namespace, variants: dict[str, dict[str, Any]]) -> tuple:
  import jax
  import numpy as np

  from vit_jax.benchmark import measure

  clocks, outputs = {}, {}
  for name, setup, compiled, step_args in _compiled_steps(args, variants, "train"):
    state, _ = compiled(*step_args)  # the first step's state is donated to the clock
    outputs[name] = [np.asarray(a) for a in jax.tree.leaves((state.params, state.opt_state))]
    clocks[name] = measure.step_clock(setup, compiled, (state, step_args[1]))
  return clocks, outputs


def _infer_step_clocks(args: argparse.Namespace, variants: dict[str, dict[str, Any]]) -> tuple:
  """The benchmark's own inference step (one host device per core, chunks)."""
  import numpy as np

  from vit_jax.benchmark import measure

  clocks, outputs = {}, {}
  for name, setup, compiled, step_args in _compiled_steps(args, variants, "infer"):
    outputs[name] = [np.asarray(compiled(*step_args))]
    clocks[name] = measure.step_clock(setup, compiled, step_args)
  return clocks, outputs


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="ViT-Ti/16")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--mode", default="infer", choices=["infer", "infer_step", "train"])
  p.add_argument("--options", nargs="*", default=[])
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--steps", type=int, default=10)
  args = p.parse_args()
  if args.mode == "infer_step":  # before the first computation starts a backend
    from vit_jax.evaluate import cpu_devices

    cpu_devices.configure(cpu_devices.plan(0, args.batch, inference=True))
  else:
    host_memory.configure("retain")
  variants = {"defaults": {}, **{text: parse_options(text) for text in args.options}}
  clock_fns = {"train": _train_clocks, "infer": _infer_clocks, "infer_step": _infer_step_clocks}
  clocks, outputs = clock_fns[args.mode](args, variants)
  report(clocks, outputs, "defaults", warmup=1, steps=args.steps, rounds=args.rounds)


def report(clocks: dict[str, Any], outputs: dict[str, list[Any]], reference: str, *, warmup: int,
           steps: int, rounds: int) -> None:
  """Prints each variant's largest difference from `reference`'s outputs (relative to each
  array's largest value), then times the variants alternately and prints their median and best."""
  import numpy as np

  from vit_jax.benchmark import measure

  for name, arrays in outputs.items():
    difference = max(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
                     for a, b in zip(arrays, outputs[reference], strict=True) if b.size)
    print(f"{name}: largest difference from {reference} {difference:.1e}")
  times = measure.interleave(clocks, warmup=warmup, steps=steps, rounds=rounds)
  for name, t in times.items():
    print(f"{name}: median {statistics.median(t) * 1e3:7.1f} ms, best {min(t) * 1e3:7.1f} ms "
          f"over {len(t)} steps")


if __name__ == "__main__":
  main()
