"""Joining a multi-process run: `jax.distributed.initialize` and agreement between processes.

Every process runs the same command. On a TPU pod slice and under SLURM (`srun`) JAX finds the
coordinator, the process count and this process's index by itself; elsewhere they are given
explicitly (`--coordinator_address=host:port --num_processes=N --process_id=i`).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

MODES = ("auto", "on", "off")


def launched_as_cluster(env: Mapping[str, str]) -> bool:
  """Whether the environment shows a multi-process launch JAX can detect by itself."""
  # srun sets SLURM_STEP_NUM_TASKS for the tasks of a job step; a batch script itself (where a
  # plain `python` would wait for processes that never start) is not such a step.
  if int(env.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1:
    return True
  return "," in env.get("TPU_WORKER_HOSTNAMES", "")  # a TPU slice spanning several hosts


def will_join(mode: str, coordinator_address: str | None,
              env: Mapping[str, str] | None = None) -> bool:
  """Whether `initialize` with these arguments joins a multi-process run."""
  env = os.environ if env is None else env
  return mode == "on" or (mode == "auto" and (coordinator_address is not None
                                              or launched_as_cluster(env)))


def initialize(mode: str = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               env: Mapping[str, str] | None = None) -> bool:
  """Calls `jax.distributed.initialize` when asked or when a cluster launch is detected.

  `mode`: `on` always joins (explicit arguments, else JAX's auto-detection), `off` never does,
  `auto` joins when coordinator arguments are given or `launched_as_cluster`. Returns whether
  it joined. Raises ValueError for inconsistent arguments.
  """
  if mode not in MODES:
    raise ValueError(f"--distributed={mode} is not one of {', '.join(MODES)}")
  explicit = [coordinator_address, num_processes, process_id]
  if any(v is not None for v in explicit) and any(v is None for v in explicit):
    raise ValueError("give all of --coordinator_address, --num_processes and --process_id, or "
                     "none of them (to let JAX detect a TPU pod or SLURM job)")
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} is not in 0..{num_processes - 1}")
  if not will_join(mode, coordinator_address, env):
    return False
  before = signal.getsignal(signal.SIGTERM)
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  # JAX's preemption notifier now holds SIGTERM and only records it: a SIGTERM during start-up
  # (data loading, compilation) would be lost and the run go on. Until the trainer installs its
  # own handler, SIGTERM ends the process as it does without a coordinator.
  if before is not None and threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, before)
  return True


def any_process(flag: bool) -> bool:
  """Whether `flag` is true in any process (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def total(value: int) -> int:
  """The sum of `value` over all processes (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return value
  return int(np.sum(multihost_utils.process_allgather(np.int64(value))))


def host_copy(tree: Any) -> Any:
  """NumPy copies of the whole of every array, also of arrays split across processes."""
  def fetch(a: Any) -> np.ndarray:
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(jax.device_get(a))

  return jax.tree.map(fetch, tree)


def one_at_a_time(step: Callable[..., Any], devices: int) -> Callable[..., Any]:
  """`step`, waiting for each call's result where independent calls may deadlock.

  Calls that do not depend on each other (evaluation batches) may otherwise execute at the same
  time. Their collectives then meet in different orders: across processes (seen on a loaded
  CPU), and on a CPU with several devices also within one process (jaxlib 0.10 hangs when a
  second such call starts before the first has finished). `devices` is how many devices `step`
  runs on. Training steps depend on each other already.
  """
  if jax.process_count() == 1 and (devices == 1 or jax.default_backend() != "cpu"):
    return step

  def run(*args: Any) -> Any:
    return jax.block_until_ready(step(*args))

  return run


def barrier(name: str) -> None:
  """Waits until every process has reached the barrier called `name` (no-op for one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
