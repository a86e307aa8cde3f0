"""The device mesh and the placement of state and batches on it."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA = "data"


def make_mesh(devices: list[Any] | None = None) -> Mesh:
  """A 1-D mesh over all (or the given) devices with the batch axis `data`."""
  devices = devices or jax.devices()
  return jax.make_mesh((len(devices),), (DATA,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """The leading (batch) axis is split across the `data` axis."""
  return NamedSharding(mesh, PartitionSpec(DATA))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice of a batch into one globally sharded array per key."""
  sharding = batch_sharded(mesh)
  return {
      k: jax.make_array_from_process_local_data(
          sharding, v, (v.shape[0] * jax.process_count(), *v.shape[1:]))
      for k, v in local.items()
  }
