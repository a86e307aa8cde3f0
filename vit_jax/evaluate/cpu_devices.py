"""How many host devices an inference process splits the CPU into.

XLA:CPU runs a device's program on a pool of one thread per core and splits each kernel over
the threads. A forward pass loses much of the second core that way: its kernels are small, some
(attention's batched products) run on one thread, and each one waits for the slower share. With
the batch split over one host device per core, the devices' programs run side by side instead.
On a 2-core Intel Xeon, ViT-Ti/16 inference took 84-96 ms a batch of 8 on two devices against
98-105 ms on one, and 338 against 401-409 ms at batch 32 (docs/performance.md). Training steps
lost (403-484 against 323-324 ms), so only inference asks for it.

The device count is fixed when JAX creates its CPU client: call `configure` before
`jax.devices()` or the first computation.
"""

from __future__ import annotations

from vit_jax.data.batches import cores as usable_cores
from vit_jax.train import host_memory

# Images per device at least: at 2 (four devices at batch 8) the split gained half as much.
MIN_IMAGES = 4


def plan(requested: int, batch: int, *, inference: bool, cores: int | None = None,
         platforms: str | None = None) -> int | None:
  """Host devices for a process whose steps take `batch` images; None: leave JAX's setting.

  `requested` when positive (it must divide `batch`). For 0 (auto): None for training, where an
  accelerator may be used, or where the CPU device count is already configured (XLA_FLAGS,
  `jax_num_cpu_devices`); else the most devices, up to one per usable core (logical CPUs in
  this process's affinity: a container's CPU quota is not read), that split the batch evenly
  into parts of at least `MIN_IMAGES` images.
  """
  if requested < 0:
    raise ValueError(f"cpu_devices {requested} is negative; use 0 (auto) or a device count")
  if requested:
    if batch % requested:
      raise ValueError(f"cpu_devices {requested} does not divide the batch of {batch}; choose "
                       f"a divisor or 0 (auto)")
    return requested
  if (not inference or host_memory.accelerator_possible(platforms)
      or host_memory.configured_cpu_devices(default=None) is not None):
    return None
  cores = usable_cores() if cores is None else cores
  return next((n for n in range(min(cores, batch // MIN_IMAGES), 1, -1) if batch % n == 0), 1)


def configure(count: int | None) -> None:
  """Makes JAX's CPU client create `count` devices; None leaves JAX's own setting.

  Raises ValueError when JAX's backends already run and the count was not set this way before.
  """
  if count is None:
    return
  import jax

  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:  # JAX refuses once its backends exist, unless the value is the same
    raise ValueError(f"cannot split the CPU into {count} devices: JAX's backends have already "
                     f"started; choose the count before the first computation") from None


def split_for_inference(batch: int) -> None:
  """`configure(plan(0, batch, inference=True))` for a command about to run forward passes of
  `batch` images; where JAX already runs in this process (the command called from Python), its
  devices are kept."""
  try:
    configure(plan(0, batch, inference=True))
  except ValueError:
    pass
