"""One encoder block, forward and backward, whole and in its two halves, against timm's block.

    python experiments/scale/block_parts.py [--batch 8] [--width 192] [--heads 3] [--mlp 768]

Times jitted gradients (parameters and input) of sum(f(x) * x) for: our `EncoderBlock`, its
attention half (x + attention(LN(x))), its MLP half (x + MLP(LN(x))) and the two halves
composed; and, where torch and timm are installed, timm's `Block` of the same sizes and its two
halves (x + attn(norm1(x)), x + mlp(norm2(x))). Median of `--steps` calls, milliseconds.
Setting XLA_FLAGS before running compares XLA:CPU options.
Freed host memory stays mapped as in training runs (`--host_memory`, vit_jax/train/host_memory.py);
`--host_memory release` measures with the C library's defaults.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import attention
from vit_jax.models.mlp import MlpBlock
from vit_jax.models.vit import EncoderBlock
from vit_jax.train import host_memory


class AttentionHalf(nn.Module):
  """x + attention(LN(x)), as in the block."""

  heads: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return x + attention.SelfAttention(num_heads=self.heads)(nn.LayerNorm(epsilon=1e-6)(x))


class MlpHalf(nn.Module):
  """x + MLP(LN(x)), as in the block."""

  mlp: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return x + MlpBlock(self.mlp)(nn.LayerNorm(epsilon=1e-6)(x), train=train)


class Halves(nn.Module):
  """The two halves, one after the other: the block's function."""

  heads: int
  mlp: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return MlpHalf(self.mlp)(AttentionHalf(self.heads)(x))


def median_ms(fn: Callable[[], Any], steps: int) -> float:
  fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3


def ours(module: nn.Module, x: jax.Array, steps: int) -> float:
  params = module.init(jax.random.key(0), x, train=False)
  grad = jax.jit(jax.grad(lambda p, x: jnp.sum(module.apply(p, x, train=False) * x),
                          argnums=(0, 1)))
  return median_ms(lambda: jax.block_until_ready(grad(params, x)), steps)


def timms(x: np.ndarray, heads: int, mlp: int, steps: int) -> dict[str, float] | None:
  """timm's `Block` of the same sizes, and its two halves, as `ours` times ours."""
  try:
    import torch
    from timm.models.vision_transformer import Block
  except Exception:  # noqa: BLE001 - torch/timm are optional
    return None
  block = Block(x.shape[-1], heads, mlp_ratio=mlp / x.shape[-1], qkv_bias=True)
  inputs = torch.from_numpy(x).requires_grad_(True)
  parts = {
      "timm Block": block,
      "timm attention half": lambda v: v + block.attn(block.norm1(v)),
      "timm MLP half": lambda v: v + block.mlp(block.norm2(v)),
  }

  def step(f: Callable[[Any], Any]) -> None:
    block.zero_grad(set_to_none=True)
    (f(inputs) * inputs).sum().backward()

  return {name: median_ms(lambda f=f: step(f), steps) for name, f in parts.items()}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--tokens", type=int, default=197)
  p.add_argument("--width", type=int, default=192)
  p.add_argument("--heads", type=int, default=3)
  p.add_argument("--mlp", type=int, default=768)
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--host_memory", default="auto", choices=host_memory.MODES)
  args = p.parse_args()
  host_memory.configure(args.host_memory)  # before the first computation starts a backend
  host = np.random.default_rng(0).normal(size=(args.batch, args.tokens, args.width))
  host = host.astype(np.float32)
  x = jnp.asarray(host)
  parts = {
      "block": EncoderBlock(num_heads=args.heads, mlp_dim=args.mlp, attention="auto"),
      "attention half": AttentionHalf(args.heads),
      "MLP half": MlpHalf(args.mlp),
      "halves composed": Halves(args.heads, args.mlp),
  }
  for name, module in parts.items():
    print(f"{name:20s} forward+backward {ours(module, x, args.steps):7.2f} ms")
  theirs = timms(host, args.heads, args.mlp, args.steps)
  if theirs is None:
    print("timm: torch/timm not installed")
  for name, ms in (theirs or {}).items():
    print(f"{name:20s} forward+backward {ms:7.2f} ms")


if __name__ == "__main__":
  main()
