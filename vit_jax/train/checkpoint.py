"""Training-state checkpoints in `workdir/checkpoints`, written with Orbax.

A checkpoint holds the TrainState (step, parameters, optimizer state). The random numbers and the
data position are functions of the seed and the step, so the step is all a resume needs.
A checkpoint that cannot be read (truncated, incomplete) is moved to `workdir/damaged_checkpoints`
and the run resumes from the newest readable one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from vit_jax.train import multihost


def _use_client_barriers() -> None:
  """Makes Orbax synchronise processes through the distributed client, not device collectives.

  Orbax's default barrier is a collective over all devices, and it issues some from its
  background commit thread. Interleaved with the training or evaluation step's collectives, they
  reach the processes in different orders and the run deadlocks (seen with 2 processes on CPU).
  The client's barriers use the coordination service and cannot collide with device work.
  """
  from absl import flags

  name = "experimental_orbax_use_distributed_barrier"
  if name in flags.FLAGS and flags.FLAGS.is_parsed():
    flags.FLAGS[name].value = True


def error_reason(error: BaseException) -> str:
  """The first line of an exception's message (Orbax/TensorStore detail cut), at most 200 chars."""
  lines = str(error).strip().splitlines() or [type(error).__name__]
  return lines[0].split(". See full TensorStore details")[0][:200]


class CheckpointError(ValueError):
  """No checkpoint of a run can be read."""


class Checkpointer:
  """Saves every `every` steps, keeps the newest `keep`, restores the newest."""

  def __init__(self, workdir: str, every: int, keep: int, *, read_only: bool = False):
    if jax.process_count() > 1:
      _use_client_barriers()
    self.every = max(every, 1)
    # The interval is applied in save(): Orbax's own would also save the first step it sees.
    # cleanup_tmp_directories: a write killed part-way leaves a temporary directory behind.
    # read_only: another run's directory, which may be in use, is neither created nor cleaned.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                           cleanup_tmp_directories=not read_only,
                                           read_only=read_only)
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Steps of the complete checkpoints, oldest first."""
    return sorted(self._manager.all_steps())

  def restore_readable(self, abstract_state: Any, log: logging.Logger) -> tuple[int, Any] | None:
    """(step, state) of the newest checkpoint that can be read, or None when there is none.

    Newer checkpoints that cannot be read are logged and moved to `workdir/damaged_checkpoints`
    (kept for inspection), so the run can write those steps again. Raises CheckpointError,
    moving nothing, when checkpoints exist but none can be read.
    """
    damaged = []
    for step in reversed(self.all_steps()):
      state, reason = None, ""
      try:
        state = self.restore(abstract_state, step)
      except Exception as e:  # Orbax and TensorStore raise many types for unreadable data
        reason = error_reason(e)
      # Every process moves on together, also when only one of them could not read its part.
      if multihost.any_process(state is None):
        log.warning("Checkpoint %d cannot be read (%s); trying the one before", step,
                    reason or "another process could not read its part")
        damaged.append(step)
        continue
      if damaged:
        self._set_aside(damaged)
        log.warning("Resuming from step %d; the unreadable checkpoint(s) %s were moved to %s",
                    step, ", ".join(map(str, damaged)), self._damaged_dir)
      return step, state
    if damaged:
      raise CheckpointError(
          f"none of the checkpoints in {self.directory} ({', '.join(map(str, damaged))}) can be "
          "read; move them away to start the run again, or restore them from a copy")
    return None

  @property
  def _damaged_dir(self) -> str:
    return os.path.join(self.workdir, "damaged_checkpoints")

  def _set_aside(self, steps: list[int]) -> None:
    if jax.process_index() == 0:
      os.makedirs(self._damaged_dir, exist_ok=True)
      for step in steps:
        target, n = os.path.join(self._damaged_dir, str(step)), 1
        while os.path.exists(target):  # the same step damaged again in a later attempt
          target, n = os.path.join(self._damaged_dir, f"{step}.{n}"), n + 1
        shutil.move(os.path.join(self.directory, str(step)), target)
    multihost.barrier("vit_jax: damaged checkpoints moved")
    self._manager.reload()

  def restore(self, abstract_state: Any = None, step: int | None = None) -> Any:
    """Restores `step` (default: newest) into the structure and shardings of `abstract_state`.

    Without `abstract_state` the checkpoint comes back as a plain pytree of host arrays.
    """
    step = self.latest_step() if step is None else step
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def due(self, step: int, *, force: bool = False) -> bool:
    """Whether `save(step, ...)` would write a checkpoint."""
    return force or step % self.every == 0

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves `state` when `step` is on the interval (or `force`); returns whether it saved."""
    if not self.due(step, force=force):
      return False
    return self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def close(self) -> None:
    """Waits for pending writes to be committed."""
    self._manager.wait_until_finished()
    self._manager.close()


def has_checkpoint(workdir: str) -> bool:
  """Whether `workdir/checkpoints` holds a step directory (readable or not), touching nothing."""
  directory = os.path.join(workdir, "checkpoints")
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def load_run_params(workdir: str) -> tuple[dict[str, Any], Any]:
  """(config.json as a dict, parameters of the newest checkpoint) of an earlier run's workdir."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ValueError(f"{path} not found; init_from must be a training run's workdir")
  with open(path) as f:
    config = json.load(f)
  checkpoints = Checkpointer(workdir, 1, 1000, read_only=True)
  try:
    step = checkpoints.latest_step()
    if step is None:
      raise ValueError(f"{workdir} has no checkpoint; let that run save one first")
    params = checkpoints.restore(None, step)["params"]
  finally:
    checkpoints.close()
  return config, params
