"""`python -m vit_jax.benchmark --model ViT-B/16 --batch 64 --mode train [--dtype bfloat16 ...]`.

Prints a table (and writes JSON with --json) of images/s, achieved TFLOP/s, MFU, peak memory and
compile time; with torch and timm installed, also timm's same-size ViT and the ratio.
`python -m vit_jax.benchmark data --dataset ...` measures the input pipeline instead
(vit_jax/benchmark/data.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys

import jax
import jaxlib

from vit_jax.benchmark import hardware, measure, timm_side
from vit_jax.benchmark.report import table
from vit_jax.evaluate import cpu_devices
from vit_jax.train import cpu_matmul, host_memory


def _sig(x: float, digits: int = 4) -> float:
  return float(f"{x:.{digits}g}")


def _at_least(low: int):
  def parse_int(text: str) -> int:
    value = int(text)
    if value < low:
      raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value

  return parse_int


def parse(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m vit_jax.benchmark", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="ViT-B/16", help="a preset name, e.g. ViT-Ti/16")
  p.add_argument("--mode", default="train", choices=["train", "infer"])
  p.add_argument("--batch", type=int, default=8, help="global batch over all devices")
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--num_classes", type=int, default=1000)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--attention", default="auto", help="auto | plain | xla | cudnn")
  p.add_argument("--remat", default="none", help="none | full | dots | dots_no_batch")
  p.add_argument("--scan_layers", action="store_true")
  p.add_argument("--accum_steps", type=int, default=1)
  p.add_argument("--fsdp", type=int, default=1, help="devices along the fsdp mesh axis")
  p.add_argument("--moment_dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--infer_chunk", type=_at_least(0), default=0,
                 help="--mode infer: images per forward pass and device; 0: auto, as training "
                      "runs' evaluation (a CPU: cache-sized chunks; else the whole batch)")
  p.add_argument("--train_chains", type=_at_least(0), default=0,
                 help="--mode train: independent parts per micro-batch and device, summed; "
                      "0: auto, as training runs (a CPU: parts of at least half an inference "
                      "pass and 4 images; else 1)")
  p.add_argument("--cpu_matmul", default="auto", choices=cpu_matmul.MODES,
                 help="a CPU's products (vit_jax/train/cpu_matmul.py): --mode train's weight "
                      "gradients in oneDNN where this jaxlib has it (auto: on Intel CPUs, up to "
                      "width 384); --mode infer's in Eigen (auto: on Intel CPUs)")
  p.add_argument("--cpu_devices", type=_at_least(0), default=0,
                 help="host devices the CPU is split into, the batch over them; 0: auto (for "
                      "--mode infer on a CPU-only host, one per core with at least 4 images "
                      "each, as vit_jax/evaluate/cpu_devices.py; else JAX's own setting)")
  p.add_argument("--host_memory", default="auto", choices=host_memory.MODES,
                 help="keep freed host memory mapped (vit_jax/train/host_memory.py); auto: "
                      "for --mode train on a CPU, as training runs do")
  p.add_argument("--warmup", type=_at_least(0), default=3,
                 help="untimed steps after compilation")
  p.add_argument("--steps", type=_at_least(1), default=10, help="timed steps (per round)")
  p.add_argument("--rounds", type=_at_least(1), default=1,
                 help="rounds of --steps timed steps, ours and timm's taking turns, so that "
                      "both sides share the machine's slow and fast minutes")
  p.add_argument("--peak_tflops", type=float, default=None,
                 help="peak TFLOP/s per device for MFU (default: from a table of known devices)")
  p.add_argument("--timm", default="auto", choices=["auto", "on", "off"],
                 help="time timm's same-size ViT too (auto: when torch and timm import)")
  p.add_argument("--t2t_repo", default=None,
                 help="a clone of github.com/yitu-opensource/T2T-ViT: for a T2T-ViT model, "
                      "the authors' model is timed as the PyTorch side (timm has none)")
  p.add_argument("--compile_only", action="store_true",
                 help="report compile time and XLA's memory plan without running")
  p.add_argument("--json", default=None, help="also write the results to this file")
  return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
  """Measures the setup the arguments describe; returns the result record."""
  setup = measure.Setup(model=args.model, mode=args.mode, batch=args.batch,
                        image_size=args.image_size, num_classes=args.num_classes,
                        dtype=args.dtype, attention=args.attention, remat=args.remat,
                        scan_layers=args.scan_layers, accum_steps=args.accum_steps,
                        fsdp=args.fsdp, moment_dtype=args.moment_dtype,
                        infer_chunk=args.infer_chunk, train_chains=args.train_chains,
                        cpu_matmul=args.cpu_matmul)
  # Before the first jax.devices(): the device count is fixed when JAX's CPU client starts,
  # and the allocator setting (which depends on that count) holds only for later threads.
  try:
    count = cpu_devices.plan(args.cpu_devices, setup.batch, inference=setup.mode == "infer")
  except ValueError as e:
    raise ValueError(f"--{e}") from None  # the message starts with the setting's name
  cpu_devices.configure(count)
  retained = host_memory.configure(measure.host_memory_mode(args.host_memory, setup.mode))
  devices = jax.devices()
  problem = measure.check(setup, len(devices))
  if problem:
    raise ValueError(problem)
  kind = devices[0].device_kind
  if args.t2t_repo and (problem := timm_side.t2t_repo_problem(args.t2t_repo)):
    raise ValueError(f"--t2t_repo {problem}")
  compiled, step_args, compile_s = measure.compile_step(setup)
  result = {**vars(setup), "devices": len(devices), "device_kind": kind,
            "jax_version": jax.__version__, "jaxlib_version": jaxlib.__version__,
            "python_version": platform.python_version(),
            "host_cpu": hardware.host_cpu(), "host_cores": hardware.host_cores(),
            "host_memory": "retain" if retained else "release",
            "compile_s": round(compile_s, 2),
            "planned_memory_bytes": measure.compiled_memory_bytes(compiled)}
  if setup.mode == "train":
    result["chains"] = measure.train_chains(setup, len(devices))
    result["onednn_matmul"] = measure.uses_onednn(setup)
    result["compiler_options"] = measure.train_options(setup) or {}
  if setup.mode == "infer":
    result["compiler_options"] = measure.infer_options(setup) or {}
    per_pass = measure.images_per_pass(setup)
    result["images_per_pass"] = min(per_pass or setup.batch, setup.batch // len(devices))
  if args.compile_only:
    return result
  clocks = {"ours": measure.step_clock(setup, compiled, step_args)}
  timm_info = None
  if args.timm != "off":
    reason = timm_side.unavailable_reason(setup.model, args.t2t_repo)
    if reason and args.timm == "on":
      raise SystemExit(f"error: --timm=on but {reason}")
    if reason:
      result["timm"] = reason
    else:
      clocks["timm"], timm_info = timm_side.timm_clock(
          setup.model, mode=setup.mode, batch=setup.batch, image_size=setup.image_size,
          num_classes=setup.num_classes, dtype=setup.dtype, t2t_repo=args.t2t_repo)
  times = measure.interleave(clocks, warmup=args.warmup, steps=args.steps, rounds=args.rounds)
  step_s = statistics.median(times["ours"])
  per_image = measure.model_flops_per_image(setup)
  tflops = per_image * setup.batch / step_s / 1e12
  peak = args.peak_tflops or hardware.peak_tflops(kind, setup.dtype)
  result.update({
      "steps": args.steps, "rounds": args.rounds,
      "step_ms": _sig(step_s * 1e3), "img_per_sec": _sig(setup.batch / step_s),
      "model_gflops_per_image": _sig(per_image / 1e9), "tflops_per_sec": _sig(tflops),
      "peak_tflops_per_device": peak,
      "mfu": _sig(tflops / (peak * len(devices))) if peak else None,
      "peak_memory_bytes": measure.peak_device_memory(),
  })
  if timm_info is not None:
    timm_s = statistics.median(times["timm"])
    result.update({"timm_img_per_sec": _sig(setup.batch / timm_s),
                   "timm_step_ms": _sig(timm_s * 1e3),
                   "timm_model": timm_info["model"], "timm_version": timm_info["version"],
                   "torch_version": timm_info["torch"],
                   "torch_threads": timm_info["threads"],
                   "ratio_vs_timm": _sig(timm_s / step_s, 3)})
  return result


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] == ["data"]:
    from vit_jax.benchmark import data

    data.main(argv[1:])
    return
  args = parse(argv)
  try:
    result = run(args)
  except ValueError as e:
    raise SystemExit(f"error: {str(e).splitlines()[0]}") from None
  print(table(result))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
