"""Peak dense matrix-multiply throughput of known accelerators (the denominator of MFU), and
which host processor ran a benchmark."""

from __future__ import annotations

import os
import platform

from vit_jax.train import cpu_matmul

# (substring of jax's device_kind, compute dtype) -> peak dense TFLOP/s per device, from the
# vendors' data sheets (without sparsity). float32 matmuls on NVIDIA GPUs run as TF32 under
# JAX's default precision, so their float32 peak is the TF32 one.
PEAK_TFLOPS: dict[tuple[str, str], float] = {
    ("H200", "bfloat16"): 989.0,
    ("H200", "float32"): 494.5,
    ("H100 PCIe", "bfloat16"): 756.0,
    ("H100 PCIe", "float32"): 378.0,
    ("H100", "bfloat16"): 989.0,
    ("H100", "float32"): 494.5,
    ("A100", "bfloat16"): 312.0,
    ("A100", "float32"): 156.0,
    ("TPU v4", "bfloat16"): 275.0,
    ("TPU v5 lite", "bfloat16"): 197.0,
    ("TPU v5p", "bfloat16"): 459.0,
    ("TPU v6 lite", "bfloat16"): 918.0,
}


def peak_tflops(device_kind: str, dtype: str) -> float | None:
  """The table's peak for this device and dtype (first match wins), or None when unknown."""
  for (kind, kind_dtype), peak in PEAK_TFLOPS.items():
    if kind in device_kind and kind_dtype == dtype:
      return peak
  return None


def host_cpu(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The host processor as the OS names it, with its family and model numbers where Linux gives
  them (a virtual machine often shows only a generic name: the numbers tell CPUs apart)."""
  fields = cpu_matmul.cpu_fields(cpuinfo)
  name = fields.get("model name") or platform.processor() or platform.machine()
  if "cpu family" in fields and "model" in fields:
    name += f" (family {fields['cpu family']}, model {fields['model']})"
  return name


def host_cores() -> int:
  """Logical cores this process may run on (a `taskset` limits them)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1
