"""Timing one jitted ViT train or inference step over all local devices."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from vit_jax.models import registry
from vit_jax.train import chunks, cpu_matmul, optim, sharding
from vit_jax.train import step as step_lib


@dataclasses.dataclass(frozen=True)
class Setup:
  """What is measured."""

  model: str = "ViT-B/16"
  mode: str = "train"  # train | infer
  batch: int = 8  # global batch
  image_size: int = 224
  num_classes: int = 1000
  dtype: str = "float32"  # compute dtype; parameters stay float32
  attention: str = "auto"
  remat: str = "none"
  scan_layers: bool = False
  accum_steps: int = 1
  fsdp: int = 1
  moment_dtype: str = "float32"
  input_dtype: str = "float32"  # float32 (in [-1, 1]) | uint8 (what the input pipelines give)
  infer_chunk: int = 0  # inference: images per forward pass and device; 0: auto (as in runs)
  train_chains: int = 0  # training: independent parts per micro-batch and device; 0: auto
  cpu_matmul: str = "auto"  # a CPU's products: auto | onednn | xla (vit_jax/train/cpu_matmul.py)


# The benchmark's flags for the config keys that the model's checks name.
_FLAGS = {"model.name": "--model", "model.attention": "--attention", "model.remat": "--remat",
          "model.scan_layers": "--scan_layers", "model.dtype": "--dtype",
          "image_size": "--image_size"}


def model_section(setup: Setup) -> dict[str, Any]:
  """The `config.model` section of the measured model (vit_jax.models.registry).

  `--attention` applies to the families with attention and is ignored by a Mixer.
  """
  options = dict(attention=setup.attention, remat=setup.remat, scan_layers=setup.scan_layers,
                 dtype=setup.dtype)
  keys = registry.keys(registry.family_of(setup.model))
  return registry.section(setup.model, **{k: v for k, v in options.items() if k in keys})


def host_memory_mode(requested: str, mode: str) -> str:
  """The host_memory setting a benchmark of `mode` runs under: `auto` releases for inference.

  Inference steps' buffers are small: retaining them measured no faster (ViT-Ti/16 b8), and
  with the one malloc arena multi-device runs keep, ~4% slower.
  """
  return "release" if requested == "auto" and mode == "infer" else requested


def check(setup: Setup, device_count: int) -> str | None:
  """Why this setup cannot be measured, naming the command-line flag (None when it can)."""
  if setup.mode not in ("train", "infer"):
    return f"unknown mode '{setup.mode}'; choose train or infer"
  for flag, value in (("--batch", setup.batch), ("--accum_steps", setup.accum_steps),
                      ("--num_classes", setup.num_classes), ("--image_size", setup.image_size),
                      ("--fsdp", setup.fsdp)):
    if value <= 0:
      return f"{flag} must be positive, got {value}"
  if setup.batch % setup.accum_steps or (setup.batch // setup.accum_steps) % device_count:
    return (f"--batch {setup.batch} must be a multiple of --accum_steps x devices = "
            f"{setup.accum_steps} x {device_count}")
  if device_count % setup.fsdp:
    return f"--fsdp {setup.fsdp} does not divide the {device_count} devices"
  try:
    model = model_section(setup)
  except registry.ModelNameError as e:
    return str(e).replace("model.name", "--model", 1)
  values = {"image_size": setup.image_size, **{f"model.{k}": v for k, v in model.items()}}
  problems = registry.check(values, jax.default_backend())
  if not problems:
    return None
  problem = problems[0]
  for key, flag in _FLAGS.items():  # name the flag where the message names its config key
    problem = problem.replace(key, flag)
  return problem


def model_flops_per_image(setup: Setup) -> int:
  """Matmul FLOPs per image of the measured step.

  A training step costs three forward passes (forward, and backward for activations and for
  weights); recomputation by remat is not counted, since it is not useful work.
  """
  forward = registry.forward_flops(model_section(setup), setup.num_classes, setup.image_size)
  return 3 * forward if setup.mode == "train" else forward


def _optimizer_config(setup: Setup) -> ml_collections.ConfigDict:
  # The pretraining recipe's optimizer: clipping, then Adam with decoupled weight decay.
  return ml_collections.ConfigDict(dict(
      optimizer="adam", grad_clip_norm=1.0, adam_b1=0.9, adam_b2=0.999, weight_decay=0.03,
      momentum=0.9, moment_dtype=setup.moment_dtype))


def _matmul_args(setup: Setup) -> tuple[str, str, str, int]:
  return (setup.cpu_matmul, jax.default_backend(), *registry.family_and_width(model_section(setup)))


def train_options(setup: Setup) -> dict[str, Any] | None:
  """The training step's compiler options for `setup.cpu_matmul` (vit_jax/train/cpu_matmul.py)."""
  return cpu_matmul.compiler_options(*_matmul_args(setup))


def infer_options(setup: Setup) -> dict[str, Any] | None:
  """The forward pass's compiler options for `setup.cpu_matmul` (vit_jax/train/cpu_matmul.py)."""
  return cpu_matmul.inference_options(*_matmul_args(setup))


def uses_onednn(setup: Setup) -> bool:
  """Whether the training step of `setup` runs its weight gradients in oneDNN."""
  return cpu_matmul.uses_onednn(*_matmul_args(setup))


def compile_step(setup: Setup) -> tuple[Any, tuple[Any, ...], float]:
  """(compiled step, its arguments placed on the devices, compile seconds)."""
  model = registry.build(model_section(setup), setup.num_classes)
  mesh = sharding.make_mesh(-1, setup.fsdp)
  batch_sh = sharding.batch_sharded(mesh)
  rng = np.random.default_rng(0)
  shape = (setup.batch, setup.image_size, setup.image_size, 3)
  images = (rng.integers(0, 256, shape).astype(np.uint8) if setup.input_dtype == "uint8"
            else rng.normal(size=shape).astype(np.float32))
  images = jax.device_put(images, batch_sh)
  labels = jax.device_put(rng.integers(0, setup.num_classes, setup.batch).astype(np.int32),
                          batch_sh)
  schedule = optim.make_schedule(1e-3, 0, 1000, "constant")
  tx = optim.make_optimizer(_optimizer_config(setup), schedule)
  init_fn = lambda: step_lib.init_state(model, tx, (setup.image_size,) * 2 + (3,), 0)  # noqa: E731
  state_sh = sharding.state_shardings(jax.eval_shape(init_fn), mesh)
  state = jax.jit(init_fn, out_shardings=state_sh)()
  if setup.mode == "train":
    fn = jax.jit(step_lib.make_train_step(model, tx, schedule, loss="softmax_xent",
                                          accum_steps=setup.accum_steps, seed=0,
                                          grad_shardings=state_sh.params,
                                          chains=train_chains(setup, mesh.size, model)),
                 in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None),
                 donate_argnums=0,
                 compiler_options=train_options(setup))
    args = (state, {"image": images, "label": labels,
                    "mask": jax.device_put(np.ones(setup.batch, np.float32), batch_sh)})
  elif setup.mode == "infer":
    per_pass = images_per_pass(setup, model)
    fn = jax.jit(lambda params, x: chunks.sharded_apply(
        lambda part: model.apply({"params": params}, part), x, per_pass, mesh.size),
                 in_shardings=(state_sh.params, batch_sh),
                 compiler_options=infer_options(setup))
    args = (state.params, images)
  else:
    raise ValueError(f"unknown mode '{setup.mode}'; choose train or infer")
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, args, time.perf_counter() - start


def train_chains(setup: Setup, device_count: int, model: Any = None) -> int:
  """Independent parts per micro-batch and device of the training step, as a training run
  would choose them (`vit_jax.train.chunks.train_chains`)."""
  model = model or registry.build(model_section(setup), setup.num_classes)
  per_device = setup.batch // setup.accum_steps // device_count
  return chunks.train_chains(setup.train_chains, model, (setup.image_size,) * 2 + (3,),
                             per_device, jax.default_backend())


def images_per_pass(setup: Setup, model: Any = None) -> int | None:
  """Images per inference pass and device (None: the whole batch), as a training run's
  evaluation would choose them (`vit_jax.train.chunks`)."""
  model = model or registry.build(model_section(setup), setup.num_classes)
  return chunks.images_per_pass(setup.infer_chunk, model, (setup.image_size,) * 2 + (3,),
                                jax.default_backend())


def compiled_memory_bytes(compiled: Any) -> int | None:
  """XLA's plan for one device: arguments + outputs + temporaries, less donated aliases."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def step_clock(setup: Setup, compiled: Any, args: tuple[Any, ...]) -> Callable[[], float]:
  """A function that runs one step and returns its seconds; the donated state carries over."""
  current = list(args)

  def one_step() -> float:
    start = time.perf_counter()
    out = compiled(*current)
    jax.block_until_ready(out)
    seconds = time.perf_counter() - start
    if setup.mode == "train":  # the state was donated: continue from the new one
      current[0] = out[0]
    return seconds

  return one_step


def interleave(clocks: dict[str, Callable[[], float]], *, warmup: int, steps: int,
               rounds: int = 1) -> dict[str, list[float]]:
  """Seconds of each clock's timed steps: `warmup` untimed steps each, then `rounds` rounds
  of `steps` steps per clock, the clocks taking turns and the first one alternating.

  Side by side comparisons on a shared machine drift with its load; taking turns puts both
  sides in the same minutes, so the ratio of their medians drifts far less than either.
  """
  for clock in clocks.values():
    for _ in range(warmup):
      clock()
  times: dict[str, list[float]] = {name: [] for name in clocks}
  order = list(clocks)
  for r in range(rounds):
    for name in order if r % 2 == 0 else order[::-1]:
      times[name].extend(clocks[name]() for _ in range(steps))
  return times


def peak_device_memory() -> int | None:
  """The allocator's peak on device 0 (GPU/TPU), or None where it keeps no statistics."""
  stats = jax.local_devices()[0].memory_stats()
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None
