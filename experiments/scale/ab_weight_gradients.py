"""The training step with the dense layers' weight gradients taken from a materialised transpose,
against the step as the model computes it, timed alternately in one process.

    python experiments/scale/ab_weight_gradients.py --model ViT-Ti/16 --batch 32 \
        --variants auto auto+T onednn onednn+T

XLA differentiates `x @ w` into `x.T @ g` for the weight's gradient, a product contracting both
operands' rows, which XLA:CPU's YNNPACK does not take (jax 0.10 and 0.12.0.1): Eigen multiplies it,
or oneDNN where `cpu_matmul` asks. A variant ending in `+T` computes the step with a custom VJP
on the ViT's dense products (every `nn.Dense`: the MLP's two layers and the head; the
attention's q/k/v and output projections) whose weight gradient multiplies a transposed copy of
the narrower operand in the forward form (`x^T @ g`, or `(g^T @ x)^T` with the result transposed
back), each copy kept by an `optimization_barrier` so that XLA does not fold the transpose back
into the product. The part before `+` is the step's `cpu_matmul` mode. For this measurement
only: the model's code is patched while the variant is traced. Prints each variant's largest
difference from the first in the parameters and optimizer state after one step (relative to
each array's largest value), then its median and best step in ms. `--then_run S` keeps stepping
the last variant for S seconds afterwards, printing its pid first, for a sampling profiler to
attach to (`perf record -p PID`, then `perf_libraries.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from ab_options import report  # this folder is on the path when the script runs

from vit_jax.benchmark import measure
from vit_jax.models import attention, mlp
from vit_jax.train import host_memory


def _transposed(x: jax.Array) -> jax.Array:
  return jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


@jax.custom_vjp
def product(x: jax.Array, w: jax.Array) -> jax.Array:
  """x @ w for 2-D arrays, its weight gradient multiplied in the forward form."""
  return jnp.dot(x, w)


def _forward(x: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  return jnp.dot(x, w), (x, w)


def _backward(residuals: tuple[jax.Array, jax.Array], g: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
  x, w = residuals
  if w.shape[0] <= w.shape[1]:  # copy the narrower of x and g
    dw = jnp.dot(_transposed(x), g)
  else:
    dw = _transposed(jax.lax.optimization_barrier(jnp.dot(_transposed(g), x)))
  return jnp.dot(g, w.T), dw


product.defvjp(_forward, _backward)


def _dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  (lc, rc), (lb, _) = dimension_numbers
  if lhs.ndim != 2 or rhs.ndim != 2 or tuple(lc) != (1,) or tuple(rc) != (0,) or lb:
    raise ValueError("only 2-D x @ w products are patched")
  return product(lhs, rhs)


class _Numpy:
  """jax.numpy with `dot` replaced, for the attention module's projections."""

  def __getattr__(self, name: str):
    return getattr(jnp, name)

  @staticmethod
  def dot(a: jax.Array, b: jax.Array) -> jax.Array:
    return product(a, b)


@contextlib.contextmanager
def patched(on: bool) -> Iterator[None]:
  """The ViT's dense products with `product`'s backward while tracing, if `on`."""
  # `mlp.nn` is flax.linen itself: every nn.Dense traced meanwhile takes the patch.
  dense, numpy = mlp.nn.Dense, attention.jnp
  if on:
    mlp.nn.Dense = functools.partial(dense, dot_general=_dot_general)
    attention.jnp = _Numpy()
  try:
    yield
  finally:
    mlp.nn.Dense, attention.jnp = dense, numpy


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="ViT-Ti/16")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--variants", nargs="+", default=["auto", "auto+T"])
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--then_run", type=float, default=0.0,
                 help="seconds of the last variant's steps after the timing, for a profiler")
  args = p.parse_args()
  host_memory.configure(measure.host_memory_mode("auto", "train"))
  clocks, outputs = {}, {}
  for name in args.variants:
    mode, _, transposed = name.partition("+")
    setup = measure.Setup(model=args.model, batch=args.batch, mode="train", cpu_matmul=mode)
    with patched(transposed == "T"):
      compiled, step_args, seconds = measure.compile_step(setup)
    print(f"{name}: compiled in {seconds:.1f} s", flush=True)
    state, _ = compiled(*step_args)  # the first step's state is donated to the clock
    outputs[name] = [np.asarray(a) for a in jax.tree.leaves((state.params, state.opt_state))]
    clocks[name] = measure.step_clock(setup, compiled, (state, step_args[1]))
  report(clocks, outputs, args.variants[0], warmup=2, steps=args.steps, rounds=args.rounds)
  if args.then_run > 0:
    print(f"pid {os.getpid()}: {args.variants[-1]} for {args.then_run:.0f} s", flush=True)
    end = time.perf_counter() + args.then_run
    while time.perf_counter() < end:
      clocks[args.variants[-1]]()


if __name__ == "__main__":
  main()
