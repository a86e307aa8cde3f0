"""Keeping freed host memory mapped, so that XLA:CPU's per-step buffers are not faulted in again.

XLA:CPU allocates a step's temporary buffer with malloc at every execution and frees it after
(393 MiB for the ViT-Ti/16 training step at batch 8). glibc serves blocks that large with mmap
and hands them back with munmap, so at every step the kernel maps and zeroes the whole buffer
again, one 4 KiB page fault at a time: ~100,000 faults, ~80 ms of a ~540 ms step on a 2-core
CPU (docs/performance.md). `retain` asks glibc to keep freed memory instead: no mmap for large
blocks and no trimming of the heap. The process's resident memory then stays at its peak, up
to about twice the step's temporary buffer, as a step may start before the last one's buffer
is freed.

That holds only in glibc's main arena: a thread with its own arena (glibc gives threads their
own, up to eight per core) gets any block larger than that arena's 64 MiB heaps from mmap
whatever the setting. Two ways keep the step's buffer in the main arena:
- One CPU device (the usual case): JAX runs each step on the calling thread (async dispatch
  off), and the main thread always allocates from the main arena. XLA's worker threads keep
  their own arenas for the many small buffers they allocate inside kernels; sharing one arena
  with them made a training step 13-24% slower (glibc searching its bins under one lock).
- Several CPU devices, or several processes: a step runs on XLA's worker threads whatever the
  dispatch, so glibc is limited to the main arena alone.

Both settings are process-wide and hold only from the start of JAX's CPU client and for threads
that allocate after them: call `configure` before JAX creates its CPU client (before
`jax.devices()` or the first computation). It does nothing outside glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import pkgutil
import re
import sys

# `auto`: retain when JAX will run on the CPU; `retain`: always; `release`: the C library's own
# behaviour.
MODES = ("auto", "retain", "release")

# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def configured_platforms() -> str:
  """The platforms JAX is told to use (`jax.config.jax_platforms`, `JAX_PLATFORMS`), or ''."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if "jax" in sys.modules:
    platforms = sys.modules["jax"].config.jax_platforms or platforms
  return platforms


def accelerator_possible(platforms: str | None = None) -> bool:
  """Whether JAX may pick a GPU or TPU here, decided without starting any backend.

  True when `platforms` (default: `configured_platforms()`) names one other than the CPU, or,
  when it is empty, when a PJRT plugin or libtpu is installed.
  """
  if platforms is None:
    platforms = configured_platforms()
  if platforms:
    return any(p.strip() not in ("", "cpu") for p in platforms.split(","))
  if importlib.metadata.entry_points(group="jax_plugins"):
    return True
  if importlib.util.find_spec("libtpu") is not None:
    return True
  try:
    import jax_plugins  # a namespace package that GPU/TPU plugins install into
  except ImportError:
    return False
  return any(True for _ in pkgutil.iter_modules(jax_plugins.__path__))


def configured_cpu_devices(default: int | None = 1) -> int | None:
  """The CPU devices JAX is told to create (`jax_num_cpu_devices`, else the XLA flag), or
  `default` where neither says."""
  import jax  # importing starts no backend

  count = jax.config.values.get("jax_num_cpu_devices", -1)
  if count >= 0:
    return max(count, 1)
  flags = os.environ.get("XLA_FLAGS", "")
  found = re.findall(r"--xla_force_host_platform_device_count=(\d+)", flags)
  return max(int(found[-1]), 1) if found else default


def retain(one_arena: bool) -> bool:
  """Asks glibc to keep freed memory mapped, in its main arena alone if `one_arena`; False
  where that is not possible (not glibc)."""
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  mallopt.restype = ctypes.c_int
  # -1 disables trimming altogether (mallopt(3)); mallopt returns 1 on success.
  settings = [(_M_ARENA_MAX, 1)] if one_arena else []
  settings += [(_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)]
  return all(mallopt(param, value) == 1 for param, value in settings)


def check_mode(mode: str) -> str | None:
  """Why `mode` is not a host_memory setting (None when it is)."""
  if mode not in MODES:
    return f"host_memory '{mode}' is not one of {', '.join(MODES)}"
  return None


def configure(mode: str, *, distributed: bool = False) -> bool:
  """Applies `mode` (one of MODES) to a process that will join a multi-process run if
  `distributed`; returns whether freed host memory is now retained.

  Retaining on one CPU device in one process also turns JAX's CPU async dispatch off.
  """
  problem = check_mode(mode)
  if problem:
    raise ValueError(problem)
  if mode == "release" or (mode == "auto" and accelerator_possible()):
    return False
  one_arena = distributed or configured_cpu_devices() > 1
  if not retain(one_arena):
    return False
  if not one_arena:
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)
  return True
