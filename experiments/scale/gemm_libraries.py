"""GFLOP/s of one matrix product in each library XLA:CPU can hand it to, and in PyTorch.

    python experiments/scale/gemm_libraries.py [--threads 1|2] [--torch] [--shape 1576x192x768]
    python experiments/scale/gemm_libraries.py --weight_gradients   # oneDNN by output width

XLA:CPU picks the library by compiler options, given here per compilation: YNNPACK (XLA's
defaults: `xla_cpu_experimental_ynn_fusion_type` = INDIVIDUAL_DOT and REDUCE), Eigen (the
fusion types without INDIVIDUAL_DOT, so YNNPACK takes no lone product), oneDNN (the same, plus
`xla_cpu_experimental_onednn_custom_call`, jax 0.12 only; it rewrites the products XLA's own
fused kernels do not take) and oneDNN's fusions (`xla_cpu_use_onednn` with oneDNN's fusion
type `LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT`, jax 0.10 and 0.12: every lone product). Each shape
(rows x inner x columns, a ViT's or a Mixer's dense layers over one training part; `--shape`
for another) runs in the three forms of a dense layer's step: forward `x @ w`, input gradient
`g @ w.T` (w stored as in the forward) and weight gradient `x.T @ g`. `--threads 1` pins the
process to one core first. Median of `--repeats` calls after 3 untimed ones; the records name
the library that actually ran.
"""

from __future__ import annotations

import argparse
import os

# The same timing as the ceiling's (this folder is on the path when the script runs).
from gemm_ceiling import _rate

SHAPES = [(784, 768, 3072), (784, 3072, 768), (784, 384, 1536), (788, 1536, 384),
          (788, 384, 1152)]
FORMS = {"forward": "x @ w", "input gradient": "g @ w.T", "weight gradient": "x.T @ g"}
_TYPES = "xla_cpu_experimental_ynn_fusion_type"
LIBRARIES = {
    "YNNPACK": None,
    "Eigen": {_TYPES: "LIBRARY_FUSION_TYPE_REDUCE"},
    "oneDNN": {_TYPES: "LIBRARY_FUSION_TYPE_REDUCE",
               "xla_cpu_experimental_onednn_custom_call": True},
    "oneDNN fusion": {_TYPES: "LIBRARY_FUSION_TYPE_REDUCE", "xla_cpu_use_onednn": True,
                      "xla_cpu_experimental_onednn_fusion_type":
                          "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},
}


def _operands(m: int, k: int, n: int, form: str):
  """(lhs, rhs) shapes of `form` for an (m x k) input and a (k x n) weight."""
  return {"forward": ((m, k), (k, n)), "input gradient": ((m, n), (k, n)),
          "weight gradient": ((m, k), (m, n))}[form]


def _product(form: str):
  return {"forward": lambda a, b: a @ b, "input gradient": lambda a, b: a @ b.T,
          "weight gradient": lambda a, b: a.T @ b}[form]


def _library_ran(text: str) -> str:
  if "__onednn$matmul" in text:
    return "oneDNN"
  if "__onednn_fusion" in text:
    return "oneDNN fusion"
  return "YNNPACK" if "ynn_fusion" in text else "Eigen"


def jax_rates(shapes, forms, libraries, repeats: int) -> list[tuple[str, str, str, str, float]]:
  """(shape, form, library asked for, library that ran, GFLOP/s) for every combination."""
  import jax
  import numpy as np

  rng = np.random.default_rng(0)
  rows = []
  for m, k, n in shapes:
    for form in forms:
      lhs, rhs = (jax.numpy.asarray(rng.normal(size=s), jax.numpy.float32)
                  for s in _operands(m, k, n, form))
      lowered = jax.jit(_product(form)).lower(lhs, rhs)
      for library in libraries:
        try:
          compiled = lowered.compile(LIBRARIES[library])
        except Exception as e:  # an option this jaxlib does not know
          print(f"{library}: not compiled ({str(e).splitlines()[0][:100]})")
          continue
        rate = _rate(lambda c=compiled, a=lhs, b=rhs: c(a, b).block_until_ready(),
                     2 * m * k * n, repeats, warmup=3)
        rows.append((f"{m}x{k}x{n}", form, library, _library_ran(compiled.as_text()), rate))
  return rows


def torch_rates(shapes, forms, threads: int, repeats: int) -> list[tuple[str, str, float]]:
  """(shape, form, GFLOP/s) of PyTorch's products at `threads` threads."""
  import torch

  torch.set_num_threads(threads)
  rows = []
  for m, k, n in shapes:
    for form in forms:
      lhs, rhs = (torch.randn(*s) for s in _operands(m, k, n, form))
      product = _product(form)
      rows.append((f"{m}x{k}x{n}", form,
                   _rate(lambda a=lhs, b=rhs, f=product: f(a, b), 2 * m * k * n, repeats,
                         warmup=3)))
  return rows


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--threads", type=int, default=0, help="1: pin to one core; 0: as started")
  p.add_argument("--repeats", type=int, default=30)
  p.add_argument("--torch", action="store_true", help="also PyTorch's products (needs torch)")
  p.add_argument("--shape", default=None,
                 help="one shape, rows x inner x columns (e.g. 1576x192x768), instead of the list")
  p.add_argument("--weight_gradients", action="store_true",
                 help="only weight gradients over 784 rows of 768 inputs, by output width, in "
                      "Eigen and oneDNN")
  args = p.parse_args()
  if args.threads == 1:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # before XLA starts its threads
  shapes = [tuple(int(d) for d in args.shape.split("x"))] if args.shape else SHAPES
  if args.weight_gradients:
    shapes = [(784, 768, n) for n in (1536, 2048, 2304, 2560, 2816, 3072, 3328, 3584, 4096)]
    rows = jax_rates(shapes, ["weight gradient"], ["Eigen", "oneDNN"], args.repeats)
  else:
    rows = jax_rates(shapes, FORMS, LIBRARIES, args.repeats)
  for shape, form, asked, ran, rate in rows:
    print(f"jax    {shape:14s} {form:16s} {asked:13s} (ran {ran:13s}) {rate:7.1f} GFLOP/s")
  if args.torch and not args.weight_gradients:
    threads = args.threads or len(os.sched_getaffinity(0))
    for shape, form, rate in torch_rates(shapes, FORMS, threads, args.repeats):
      print(f"torch  {shape:14s} {form:16s} {threads} threads          {rate:7.1f} GFLOP/s")


if __name__ == "__main__":
  main()
