"""Reading a run's workdir without changing it: its config and its checkpoints' parameters.

Every command that reads a run (evaluation, export, figures, `init_from`) opens it through `Run`,
which uses Orbax in read-only mode: nothing is created, moved or cleaned up. In particular the
temporary directory of a checkpoint the run is writing right now is left alone, so a run can be
read while it trains.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from vit_jax.models import registry

CHECKPOINTS = "checkpoints"  # the subdirectory of a workdir that holds its checkpoints
CLASSES = "classes.txt"  # written by vit_jax.main for datasets whose classes have names


class RunError(ValueError):
  """A workdir that cannot be read as a training run; the message is one line."""


def error_reason(error: BaseException) -> str:
  """The first line of an exception's message (Orbax/TensorStore detail cut), at most 200 chars."""
  lines = str(error).strip().splitlines() or [type(error).__name__]
  return lines[0].split(". See full TensorStore details")[0][:200]


def complete_steps(workdir: str) -> list[int]:
  """Steps of the checkpoint directories in `workdir` whose writes finished (read or not).

  Orbax writes a checkpoint under a temporary name and renames it to its step when complete.
  """
  directory = os.path.join(workdir, CHECKPOINTS)
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory)
                if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


def class_names(workdir: str) -> list[str] | None:
  """Label i's name on line i+1 of the run's classes.txt, or None when the run has none."""
  path = os.path.join(workdir, CLASSES)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return f.read().splitlines()


def has_checkpoint(workdir: str) -> bool:
  """Whether `workdir` holds a complete checkpoint directory (readable or not), touching nothing."""
  return bool(complete_steps(workdir))


class Run:
  """A training run's workdir, opened read-only: `config` (its config.json) and `params(step)`."""

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    path = os.path.join(self.workdir, "config.json")
    if not os.path.isfile(path):
      raise RunError(f"{path} not found; give a training run's workdir")
    try:
      with open(path) as f:
        self.config: dict[str, Any] = json.load(f)
    except (OSError, ValueError) as e:
      raise RunError(f"{path} cannot be read ({error_reason(e)})") from None
    self._manager = None
    if has_checkpoint(self.workdir):
      options = ocp.CheckpointManagerOptions(read_only=True, create=False)
      self._manager = ocp.CheckpointManager(os.path.join(self.workdir, CHECKPOINTS),
                                            options=options,
                                            item_handlers=ocp.StandardCheckpointHandler())

  def __enter__(self) -> Run:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()

  def steps(self) -> list[int]:
    """Steps of the run's complete checkpoints, oldest first."""
    return sorted(self._manager.all_steps()) if self._manager else []

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None when the run has none yet."""
    return self._manager.latest_step() if self._manager else None

  def state(self, step: int | None = None) -> dict[str, Any]:
    """The whole checkpoint `step` (default: the newest) as host arrays: step, params, opt_state.

    Parameters (and the optimizer states that mirror them) come back as saved: per layer.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise RunError(f"{self.workdir} has no checkpoint yet; let the run save one first")
    if step not in self.steps():
      raise RunError(f"{self.workdir} has no checkpoint of step {step}; it has "
                     f"{', '.join(map(str, self.steps()))}")
    # Every array onto one local device: restoring into the saved shardings would need the
    # devices the run trained on (Orbax refuses another device count).
    one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                            sharding=one_device),
                          self._manager.item_metadata(step))
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(target))
    return jax.tree.map(np.asarray, jax.device_get(restored))

  def params(self, step: int | None = None) -> dict[str, Any]:
    """Per-layer parameters (host numpy arrays) of checkpoint `step` (default: the newest).

    Checkpoints always hold per-layer names (the trainer converts a scanned model's state).
    """
    return self.state(step)["params"]

  def grid(self) -> tuple[int, int]:
    """The patch grid the run trained at, from its config."""
    try:
      return registry.grid(self.config["model"], int(self.config["image_size"]))
    except registry.ModelNameError as e:
      raise RunError(f"{self.workdir}/config.json: {e}") from None
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
      raise RunError(f"{self.workdir}/config.json lacks image_size or the model's size fields; "
                     "give a training run's workdir") from None

  def close(self) -> None:
    """Releases Orbax's resources."""
    if self._manager is not None:
      self._manager.close()
      self._manager = None
