"""Training-state checkpoints in `workdir/checkpoints`, written with Orbax.

A checkpoint holds the TrainState (step, parameters, optimizer state). The random numbers and the
data position are functions of the seed and the step, so the step is all a resume needs.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


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


class Checkpointer:
  """Saves every `every` steps, keeps the newest `keep`, restores the newest."""

  def __init__(self, workdir: str, every: int, keep: int):
    if jax.process_count() > 1:
      _use_client_barriers()
    self.every = max(every, 1)
    # The interval is applied in save(): Orbax's own would also save the first step it sees.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, or None."""
    return self._manager.latest_step()

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


def load_run_params(workdir: str) -> tuple[dict[str, Any], Any]:
  """(config.json as a dict, parameters of the newest checkpoint) of an earlier run's workdir."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ValueError(f"{path} not found; init_from must be a training run's workdir")
  with open(path) as f:
    config = json.load(f)
  checkpoints = Checkpointer(workdir, 1, 1000)
  try:
    step = checkpoints.latest_step()
    if step is None:
      raise ValueError(f"{workdir} has no checkpoint to initialise from")
    params = checkpoints.restore(None, step)["params"]
  finally:
    checkpoints.close()
  return config, params
