"""Where XLA:CPU's threads spend a training step, by library, from `perf` samples.

    python experiments/scale/arenas.py --arenas 0 --sync --model ViT-Ti/16 --batch 32 \
        --steps 40 &                                   # wait for its warm-up, then:
    perf record -F 499 -g -p PID -o perf.data -- sleep 20
    perf script -i perf.data | python experiments/scale/perf_libraries.py -

`profile_step.py` sees kernels through JAX's trace, where an Eigen product is only its launch.
Sampling the threads instead splits their time by the code they run: YNNPACK's product kernels
(called by XLA directly, or as the inner kernel of an Eigen contraction), Eigen's packing of a
product's operands, code generated at run time and reached without frame pointers (in jaxlib
0.10 Eigen's contractions call oneDNN's `dnnl_sgemm`, whose JIT kernels these are), XLA's own
generated kernels (reached from its kernel launcher), YNNPACK's other kernels, and the rest.
Only the samples of XLA's and Python's threads count.
"""

from __future__ import annotations

import argparse
import collections
import sys


def category(frames: list[str]) -> str:
  """The library of one sample's innermost frame, `frames` innermost first."""
  top, callers = frames[0], " ".join(frames[1:])
  if "[unknown]" in top or "/tmp/perf-" in top:
    if "Kernel::Launch" in callers or "KernelThunk" in callers or "Parallelize" in callers:
      return "XLA's generated kernels"
    return "JIT code without frames (oneDNN's sgemm under Eigen, jaxlib 0.10)"
  if "gemm_pack" in top:
    return "Eigen's packing for products"
  if "ynn::dot" in top:
    return ("YNNPACK's product kernel inside Eigen's contraction" if "TensorContraction" in callers
            else "YNNPACK's product kernels")
  if "ynn::" in top:
    return "YNNPACK's other kernels"
  if "libc.so" in top:
    return "glibc (malloc, free, memcpy)"
  return "the rest"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("perf_script", help="the output of `perf script` with call chains (-g), a file "
                 "or - for standard input")
  args = p.parse_args()
  counts: collections.Counter[str] = collections.Counter()
  if args.perf_script == "-":
    samples = sys.stdin.read().split("\n\n")
  else:
    with open(args.perf_script) as f:
      samples = f.read().split("\n\n")
  for sample in samples:
    lines = [line.strip() for line in sample.strip().splitlines()]
    if len(lines) < 2 or not lines[0].startswith(("tf_XLA", "python")):
      continue
    counts[category(lines[1:])] += 1
  total = sum(counts.values())
  print(f"{total} samples of XLA's and Python's threads")
  for name, n in counts.most_common():
    print(f"{100 * n / total:6.1f}%  {name}")


if __name__ == "__main__":
  main()
