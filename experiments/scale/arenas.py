"""One benchmark step timed under a given glibc malloc setting, for comparisons across processes.

    for a in "1" "0 --sync" "1" "0 --sync"; do python experiments/scale/arenas.py --arenas $a; done

`--arenas N` keeps freed memory mapped as `host_memory` `retain` does (no trimming, no mmap)
with at most N malloc arenas; `--arenas 0` keeps glibc's arena limit; `--arenas -1` changes
nothing (`release`). `--sync` runs each step on the calling thread (JAX's CPU async dispatch
off), as `retain` does on one CPU device. mallopt applies to the whole process, so each setting
needs its own process: alternate them, several times, on an otherwise idle machine. The minor
page faults a timed step costs tell whether the step's temporary buffer stayed mapped.
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import statistics

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's malloc.h


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--arenas", type=int, default=1)
  p.add_argument("--sync", action="store_true",
                 help="run each step on the calling thread (jax_cpu_enable_async_dispatch off)")
  p.add_argument("--mode", default="train", choices=["train", "infer"])
  p.add_argument("--model", default="ViT-Ti/16")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--steps", type=int, default=12)
  args = p.parse_args()
  mallopt = ctypes.CDLL(None).mallopt
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  settings = [] if args.arenas < 0 else [(_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)]
  settings += [(_M_ARENA_MAX, args.arenas)] if args.arenas > 0 else []
  if not all(mallopt(param, value) == 1 for param, value in settings):
    raise SystemExit("mallopt refused a setting (not glibc?)")
  import jax

  jax.config.update("jax_cpu_enable_async_dispatch", not args.sync)
  from vit_jax.benchmark import measure

  setup = measure.Setup(model=args.model, mode=args.mode, batch=args.batch)
  compiled, step_args, _ = measure.compile_step(setup)
  clock = measure.step_clock(setup, compiled, step_args)
  for _ in range(args.warmup):
    clock()
  usage = resource.getrusage(resource.RUSAGE_SELF)
  times = [clock() for _ in range(args.steps)]
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - usage.ru_minflt) / args.steps
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  print(f"arenas {args.arenas}{' sync' if args.sync else ''}: {args.model} {args.mode} batch "
        f"{args.batch}: median {statistics.median(times) * 1e3:.1f} ms, best "
        f"{min(times) * 1e3:.1f} ms, {faults:.0f} minor faults a step, peak RSS {peak} KiB")


if __name__ == "__main__":
  main()
