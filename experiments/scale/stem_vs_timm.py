"""The hybrid's ResNet stem alone: our gradient step against timm's backbone, and each conv's rate.

    python experiments/scale/stem_vs_timm.py --batch 8 --rounds 4 --steps 3
    python experiments/scale/stem_vs_timm.py --convs

The default times the forward pass and the parameters' gradients of the R50+ViT-B/16 stem
(`vit_jax.models.resnet.stem`, layers 3, 4, 9) against the same for timm's
`vit_base_r50_s16_224` backbone (needs torch and timm), in turns as the benchmark does
(`measure.interleave`), both summing the (batch, 14, 14, 1024) output against a fixed random
cotangent. `--convs` times, for each distinct k x k convolution of the stem at `--batch`, its
forward pass, input gradient and weight gradient alone (jitted, medians of `--steps` calls, at
least 10), with GFLOP/s, and PyTorch's where it is installed. Freed host memory stays mapped,
and ours are compiled with the options of the hybrid's training step (`cpu_matmul` auto: on an
Intel CPU, convolutions in XLA's own kernels), as in the benchmark; `--ynn_convolutions`
compiles them with XLA's defaults instead, which give lone convolutions to YNNPACK.
"""

from __future__ import annotations

import argparse
import statistics
import time

from vit_jax.train import host_memory

# (input size, input channels, output channels, kernel size, stride) of each distinct
# convolution of the R50 stem at 224 px; the 1x1 convolutions are 2-D products.
CONVS = ((224, 3, 64, 7, 2), (56, 64, 64, 3, 1), (56, 128, 128, 3, 2), (28, 128, 128, 3, 1),
         (28, 256, 256, 3, 2), (14, 256, 256, 3, 1))


def _clock(fn, *args):
  import jax

  def clock() -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))  # None for PyTorch's functions, which return when done
    return time.perf_counter() - start

  return clock


def _options(ynn_convolutions: bool) -> dict | None:
  """The hybrid's training-step compiler options, or XLA's defaults (None)."""
  import jax

  from vit_jax.train import cpu_matmul

  if ynn_convolutions:
    return None
  return cpu_matmul.compiler_options("auto", jax.default_backend(), "ResNet+ViT", 768)


def conv_rates(batch: int, steps: int, options: dict | None) -> None:
  """Print each convolution's forward, input-gradient and weight-gradient time and rate."""
  import jax
  import numpy as np

  rng = np.random.default_rng(0)
  torch_rates = _torch_conv_rates()
  print("size  in  out  k  s | forward | input gradient | weight gradient   (ms, GFLOP/s)")
  for size, cin, cout, k, s in CONVS:
    x = jax.numpy.asarray(rng.normal(size=(batch, size, size, cin)).astype(np.float32))
    w = jax.numpy.asarray(rng.normal(size=(k, k, cin, cout)).astype(np.float32))
    out = -(-size // s)
    g = jax.numpy.asarray(rng.normal(size=(batch, out, out, cout)).astype(np.float32))

    def conv(x_, w_, s=s):
      return jax.lax.conv_general_dilated(x_, w_, (s, s), "SAME",
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))

    fns = (lambda x, w, g: conv(x, w),
           lambda x, w, g: jax.vjp(lambda x_: conv(x_, w), x)[1](g)[0],
           lambda x, w, g: jax.vjp(lambda w_: conv(x, w_), w)[1](g)[0])
    flops = 2 * batch * out * out * k * k * cin * cout
    cells = []
    for fn in fns:
      compiled = jax.jit(fn).lower(x, w, g).compile(options)
      clock = _clock(compiled, x, w, g)
      for _ in range(3):
        clock()
      ms = 1e3 * statistics.median(clock() for _ in range(steps))
      cells.append(f"{ms:6.1f} {flops / ms / 1e6:6.1f}")
    print(f"{size:4d} {cin:3d} {cout:4d} {k:2d} {s:2d} | " + " | ".join(cells))
    if torch_rates is not None:
      ms = torch_rates(np.asarray(x), np.asarray(w), np.asarray(g), s, steps)
      print("   PyTorch        | " + " | ".join(f"{t:6.1f} {flops / t / 1e6:6.1f}" for t in ms))


def _torch_conv_rates():
  """A function timing PyTorch's forward pass, input and weight gradient of one convolution
  (each alone, on the input padded as timm's StdConv2dSame pads it), or None without torch."""
  try:
    import torch
    import torch.nn.grad
  except ImportError:
    return None

  def rates(x, w, g, s: int, steps: int) -> list[float]:
    k, size = w.shape[0], x.shape[1]
    total = max((-(-size // s) - 1) * s + k - size, 0)
    pads = (total // 2, total - total // 2) * 2
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    tw = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
    tg = torch.from_numpy(g.transpose(0, 3, 1, 2).copy())
    padded = torch.nn.functional.pad(tx, pads)

    def forward() -> None:
      torch.nn.functional.conv2d(padded, tw, stride=s)

    def input_gradient() -> None:
      torch.nn.grad.conv2d_input(padded.shape, tw, tg, stride=s)

    def weight_gradient() -> None:
      torch.nn.grad.conv2d_weight(padded, tw.shape, tg, stride=s)

    out = []
    for fn in (forward, input_gradient, weight_gradient):
      clock = _clock(fn)
      for _ in range(3):
        clock()
      out.append(1e3 * statistics.median(clock() for _ in range(steps)))
    return out

  return rates


def stem_step(batch: int, rounds: int, steps: int, options: dict | None) -> None:
  """Print the median forward-and-gradient time of our stem and of timm's backbone."""
  import flax.linen as nn
  import jax
  import numpy as np

  from vit_jax.benchmark import measure, timm_side
  from vit_jax.models import resnet

  class Stem(nn.Module):
    @nn.compact
    def __call__(self, x):
      return resnet.stem(x, (3, 4, 9), 64)

  rng = np.random.default_rng(0)
  images = rng.normal(size=(batch, 224, 224, 3)).astype(np.float32)
  cotangent = rng.normal(size=(batch, 14, 14, 1024)).astype(np.float32)
  model = Stem()
  x, ct = jax.numpy.asarray(images), jax.numpy.asarray(cotangent)
  params = model.init(jax.random.key(0), x[:1])["params"]
  grads = jax.jit(jax.grad(lambda p, x, ct: jax.numpy.sum(model.apply({"params": p}, x) * ct)))
  clocks = {"ours": _clock(grads.lower(params, x, ct).compile(options), params, x, ct)}
  reason = timm_side.unavailable_reason("R50+ViT-B/16")
  if reason:
    print(f"timm: not timed ({reason})")
  else:
    import timm
    import torch

    backbone = timm.create_model(timm_side.TIMM_NAMES["R50+ViT-B/16"],
                                 pretrained=False).patch_embed.backbone
    t_images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    t_cotangent = torch.from_numpy(cotangent.transpose(0, 3, 1, 2).copy())

    def timm_grads() -> None:
      backbone.zero_grad(set_to_none=True)
      (backbone(t_images) * t_cotangent).sum().backward()

    clocks["timm"] = _clock(timm_grads)
  times = measure.interleave(clocks, warmup=2, steps=steps, rounds=rounds)
  medians = {name: 1e3 * statistics.median(t) for name, t in times.items()}
  for name, ms in medians.items():
    print(f"{name}: median {ms:.1f} ms over {len(times[name])} steps")
  if "timm" in medians:
    print(f"ratio (timm / ours): {medians['timm'] / medians['ours']:.2f}")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--convs", action="store_true",
                 help="time each convolution's forward pass and gradients alone instead")
  p.add_argument("--ynn_convolutions", action="store_true",
                 help="compile ours with XLA's defaults (lone convolutions in YNNPACK)")
  args = p.parse_args()
  host_memory.configure("retain")  # before any backend starts
  if args.convs:
    conv_rates(args.batch, max(args.steps, 10), _options(args.ynn_convolutions))
  else:
    stem_step(args.batch, args.rounds, args.steps, _options(args.ynn_convolutions))


if __name__ == "__main__":
  main()
