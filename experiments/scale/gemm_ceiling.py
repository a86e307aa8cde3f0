"""How fast can this CPU multiply the matrices of a ViT-Ti/16 train step at batch 8?

Times single matrix products of the step's shapes and an MLP block's forward + backward pass,
in JAX (XLA:CPU) or in PyTorch, float32, and prints GFLOP/s. This is the ceiling a whole train
step can approach but not pass: the step also runs attention's small batched products,
softmax, layer norms, GELU and the optimizer.

  python experiments/scale/gemm_ceiling.py --framework jax
  python experiments/scale/gemm_ceiling.py --framework torch   # needs torch; 2 threads
"""

from __future__ import annotations

import argparse
import time

# ViT-Ti/16 at batch 8: 8 x 197 tokens, width 192, MLP 768.
TOKENS, WIDTH, MLP = 8 * 197, 192, 768
SHAPES = [(TOKENS, WIDTH, MLP), (TOKENS, MLP, WIDTH), (TOKENS, WIDTH, 3 * WIDTH)]


def _rate(fn, flops: float, repeats: int = 40, warmup: int = 5) -> float:
  """GFLOP/s of fn() (which must block until its result is ready), median of repeats."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return flops / sorted(times)[len(times) // 2] / 1e9


def run_jax() -> list[tuple[str, float]]:
  import jax
  import jax.numpy as jnp

  out = []
  matmul = jax.jit(lambda a, b: a @ b)
  for m, k, n in SHAPES:
    a, b = jnp.ones((m, k)), jnp.ones((k, n))
    out.append((f"matmul {m}x{k} @ {k}x{n}",
                _rate(lambda a=a, b=b: matmul(a, b).block_until_ready(), 2 * m * k * n)))

  def mlp_loss(w1, w2, x):
    return jnp.sum((jax.nn.gelu(x @ w1) @ w2) ** 2)

  grad = jax.jit(jax.grad(mlp_loss, argnums=(0, 1)))
  w1, w2, x = jnp.full((WIDTH, MLP), 0.01), jnp.full((MLP, WIDTH), 0.01), jnp.ones((TOKENS, WIDTH))
  mlp_flops = 3 * 2 * 2 * TOKENS * WIDTH * MLP
  out.append(("MLP block forward + backward",
              _rate(lambda: jax.block_until_ready(grad(w1, w2, x)), mlp_flops)))
  return out


def run_torch() -> list[tuple[str, float]]:
  import torch

  torch.set_num_threads(2)
  out = []
  for m, k, n in SHAPES:
    a, b = torch.ones(m, k), torch.ones(k, n)
    out.append((f"matmul {m}x{k} @ {k}x{n}", _rate(lambda a=a, b=b: a @ b, 2 * m * k * n)))
  w1 = torch.full((WIDTH, MLP), 0.01, requires_grad=True)
  w2 = torch.full((MLP, WIDTH), 0.01, requires_grad=True)
  x = torch.ones(TOKENS, WIDTH)

  def step():
    w1.grad = w2.grad = None
    (torch.nn.functional.gelu(x @ w1, approximate="tanh") @ w2).pow(2).sum().backward()

  out.append(("MLP block forward + backward", _rate(step, 3 * 2 * 2 * TOKENS * WIDTH * MLP)))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--framework", choices=("jax", "torch"), default="jax")
  args = parser.parse_args()
  rows = run_jax() if args.framework == "jax" else run_torch()
  for name, rate in rows:
    print(f"{args.framework:5s} {name:32s} {rate:7.1f} GFLOP/s")


if __name__ == "__main__":
  main()
