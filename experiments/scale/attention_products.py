"""GFLOP/s of the attention's batched products, heads first, by the number of tokens.

    python experiments/scale/attention_products.py --images 8 --heads 3 --tokens 192 197 208 256

A ViT's attention multiplies (images, heads, tokens, 64) arrays in three forms, forward and
backward: `q.k` (both operands contracting their last axis: the logits, and the weights'
gradient dO.V), `P.v` (the weighted values, and the queries' gradient dL.k) and `P^T.dO`
(contracting the tokens of both: the values' gradient, and the keys' gradient dL^T.q), each
jitted alone in XLA:CPU's default library. The three take turns, one call each per round;
median of `--repeats` rounds after 3 untimed calls each.
Padding the tokens to a multiple of the kernels' tile would only pay if the rate rose by more
than the added work ((padded / tokens) squared). `--transposed` also times `P^T.dO` in the
forward form: from a transposed copy of `P`, and as `(dO^T P)^T` (copies kept by an
`optimization_barrier`, so that XLA does not fold the transposes back into the product).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FORMS = {
    "q.k": "bhqd,bhkd->bhqk",
    "P.v": "bhqk,bhkd->bhqd",
    "P^T.dO": "bhqk,bhqd->bhkd",
}


def _copy_t(x: jax.Array) -> jax.Array:
  return jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


TRANSPOSED = {
    "P^T.dO from a copy of P^T": lambda p, g: jnp.einsum("bhkq,bhqd->bhkd", _copy_t(p), g),
    "(dO^T P)^T": lambda p, g: jnp.swapaxes(
        jax.lax.optimization_barrier(jnp.einsum("bhdq,bhqk->bhdk", _copy_t(g), p)), -1, -2),
}


def median_ms(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
  """Each call's median time in ms, the calls taking turns."""
  for call in calls.values():
    for _ in range(3):
      call()
  times: dict[str, list[float]] = {name: [] for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      start = time.perf_counter()
      call()
      times[name].append(time.perf_counter() - start)
  return {name: sorted(t)[repeats // 2] * 1e3 for name, t in times.items()}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--images", type=int, default=8)
  p.add_argument("--heads", type=int, default=3)
  p.add_argument("--head_dim", type=int, default=64)
  p.add_argument("--tokens", type=int, nargs="+", default=[197])
  p.add_argument("--repeats", type=int, default=40)
  p.add_argument("--transposed", action="store_true",
                 help="also P^T.dO computed in the forward form, two ways")
  args = p.parse_args()
  rng = np.random.default_rng(0)
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}")
  for t in args.tokens:
    square = jnp.asarray(rng.standard_normal((args.images, args.heads, t, t)), jnp.float32)
    tall = jnp.asarray(rng.standard_normal((args.images, args.heads, t, args.head_dim)),
                       jnp.float32)
    flops = 2 * args.images * args.heads * t * t * args.head_dim
    calls = {}
    for name, subscripts in FORMS.items():
      f = jax.jit(lambda a, b, s=subscripts: jnp.einsum(s, a, b))
      a, b = (tall, tall) if name == "q.k" else (square, tall)
      calls[name] = lambda f=f, a=a, b=b: f(a, b).block_until_ready()
    for name, fn in TRANSPOSED.items() if args.transposed else ():
      f = jax.jit(fn)
      calls[name] = lambda f=f, a=square, b=tall: f(a, b).block_until_ready()
    cells = [f"{name} {ms:6.3f} ms {flops / ms / 1e6:6.1f} GFLOP/s"
             for name, ms in median_ms(calls, args.repeats).items()]
    print(f"tokens {t:4d}: " + "   ".join(cells), flush=True)


if __name__ == "__main__":
  main()
