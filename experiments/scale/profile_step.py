"""Where the time of one benchmark step goes: XLA:CPU's kernels, grouped, from a profiler trace.

    python experiments/scale/profile_step.py --model ViT-Ti/16 --batch 8 --mode train [--detail]

Compiles the benchmark's own step (vit_jax.benchmark.measure), runs it `--warmup` times, traces
`--steps` more with `jax.profiler`, and prints per step:
- the wall time and the kernel time summed over threads;
- the kernels grouped by what the compiled HLO says they compute (a kernel that holds a dot or
  a convolution is a matrix product, even when YNNPACK fused a reduction into it; plain `dot`
  kernels run on Eigen, `onednn_fusion` ones in oneDNN, the others in YNNPACK), largest first,
  with the top kernels;
- how busy XLA's two worker threads were: each one's share of the steps' wall time, the share with
  both busy, and the time a thread spent waiting for the other to finish its part of a kernel.
  Kernels overlap, so summed kernel times are not additive; the idle shares are.
`--keep DIR` keeps the trace. `--detail` also prints the matrix products grouped by shape with
their rate (an Eigen product's trace event is only its launch, so its rate means nothing), and
the other kernels' time by the part of the step they come from (forward, backward, update) and
by the model module (block indices dropped) within it.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import math
import os
import re
import tempfile
import time

import jax

from vit_jax.benchmark import measure
from vit_jax.train import cpu_matmul, host_memory

# name, type (lazily past a tuple type's spaces), opcode, the rest of the line
_INSTRUCTION = re.compile(r"\s+(?:ROOT )?%([\w.\-]+) = (.+?) ([\w\-]+)\((.*)")
# XLA:CPU's call of oneDNN's matmul; the trace names it after the instruction plus this.
_ONEDNN = "__onednn$matmul"
_LAYOUT = {"transpose", "copy"}
# Trace events that mark the runtime's own work, not a kernel.
_MARKERS = ("$", "end: ", "ThreadpoolListener", "Thunk", "PjRt", "Execute", "SlinkyThreadPool")


def _computations(hlo_text: str) -> dict[str, list[tuple[str, str, str, str]]]:
  """Computation name -> its instructions as (name, type, opcode, the text after the opcode)."""
  computations: dict[str, list[tuple[str, str, str, str]]] = {}
  current = None
  for line in hlo_text.splitlines():
    if line and not line.startswith(" ") and line.endswith("{"):
      current = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
      computations[current] = []
      continue
    m = _INSTRUCTION.match(line)
    if m and current is not None:
      computations[current].append(m.groups())
  return computations


def _callee(rest: str) -> str | None:
  m = re.search(r"calls=%([\w.\-]+)", rest)
  return m.group(1) if m else None


def kinds_from_hlo(hlo_text: str) -> dict[str, str]:
  """Kernel name -> kind, from the compiled module's text (the names the trace uses)."""
  computations = _computations(hlo_text)
  ops_of = {name: {op for _, _, op, _ in instructions}
            for name, instructions in computations.items()}
  kinds = {}
  for instructions in computations.values():
    for name, _, op, rest in instructions:
      if _ONEDNN in rest:
        kinds[name + _ONEDNN] = "matrix products (oneDNN)"
      ops = ops_of.get(_callee(rest), set()) | {op}
      library = ("YNNPACK" if name.startswith("ynn") else
                 "XNNPACK" if name.startswith("xnn") else
                 "oneDNN" if name.startswith("onednn") else "")
      if ops & {"dot", "convolution"}:
        kinds[name] = f"matrix products ({library or 'Eigen'})"
      elif "reduce" in ops or "reduce-window" in ops:
        kinds[name] = "reductions"
      elif ops & _LAYOUT and not ops - _LAYOUT - {"bitcast", "parameter", "fusion"}:
        kinds[name] = "copies and transposes"
      else:
        kinds[name] = "elementwise and other fusions"
  return kinds


def _shape(text: str) -> list[int]:
  m = re.match(r"\(?\w+\[([\d,]*)\]", text)
  return [int(d) for d in m.group(1).split(",") if d] if m else []


def products_from_hlo(hlo_text: str) -> dict[str, tuple[str, float]]:
  """Kernel name -> (its products' operand and output shapes, their FLOPs), for every kernel
  of the compiled module that holds a dot."""
  computations = _computations(hlo_text)

  def dot(computation: str, output: str, rest: str) -> tuple[str, float]:
    types = {name: ty for name, ty, _, _ in computations[computation]}
    lhs, rhs = (_shape(types.get(n, "")) for n in re.findall(r"%([\w.\-]+)", rest)[:2])
    if _ONEDNN in rest:  # (batch..., M, N) from lhs (..., M, K), transposed where flagged
      flags = re.search(r'"transpose_a":(true|false),"transpose_b":(true|false)', rest)
      a_t, b_t = (flags.group(i) == "true" for i in (1, 2)) if flags else (False, False)
      contracting = str(len(lhs) - (2 if a_t else 1))
      rhs_contracting = str(len(rhs) - (1 if b_t else 2))
    else:
      contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest).group(1)
      rhs_contracting = re.search(r"rhs_contracting_dims=\{([\d,]*)\}", rest).group(1)
    out = _shape(output)
    depth = math.prod(lhs[int(d)] for d in contracting.split(","))
    return (f"{lhs} x {rhs}, contracting {contracting} and {rhs_contracting} -> {out}",
            2.0 * depth * math.prod(out))

  def dots(computation: str | None, depth: int = 0) -> list[tuple[str, float]]:
    found = []
    for _, ty, op, rest in computations.get(computation, []):
      if op == "dot":
        found.append(dot(computation, ty, rest))
      if _callee(rest) and depth < 4:
        found += dots(_callee(rest), depth + 1)
    return found

  kernels = {}
  for computation, instructions in computations.items():
    for name, ty, op, rest in instructions:
      if _ONEDNN in rest:
        found, name = [dot(computation, ty, rest)], name + _ONEDNN
      else:
        found = [dot(computation, ty, rest)] if op == "dot" else dots(_callee(rest))
      if found:
        kernels[name] = (" + ".join(label for label, _ in found), sum(f for _, f in found))
  return kernels


def origins_from_hlo(hlo_text: str) -> dict[str, str]:
  """Kernel name -> the part of the step its JAX operations come from: the forward pass, the
  backward pass, or the update (the optimizer, the parts' gradient sums), by `op_name`."""
  origins = {}
  for line in hlo_text.splitlines():
    m = re.match(r"\s+(?:ROOT )?%([\w.\-]+) = ", line)
    op_name = re.search(r'op_name="([^"]*)"', line)
    if m and op_name:
      name = op_name.group(1)
      origins[m.group(1)] = ("backward" if "transpose(jvp(" in name else
                             "forward" if "jvp(" in name else "update")
  return origins


def modules_from_hlo(hlo_text: str) -> dict[str, str]:
  """Kernel name -> the model module its JAX operations come from, by `op_name` with the block
  indices and the operation dropped ('Transformer/encoderblock/LayerNorm'), after its part of
  the step (as `origins_from_hlo`)."""
  origins, modules = origins_from_hlo(hlo_text), {}
  for line in hlo_text.splitlines():
    m = re.match(r"\s+(?:ROOT )?%([\w.\-]+) = ", line)
    op_name = re.search(r'op_name="([^"]*)"', line)
    if m and op_name:
      parts = [re.sub(r"_\d+$", "", part) for part in op_name.group(1).split("/")[1:-1]
               if not part.startswith(("jvp(", "transpose(", "jit("))]
      modules[m.group(1)] = f"{origins[m.group(1)]} {'/'.join(parts) or '(top level)'}"
  return modules


def load_trace(trace_dir: str) -> list[dict]:
  """The complete ('X') events of the perfetto trace under `trace_dir`, with their threads."""
  files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  if not files:
    raise SystemExit(f"error: no trace was written under {trace_dir}")
  with gzip.open(sorted(files)[-1], "rt") as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "thread_name"}
  return [dict(e, thread=names.get((e["pid"], e["tid"]), "")) for e in events
          if e.get("ph") == "X"]


def kernel_events(events: list[dict]) -> list[dict]:
  """The XLA:CPU kernels among `events` (not Python frames, not the runtime's markers)."""
  return [e for e in events
          if "python" not in e["thread"].lower() and not e["name"].startswith(_MARKERS)]


def _union(spans: list[tuple[float, float]]) -> list[list[float]]:
  merged: list[list[float]] = []
  for begin, end in sorted(spans):
    if merged and begin <= merged[-1][1]:
      merged[-1][1] = max(merged[-1][1], end)
    else:
      merged.append([begin, end])
  return merged


def _overlap(a: list[list[float]], b: list[list[float]]) -> float:
  total, i, j = 0.0, 0, 0
  while i < len(a) and j < len(b):
    total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
    if a[i][1] < b[j][1]:
      i += 1
    else:
      j += 1
  return total


def worker_use(events: list[dict]) -> dict[str, float] | None:
  """Busy time (us) of XLA's worker threads: each, both at once, and their waits.

  A thread is busy while it runs a kernel or a share of another thread's kernel (between the
  thread pool's StartRegion and StopRegion markers), less the time it waits in
  SlinkyThreadPool::Await for the other thread's share.
  """
  workers = sorted({e["thread"] for e in events if e["thread"].startswith("tf_XLAEigen")})
  if len(workers) != 2:
    return None  # the summary is written for the 2-thread pool of a 2-core machine
  busy, waits, opened = {}, {}, {}
  for thread in workers:
    spans, idle = [], []
    for e in sorted((e for e in events if e["thread"] == thread), key=lambda e: e["ts"]):
      if e["name"] == "ThreadpoolListener::StartRegion":
        opened[thread] = e["ts"]
      elif e["name"] == "ThreadpoolListener::StopRegion" and thread in opened:
        spans.append((opened.pop(thread), e["ts"]))
      elif e["name"] == "SlinkyThreadPool::Await":
        idle.append((e["ts"], e["ts"] + e["dur"]))
      elif not e["name"].startswith(_MARKERS):
        spans.append((e["ts"], e["ts"] + e["dur"]))
    merged, idle = _union(spans), _union(idle)
    busy[thread] = merged if not idle else _subtract(merged, idle)
    waits[thread] = sum(end - begin for begin, end in idle)
  first, second = (busy[t] for t in workers)
  return {"busy_a": sum(e - b for b, e in first), "busy_b": sum(e - b for b, e in second),
          "both": _overlap(first, second), "waits": sum(waits.values())}


def _subtract(spans: list[list[float]], holes: list[list[float]]) -> list[list[float]]:
  out = []
  for begin, end in spans:
    for hole_begin, hole_end in holes:
      if hole_end <= begin or hole_begin >= end:
        continue
      if hole_begin > begin:
        out.append([begin, hole_begin])
      begin = max(begin, hole_end)
    if end > begin:
      out.append([begin, end])
  return out


def parser(doc: str, top: int) -> argparse.ArgumentParser:
  """The arguments this script shares with profile_timm.py: which step, how many, top kernels."""
  p = argparse.ArgumentParser(description=doc,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="ViT-Ti/16")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--mode", default="train", choices=["train", "infer"])
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--top", type=int, default=top)
  return p


def main() -> None:
  p = parser(__doc__, 25)
  p.add_argument("--attention", default="auto")
  p.add_argument("--cpu_matmul", default="auto", choices=cpu_matmul.MODES,
                 help="as the benchmark's flag: which library multiplies (train/cpu_matmul.py)")
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--keep", default=None, help="keep the trace in this folder")
  p.add_argument("--detail", action="store_true",
                 help="also the matrix products by shape, with their GFLOP/s, and the other "
                      "kernels by the part of the step they come from")
  p.add_argument("--host_memory", default="auto", choices=host_memory.MODES,
                 help="as the benchmark's flag: auto retains freed host memory for --mode train")
  args = p.parse_args()
  # Before the step's compilation starts a backend.
  host_memory.configure(measure.host_memory_mode(args.host_memory, args.mode))
  setup = measure.Setup(model=args.model, batch=args.batch, mode=args.mode,
                        image_size=args.image_size, attention=args.attention,
                        cpu_matmul=args.cpu_matmul)
  compiled, step_args, compile_s = measure.compile_step(setup)
  kinds = kinds_from_hlo(compiled.as_text())
  products = products_from_hlo(compiled.as_text()) if args.detail else {}
  origins = origins_from_hlo(compiled.as_text()) if args.detail else {}
  modules = modules_from_hlo(compiled.as_text()) if args.detail else {}
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
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(args.steps):
      step_args = call(step_args)
  events = load_trace(trace_dir)
  kernels = kernel_events(events)
  per_kind = collections.Counter()
  per_name = collections.Counter()
  count = collections.Counter()
  for e in kernels:
    per_kind[kinds.get(e["name"], "other")] += e["dur"]
    per_name[e["name"]] += e["dur"]
    count[e["name"]] += 1
  n = args.steps
  total = sum(per_kind.values()) / n / 1e3
  print(f"{args.model} {args.mode} batch {args.batch}: compile {compile_s:.1f} s, "
        f"median traced step {sorted(times)[len(times) // 2] * 1e3:.1f} ms")
  print(f"kernel time summed over threads: {total:.1f} ms per step, "
        f"{len(kernels) / n:.0f} kernels per step")
  for kind, us in per_kind.most_common():
    print(f"  {kind:32s} {us / n / 1e3:8.1f} ms")
  use = worker_use(events)
  if use:
    span = sum(times) * 1e6  # the steps' own wall time, without the gaps between them
    print(f"worker threads over the {span / n / 1e3:.1f} ms of a step: busy "
          f"{use['busy_a'] / span:.0%} and {use['busy_b'] / span:.0%}, both at once "
          f"{use['both'] / span:.0%}; waiting for the other thread's share "
          f"{use['waits'] / n / 1e3:.1f} ms per step")
  print(f"top {args.top} kernels (ms per step, calls per step):")
  for name, us in per_name.most_common(args.top):
    print(f"  {us / n / 1e3:8.2f} ms  x{count[name] / n:5.1f}  {kinds.get(name, 'other')[:24]:24s}"
          f"  {name[:60]}")

  if products:
    by_shape = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for e in kernels:
      if e["name"] in products:
        label, flops = products[e["name"]]
        if _ONEDNN in e["name"] or e["name"].startswith("onednn"):
          label += "  (oneDNN)"
        elif not e["name"].startswith(("ynn", "xnn")):
          label += "  (Eigen: launch only)"
        by_shape[label][0] += 1
        by_shape[label][1] += e["dur"]
        by_shape[label][2] += flops
    print("matrix products by shape (ms per step, calls per step, GFLOP/s of the kernel time):")
    for label, (calls, us, flops) in sorted(by_shape.items(), key=lambda kv: -kv[1][1]):
      print(f"  {us / n / 1e3:8.1f} ms  x{calls / n:5.0f}  {flops / us / 1e3:7.1f}  {label}")
    by_origin = collections.Counter()
    for e in kernels:
      if e["name"] not in products:
        by_origin[origins.get(e["name"], "unnamed")] += e["dur"]
    print("the other kernels by origin (ms per step): " + ", ".join(
        f"{origin} {us / n / 1e3:.1f}" for origin, us in by_origin.most_common()))
    by_module, kernels_of = collections.Counter(), collections.Counter()
    for e in kernels:
      if e["name"] not in products:
        by_module[modules.get(e["name"], "unnamed")] += e["dur"]
        kernels_of[modules.get(e["name"], "unnamed")] += 1
    print(f"the other kernels by module, top {args.top} (ms per step, kernels per step):")
    for module, us in by_module.most_common(args.top):
      print(f"  {us / n / 1e3:8.1f} ms  x{kernels_of[module] / n:5.0f}  {module}")


if __name__ == "__main__":
  main()
