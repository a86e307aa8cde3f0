"""The device mesh and the placement of state and batches on it.

The mesh has two axes. `data` is plain data parallelism: every device along it holds the same
state. `fsdp` is fully sharded data parallelism: the batch is split over it as well, and the big
tensors of the state (parameters and optimizer moments) are split along one of their dimensions,
so each device keeps 1/fsdp of them; XLA gathers them where a computation needs them whole.
Which tensors are split is decided by `RULES`, a table of (path pattern, rule).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA, FSDP = "data", "fsdp"
AXES = (DATA, FSDP)
REPLICATE, SPLIT = "replicate", "split"

# The first pattern that matches a tensor's '/'-joined path decides. `split` shards the largest
# dimension divisible by the fsdp size (the last such on ties) when the tensor has at least
# `min_size` elements; otherwise, and for `replicate`, every device holds the whole tensor.
# Vectors and scalars (biases, LayerNorm scales, step counters) are never worth splitting.
RULES: tuple[tuple[str, str], ...] = (
    (r"(^|/)(bias|scale|count|step)$", REPLICATE),
    (r".*", SPLIT),
)


def mesh_shape(data: int, fsdp: int, device_count: int) -> tuple[int, int]:
  """The (data, fsdp) sizes for `device_count` devices; -1 takes what is left.

  Raises ValueError naming the mismatch when the sizes cannot cover the devices exactly.
  """
  if fsdp == -1 and data == -1:
    raise ValueError("only one of mesh.data and mesh.fsdp can be -1; for FSDP over all devices "
                     "set --config.mesh.data=1 --config.mesh.fsdp=-1")
  for name, size in ((DATA, data), (FSDP, fsdp)):
    if size == 0 or size < -1:
      raise ValueError(f"mesh.{name} must be positive or -1, got {size}")
  known = max(data, 1) * max(fsdp, 1)
  if -1 in (data, fsdp):
    if device_count % known:
      raise ValueError(f"mesh.{DATA if fsdp == -1 else FSDP}={known} does not divide the "
                       f"{device_count} devices; use a divisor of {device_count}")
    rest = device_count // known
    return (rest, fsdp) if data == -1 else (data, rest)
  if known != device_count:
    fix = ("set --config.mesh.data=-1 to use all of them" if device_count % fsdp == 0 else
           f"use a mesh.fsdp that divides {device_count} and --config.mesh.data=-1")
    raise ValueError(f"mesh data={data} x fsdp={fsdp} = {known} devices does not match the "
                     f"{device_count} devices here; {fix}")
  return data, fsdp


def make_mesh(data: int = -1, fsdp: int = 1, *, devices: list[Any] | None = None) -> Mesh:
  """A (data, fsdp) mesh over all (or the given) devices, of every process."""
  devices = devices or jax.devices()
  shape = mesh_shape(data, fsdp, len(devices))
  auto = jax.sharding.AxisType.Auto
  return jax.make_mesh(shape, AXES, axis_types=(auto, auto), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """The leading (batch) axis is split across all devices, `data` then `fsdp`."""
  return NamedSharding(mesh, PartitionSpec(AXES))


def path_str(path: tuple[Any, ...]) -> str:
  """'/'-joined names of a pytree key path (dict keys, attribute names, sequence indices)."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def rule_for(path: str) -> str:
  """The rule of the first pattern in `RULES` that matches `path`."""
  return next(rule for pattern, rule in RULES if re.search(pattern, path))


def spec_for(path: str, shape: tuple[int, ...], fsdp_size: int, min_size: int) -> PartitionSpec:
  """Where one tensor goes: split along `fsdp` on one dimension, or replicated."""
  if fsdp_size == 1 or rule_for(path) == REPLICATE or int(np.prod(shape)) < min_size:
    return PartitionSpec()
  divisible = [(size, axis) for axis, size in enumerate(shape) if size % fsdp_size == 0]
  if not divisible:
    return PartitionSpec()
  _, axis = max(divisible)
  return PartitionSpec(*([None] * axis), FSDP)


def state_shardings(tree: Any, mesh: Mesh, min_size: int = 2**14) -> Any:
  """A NamedSharding for every leaf of `tree` (arrays or ShapeDtypeStructs), by `RULES`."""
  fsdp_size = mesh.shape[FSDP]

  def place(path: tuple[Any, ...], leaf: Any) -> NamedSharding:
    return NamedSharding(mesh, spec_for(path_str(path), tuple(leaf.shape), fsdp_size, min_size))

  return jax.tree_util.tree_map_with_path(place, tree)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice of a batch into one globally sharded array per key."""
  sharding = batch_sharded(mesh)
  return {
      k: jax.make_array_from_process_local_data(
          sharding, v, (v.shape[0] * jax.process_count(), *v.shape[1:]))
      for k, v in local.items()
  }
