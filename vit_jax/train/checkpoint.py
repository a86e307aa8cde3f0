"""Training-state checkpoints in `workdir/checkpoints`, written with Orbax.

A checkpoint holds the TrainState (step, parameters, optimizer state). The random numbers and the
data position are functions of the seed and the step, so the step is all a resume needs.
A checkpoint that cannot be read (truncated, incomplete) is moved to `workdir/damaged_checkpoints`
and the run resumes from the newest readable one. Writes run in the background; one that fails
(a full disk, a broken file system) is found at the next `check`, save or close and raised as a
`CheckpointSaveError`. Commands that only read a run use `vit_jax.io.runs` instead.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from vit_jax.io import runs
from vit_jax.io.runs import error_reason
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


class CheckpointError(ValueError):
  """No checkpoint of a run can be read."""


def resume_hint(newest: int | None) -> str:
  """What a run that stopped on a failed write can resume from, and how."""
  if newest is None:
    return ("there is no complete checkpoint yet; fix the cause and run the same command to "
            "start again")
  return (f"the newest complete checkpoint is step {newest}; fix the cause and run the same "
          "command to resume from it")


class CheckpointSaveError(Exception):
  """A checkpoint could not be written; the message names the step, the cause and the fallback."""

  def __init__(self, step: int, path: str, cause: str, newest: int | None):
    super().__init__(f"could not write the checkpoint of step {step} to {path}: {cause}; "
                     f"{resume_hint(newest)}")
    self.step, self.newest = step, newest


def save_cause(error: BaseException) -> str:
  """The reason a write failed, e.g. "No space left on device", from an OS or TensorStore error."""
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  code = re.search(r"os_error_code='?(\d+)", str(error))  # how TensorStore reports OS errors
  if code:
    return os.strerror(int(code.group(1)))
  return error_reason(error)


class Checkpointer:
  """Saves every `every` steps, keeps the newest `keep`, restores the newest."""

  def __init__(self, workdir: str, every: int, keep: int):
    if jax.process_count() > 1:
      _use_client_barriers()
    self.every = max(every, 1)
    # The interval is applied in save(): Orbax's own would also save the first step it sees.
    # cleanup_tmp_directories: a write killed part-way leaves a temporary directory behind.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True)
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, runs.CHECKPOINTS)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._writing: int | None = None  # the step whose background write is not yet known done

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

    Without `abstract_state` it comes back in the shardings it was saved with, which needs the
    same devices (a reader on other devices goes through `vit_jax.io.runs.Run`).
    """
    step = self.latest_step() if step is None else step
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def due(self, step: int, *, force: bool = False) -> bool:
    """Whether `save(step, ...)` would write a checkpoint."""
    return force or step % self.every == 0

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Starts writing `state` when `step` is on the interval (or `force`); returns whether.

    Raises CheckpointSaveError when the previous write failed (Orbax waits for it anyway).
    """
    if not self.due(step, force=force):
      return False
    self.check(wait=True)
    try:
      saved = self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    except Exception as e:  # a write that fails at once, e.g. its directory cannot be made
      raise self._failure(step, save_cause(e)) from None
    self._writing = step if saved else None
    return saved

  def _failure(self, step: int, cause: str) -> CheckpointSaveError:
    newest = max((s for s in runs.complete_steps(self.workdir) if s != step), default=None)
    return CheckpointSaveError(step, os.path.join(self.directory, str(step)), cause, newest)

  def _finish(self) -> CheckpointSaveError | None:
    """Waits for the write in progress; the error it ended with, if any."""
    step, self._writing = self._writing, None
    if step is None:
      return None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # Orbax re-raises its background thread's error, of any type
      return self._failure(step, save_cause(e))
    return None

  def check(self, *, wait: bool = False) -> None:
    """Raises CheckpointSaveError if the last write failed; without `wait` only if it ended.

    A collective in multi-process runs (call it from every process at the same step), so all
    processes stop together when any of them could not write its part.
    """
    step = self._writing
    done = wait or not self._manager.is_saving_in_progress()
    failure = self._finish() if done else None
    if multihost.any_process(failure is not None):
      raise failure or self._failure(step if step is not None else -1,
                                     "another process could not write its part (see its log)")

  def close(self) -> None:
    """Waits for pending writes; raises CheckpointSaveError if the last one failed."""
    failure = self._finish()
    try:
      self._manager.close()
    except Exception:  # the failure was already taken from Orbax; closing only cleans up
      pass
    if failure is not None:
      raise failure
