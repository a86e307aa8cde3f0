"""Where timm's time goes in the benchmark's step, from PyTorch's profiler (needs torch and timm).

    python experiments/scale/profile_timm.py --model ViT-Ti/16 --batch 8 --mode train

The step is vit_jax.benchmark's timm step (AdamW with clipping, or a forward pass), with
PyTorch's default thread count, as the benchmark times it. Prints the median step, then the
operators' own time per step, largest first, with GFLOP/s for the matrix products of a ViT
(forward `addmm`: the linear layers' products; backward `mm`: twice that). The counterpart
of profile_step.py for our step.
"""

from __future__ import annotations

import time

import profile_step  # the script beside this one: the arguments both take

from vit_jax.benchmark import timm_side
from vit_jax.models import registry


def linear_flops(model: str, batch: int, image_size: int) -> float | None:
  """Forward FLOPs of a plain ViT's linear layers for `batch` images (None for other families)."""
  if registry.family_of(model).name != "ViT":
    return None
  section = registry.section(model)
  tokens = (image_size // section["patch_size"]) ** 2 + 1
  width, mlp = section["hidden_size"], section["mlp_dim"]
  per_token = 2 * (4 * width * width + 2 * width * mlp)  # q, k, v, out; the MLP's two layers
  return float(batch * tokens * per_token * section["num_layers"])


def main() -> None:
  args = profile_step.parser(__doc__, 15).parse_args()
  problem = timm_side.unavailable_reason(args.model)
  if problem:
    raise SystemExit(f"error: {problem}")
  import torch
  from torch.profiler import ProfilerActivity, profile

  step = timm_side.make_step(args.model, mode=args.mode, batch=args.batch,
                             image_size=args.image_size, num_classes=1000, dtype="float32")
  for _ in range(3):
    step()
  times = []
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(args.steps):
      begin = time.perf_counter()
      step()
      times.append(time.perf_counter() - begin)
  print(f"timm {args.model} {args.mode} batch {args.batch}, {torch.get_num_threads()} threads: "
        f"median profiled step {sorted(times)[len(times) // 2] * 1e3:.1f} ms")
  rows = sorted(prof.key_averages(), key=lambda r: r.self_cpu_time_total, reverse=True)
  flops = linear_flops(args.model, args.batch, args.image_size)
  for row in rows[:args.top]:
    ms = row.self_cpu_time_total / args.steps / 1e3
    rate = ""
    if flops and row.key in ("aten::addmm", "aten::mm"):
      done = flops * (1 if row.key == "aten::addmm" else 2)
      rate = f"  {done / ms / 1e6:6.1f} GFLOP/s"
    print(f"  {ms:8.2f} ms  x{row.count / args.steps:6.1f}  {row.key[:60]}{rate}")


if __name__ == "__main__":
  main()
