"""Where the time of one benchmark step goes: XLA:CPU's kernels, grouped, from a profiler trace.

    python experiments/scale/profile_step.py --model ViT-Ti/16 --batch 8 --mode train

Compiles the benchmark's own step (vit_jax.benchmark.measure), runs it `--warmup` times, traces
`--steps` more with `jax.profiler`, and prints per step: the wall time, the summed kernel time
over all threads, and the kernels grouped by kind (matrix products, copies and transposes,
other fusions ...), largest first, with the top individual kernels. `--keep DIR` keeps the trace.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax

from vit_jax.benchmark import measure


def kind_of(name: str) -> str:
  """A coarse kind for a kernel's name in XLA:CPU's trace."""
  lowered = name.lower()
  for pattern, kind in ((r"ynn|xnn|dot|gemm|matmul|onednn", "matrix products"),
                        (r"convolution|conv", "convolutions"),
                        (r"copy|transpose", "copies and transposes"),
                        (r"reduce|reduction", "reductions"),
                        (r"fusion|loop|input", "other fusions")):
    if re.search(pattern, lowered):
      return kind
  return "other"


def kernel_events(trace_dir: str) -> list[dict]:
  """The complete ('X') events of the XLA:CPU kernels in the perfetto trace under `trace_dir`."""
  files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  if not files:
    raise SystemExit(f"error: no trace was written under {trace_dir}")
  with gzip.open(sorted(files)[-1], "rt") as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  names = {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "thread_name":
      names[(e["pid"], e["tid"])] = e["args"]["name"]
  out = []
  for e in events:
    if e.get("ph") != "X":
      continue
    thread = names.get((e["pid"], e["tid"]), "")
    # Python frames and the runtime's own markers are not kernels.
    if "python" in thread.lower() or e["name"].startswith(
        ("$", "end: ", "ThreadpoolListener", "Thunk", "PjRt", "Execute")):
      continue
    out.append(e)
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="ViT-Ti/16")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--mode", default="train", choices=["train", "infer"])
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--attention", default="auto")
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--top", type=int, default=25)
  p.add_argument("--keep", default=None, help="keep the trace in this folder")
  args = p.parse_args()
  setup = measure.Setup(model=args.model, batch=args.batch, mode=args.mode,
                        image_size=args.image_size, attention=args.attention)
  compiled, step_args, compile_s = measure.compile_step(setup)
  trace_dir = args.keep or tempfile.mkdtemp(prefix="profile_step_")
  times = []

  def call(a):
    begin = time.perf_counter()
    out = jax.block_until_ready(compiled(*a))
    times.append(time.perf_counter() - begin)
    return (out[0], a[1]) if args.mode == "train" else a  # a train step donates its state

  for _ in range(args.warmup):
    step_args = call(step_args)
  times.clear()
  start = time.perf_counter()
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(args.steps):
      step_args = call(step_args)
  wall = time.perf_counter() - start
  events = kernel_events(trace_dir)
  per_kind = collections.Counter()
  per_name = collections.Counter()
  count = collections.Counter()
  for e in events:
    per_kind[kind_of(e["name"])] += e["dur"]
    per_name[e["name"]] += e["dur"]
    count[e["name"]] += 1
  n = args.steps
  total = sum(per_kind.values()) / n / 1e3
  print(f"{args.model} {args.mode} batch {args.batch}: compile {compile_s:.1f} s, "
        f"median step {sorted(times)[len(times) // 2] * 1e3:.1f} ms "
        f"(traced {n} steps in {wall:.2f} s)")
  print(f"kernel time summed over threads: {total:.1f} ms per step, "
        f"{len(events) / n:.0f} kernels per step")
  for kind, us in per_kind.most_common():
    print(f"  {kind:24s} {us / n / 1e3:8.1f} ms")
  print(f"top {args.top} kernels (ms per step, calls per step):")
  for name, us in per_name.most_common(args.top):
    print(f"  {us / n / 1e3:8.2f} ms  x{count[name] / n:5.1f}  {name[:90]}")


if __name__ == "__main__":
  main()
