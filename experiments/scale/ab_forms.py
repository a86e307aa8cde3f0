"""The training step with the ViT's dense products, its GELU or its LayerNorms computed in another
form, against the step as the model computes it, timed alternately in one process.

    python experiments/scale/ab_forms.py --model ViT-Ti/16 --batch 32 \
        --variants auto auto+T onednn onednn+T
    python experiments/scale/ab_forms.py --model ViT-S/16 --batch 32 --variants auto auto+N auto+G

A variant is a `cpu_matmul` mode, then `+` and the forms it changes, one letter each:
- `T`: each dense product's weight gradient. XLA differentiates `x @ w` into `x.T @ g`, a
  product contracting both operands' rows, which XLA:CPU's YNNPACK does not take (jax 0.10 and
  0.12.0.1): Eigen multiplies it, or oneDNN where `cpu_matmul` asks. `T` multiplies a transposed
  copy of the narrower operand in the forward form instead (`x^T @ g`, or `(g^T @ x)^T` with the
  result transposed back).
- `N`: each dense product's forward pass against a transposed copy of the weights (`x @ (w^T)^T`,
  contracting both operands' last dimension), so that the forward product and the input gradient
  `g @ w^T` take the same form, the one oneDNN multiplies fastest alone ("Which library multiplies
  in training" in docs/performance.md).
- `G`: the MLP's tanh GELU with a custom VJP that keeps only its input and recomputes the
  derivative in the backward pass, so that the forward pass is one elementwise kernel.
- `D`: the same GELU keeping its elementwise derivative from the forward pass instead, so that
  the backward pass is one multiply.
- `F`: every LayerNorm with flax's own gradient, the one JAX derives, instead of
  `vit_jax.models.layernorm`'s backward pass (the model before that module).

Every copy is kept by an `optimization_barrier`, so that XLA does not fold the transpose back
into the product. `T` and `N` patch every `nn.Dense` (the MLP's two layers and the head) and the
attention's q/k/v and output projections; `G` and `D` the MLP's GELU; `F` every LayerNorm. For
this measurement only: the model's code is patched while the variant is traced. Prints each
variant's largest difference from the first in the parameters and optimizer state after one step
(relative to each array's largest value), then its median and best step in ms. `--then_run S`
keeps stepping the last variant for S seconds afterwards, printing its pid first, for a sampling
profiler to attach to (`perf record -p PID`, then `perf_libraries.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from ab_options import report  # this folder is on the path when the script runs

from vit_jax.benchmark import measure
from vit_jax.models import attention, layernorm, mlp
from vit_jax.train import host_memory

FORMS = "TNGDF"
_LAST_DIMS = (((1,), (1,)), ((), ()))  # x @ y^T: contract both operands' last dimension


def _transposed(x: jax.Array) -> jax.Array:
  return jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


def dense_product(weight_transposed: bool, forward_transposed: bool) -> Callable:
  """x @ w for 2-D arrays, with a custom VJP in the forms the flags ask for (`T`, `N`)."""

  @jax.custom_vjp
  def product(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.dot(x, w)

  def forward(x: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    if forward_transposed:
      return jax.lax.dot_general(x, _transposed(w), _LAST_DIMS), (x, w)
    return jnp.dot(x, w), (x, w)

  def backward(residuals: tuple[jax.Array, jax.Array], g: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
    x, w = residuals
    if not weight_transposed:
      dw = jnp.dot(x.T, g)
    elif w.shape[0] <= w.shape[1]:  # copy the narrower of x and g
      dw = jnp.dot(_transposed(x), g)
    else:
      dw = _transposed(jax.lax.optimization_barrier(jnp.dot(_transposed(g), x)))
    return jax.lax.dot_general(g, w, _LAST_DIMS), dw

  product.defvjp(forward, backward)
  return product


_C, _A = math.sqrt(2 / math.pi), 0.044715  # the tanh GELU's constants


def _gelu_and_derivative(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  t = jnp.tanh(_C * (x + _A * x * x * x))
  derivative = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _C * (1 + 3 * _A * x * x)
  return 0.5 * x * (1 + t), derivative


def tanh_gelu(keep_derivative: bool) -> Callable:
  """The tanh GELU with a custom VJP keeping its derivative (`D`) or only its input (`G`)."""

  @jax.custom_vjp
  def gelu(x: jax.Array) -> jax.Array:
    return _gelu_and_derivative(x)[0]

  def forward(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    if keep_derivative:
      return _gelu_and_derivative(x)
    return gelu(x), x

  def backward(residual: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    derivative = residual if keep_derivative else _gelu_and_derivative(residual)[1]
    return (g * derivative,)

  gelu.defvjp(forward, backward)
  return gelu


class _Numpy:
  """jax.numpy with `dot` replaced, for the attention module's projections."""

  def __init__(self, product: Callable):
    self._product = product

  def __getattr__(self, name: str):
    return getattr(jnp, name)

  def dot(self, a: jax.Array, b: jax.Array) -> jax.Array:
    return self._product(a, b)


@contextlib.contextmanager
def patched(forms: str) -> Iterator[None]:
  """The ViT's dense products and GELU in `forms` (letters of FORMS) while tracing."""
  if set(forms) - set(FORMS) or ("G" in forms and "D" in forms):
    raise SystemExit(f"error: forms '{forms}': use letters of {FORMS}, at most one of G and D")
  # `mlp.nn` is flax.linen itself: every nn.Dense and nn.gelu traced meanwhile takes the patch.
  dense, gelu, numpy = mlp.nn.Dense, mlp.nn.gelu, attention.jnp
  custom_backward = layernorm.LayerNorm._custom_backward
  if "T" in forms or "N" in forms:
    product = dense_product("T" in forms, "N" in forms)

    def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
      (lc, rc), (lb, _) = dimension_numbers
      if lhs.ndim != 2 or rhs.ndim != 2 or tuple(lc) != (1,) or tuple(rc) != (0,) or lb:
        raise ValueError("only 2-D x @ w products are patched")
      return product(lhs, rhs)

    mlp.nn.Dense = functools.partial(dense, dot_general=dot_general)
    attention.jnp = _Numpy(product)
  if "G" in forms or "D" in forms:
    custom = tanh_gelu("D" in forms)

    def patched_gelu(x: jax.Array, approximate: bool = True) -> jax.Array:
      if not approximate:
        raise ValueError("only the tanh GELU is patched")
      return custom(x)

    mlp.nn.gelu = patched_gelu
  if "F" in forms:
    layernorm.LayerNorm._custom_backward = lambda self, x, mask: False
  try:
    yield
  finally:
    mlp.nn.Dense, mlp.nn.gelu, attention.jnp = dense, gelu, numpy
    layernorm.LayerNorm._custom_backward = custom_backward


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="ViT-Ti/16")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--variants", nargs="+", default=["auto", "auto+T"],
                 help="cpu_matmul mode, then +forms; a repeated variant is timed once")
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--then_run", type=float, default=0.0,
                 help="seconds of the last variant's steps after the timing, for a profiler")
  args = p.parse_args()
  host_memory.configure(measure.host_memory_mode("auto", "train"))
  clocks, outputs = {}, {}
  for name in dict.fromkeys(args.variants):
    mode, _, forms = name.partition("+")
    setup = measure.Setup(model=args.model, batch=args.batch, mode="train", cpu_matmul=mode)
    with patched(forms):
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
