"""The training loop: initialise or resume, step, log, evaluate, checkpoint.

It stops early in two ways, each an exception for the caller to turn into an exit status:
`Interrupted` after a requested stop (the step's checkpoint is committed) and `NonFiniteError`
when a loss or gradient norm is not finite (nothing of that step is saved).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import Any

import jax
import tqdm
from flax import traverse_util

from vit_jax.data.types import Dataset
from vit_jax.evaluate import fewshot
from vit_jax.evaluate.classification import evaluate
from vit_jax.io import layers, posemb_resize
from vit_jax.io.pretrained import Pretrained
from vit_jax.models import registry
from vit_jax.train import chunks, cpu_matmul, mix, multihost, optim, sharding
from vit_jax.train import step as step_lib
from vit_jax.train.checkpoint import Checkpointer
from vit_jax.train.metrics import LOGGER, MetricWriter
from vit_jax.train.preemption import StopRequest


class Interrupted(Exception):
  """The run stopped on request at `step`; `saved`: a checkpoint of it was committed."""

  def __init__(self, step: int, reason: str, saved: bool):
    super().__init__(f"stopped by {reason} at step {step}")
    self.step, self.reason, self.saved = step, reason, saved


class NonFiniteError(Exception):
  """A step produced a non-finite loss or gradient norm; its state was not saved."""


def _grid(config: Any) -> tuple[int, int]:
  return registry.grid(config.model, config.image_size)


def check_source_fits(config: Any, source: Pretrained) -> None:
  """Raises ValueError when `source` is of another family, or fixes another token count."""
  problem = registry.source_problem(config.model, source.params, source.grid, config.image_size,
                                    source.source)
  if problem:
    raise ValueError(problem)


def initial_params(config: Any, source: Pretrained, params: Any) -> Any:
  """`params` (per-layer) replaced by those of `source`, adapted to this model's patch grid.

  Raises ValueError naming a parameter that is missing or cannot be made to fit.
  """
  check_source_fits(config, source)
  new = _grid(config)
  old = source.grid or new
  carried = _source_params(config, source)
  adapted, fresh = posemb_resize.adapt_params(carried, params, old, new, config.posemb_resample)
  unused = sorted(set(traverse_util.flatten_dict(source.params, sep="/"))
                  - set(traverse_util.flatten_dict(params, sep="/")))
  logger = logging.getLogger(LOGGER)
  logger.info(
      "Initialised from %s (patch grid %dx%d -> %dx%d%s%s)", source.source, *old, *new,
      f"; new {', '.join(fresh)}" if fresh else "",
      f"; not used from the source: {', '.join(unused)}" if unused else "")
  gelu = config.model.get("gelu", "tanh")
  if source.gelu is not None and source.gelu != gelu:
    logger.warning("%s was trained with the %s GELU but model.gelu is %s; set "
                   "--config.model.gelu=%s to compute what it was trained to", source.source,
                   source.gelu, gelu, source.gelu)
  return adapted


def _source_params(config: Any, source: Pretrained) -> Any:
  """The source's parameters for this model's head count, without its head if reset_head."""
  if not source.heads_recorded:  # a timm file: attention split as this model's
    source = source.with_heads(config.model.num_heads)
  if not config.get("reset_head", False):
    return source.params
  return {k: v for k, v in source.params.items() if k != "head"}


def check_initial_params(config: Any, source: Pretrained) -> None:
  """Raises ValueError when `source` cannot initialise the model of `config` (nothing is run)."""
  check_source_fits(config, source)
  abstract = jax.eval_shape(components(config)[3]).params
  if config.model.get("scan_layers", False):
    abstract = jax.eval_shape(layers.to_per_layer, abstract)
  posemb_resize.adapt_params(_source_params(config, source), abstract,
                             source.grid or _grid(config),
                             _grid(config), config.posemb_resample)


def components(config: Any) -> tuple[Any, Any, Any, Any]:
  """(model, lr schedule, optimizer, init_fn() -> initial TrainState) of a resolved config."""
  model = registry.build(config.model, config.num_classes)
  schedule = optim.make_schedule(config.lr, config.warmup_steps, config.total_steps,
                                 config.decay)
  tx = optim.make_optimizer(config, schedule)
  image_shape = (config.image_size, config.image_size, config.image_channels)
  init_fn = functools.partial(step_lib.init_state, model, tx, image_shape, config.seed)
  return model, schedule, tx, init_fn


class Placement:
  """The mesh, where each part of the state lives, and the layout conversions for checkpoints.

  Checkpoints always hold per-layer parameters (vit_jax.io.layers); with `scan_layers` the
  running state is converted on save and restore.
  """

  def __init__(self, config: Any, init_fn: Any):
    self.mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    self.replicated = sharding.replicated(mesh=self.mesh)
    self.batch = sharding.batch_sharded(self.mesh)
    min_size = config.mesh.fsdp_min_size
    abstract = jax.eval_shape(init_fn)
    self.state = sharding.state_shardings(abstract, self.mesh, min_size)
    self.scanned = bool(config.model.get("scan_layers", False))
    stored = jax.eval_shape(layers.to_per_layer, abstract) if self.scanned else abstract
    self.stored = sharding.state_shardings(stored, self.mesh, min_size)
    self.abstract_stored = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), stored, self.stored)
    if self.scanned:
      self.to_stored = jax.jit(layers.to_per_layer, out_shardings=self.stored)
      self.from_stored = jax.jit(layers.to_scanned, out_shardings=self.state)
    else:
      self.to_stored = self.from_stored = lambda state: state

  def place_batch(self, local: dict[str, Any]) -> dict[str, jax.Array]:
    """This process's slice of a batch -> the global, sharded batch."""
    return sharding.global_batch(local, self.mesh)


class _FiniteCheck:
  """Checks each step's loss and gradient norm, one step late so the device is not waited for.

  `nonfinite` = "stop" raises NonFiniteError; "skip" (the step already kept the old state)
  logs the step and counts it in `skipped`.
  """

  def __init__(self, nonfinite: str, logger: logging.Logger):
    self.skip, self.logger = nonfinite == "skip", logger
    self.pending: tuple[int, dict[str, Any]] | None = None
    self.skipped = 0

  def push(self, step: int, metrics: dict[str, Any]) -> None:
    """Checks the previous step, then holds this one."""
    self.flush()
    self.pending = (step, metrics)

  def flush(self) -> None:
    """Checks the held step now."""
    if self.pending is None:
      return
    step, metrics = self.pending
    self.pending = None
    values = jax.device_get([metrics["train/loss"], metrics["train/grad_norm"]])
    bad = [f"{name} {float(v)}" for name, v in zip(("loss", "gradient norm"), values,
                                                          strict=True)
           if not math.isfinite(v)]
    if not bad:
      return
    if not self.skip:
      raise NonFiniteError(
          f"step {step} has a non-finite {' and '.join(bad)}; stopped, and nothing of this step "
          "was saved (resume from the last checkpoint with a lower lr, or set "
          "--config.nonfinite=skip to skip such updates)")
    self.skipped += 1
    self.logger.warning("step %d: non-finite %s; update skipped (%d skipped)", step,
                        " and ".join(bad), self.skipped)


def _restore_or_init(config: Any, where: Placement, init: Any, checkpoints: Checkpointer,
                     source: Pretrained | None, logger: logging.Logger) -> tuple[int, Any]:
  """(start step, state): the newest readable checkpoint, else fresh or `source`'s weights."""
  restored = checkpoints.restore_readable(where.abstract_stored, logger)
  if restored is not None:
    start, stored = restored
    logger.info("Resuming from step %d (checkpoint %s/%d)", start, checkpoints.directory, start)
    return start, where.from_stored(stored)
  state = init()
  if source is not None:
    stored = where.to_stored(state)
    params = initial_params(config, source, multihost.host_copy(stored.params))
    stored = step_lib.TrainState(step=stored.step, params=params, opt_state=stored.opt_state)
    state = where.from_stored(jax.device_put(stored, where.stored))
  logger.info("Starting at step 0 of %d", config.total_steps)
  return 0, state


def train(config: Any, data: Dataset, workdir: str, stop: StopRequest | None = None,
          source: Pretrained | None = None) -> dict[str, float]:
  """Trains to `config.total_steps`, resuming from the newest checkpoint; returns the last row.

  A run without a checkpoint starts from `source`'s parameters when given (`init_from`).
  When `stop` records a request (a signal), the run saves a checkpoint after the current step,
  waits for it to be committed and raises Interrupted.
  """
  logger = logging.getLogger(LOGGER)
  lead = jax.process_index() == 0
  total = config.total_steps

  model, schedule, tx, init_fn = components(config)
  image_shape = (config.image_size, config.image_size, config.image_channels)
  where = Placement(config, init_fn)
  init = jax.jit(init_fn, out_shardings=where.state)

  checkpoints = Checkpointer(workdir, config.checkpoint_every, config.keep_checkpoints)
  latest = checkpoints.latest_step() or 0
  if latest >= total:  # before restoring anything or opening the writers
    logger.info("Run already finished at step %d of %d", latest, total)
    checkpoints.close()
    return {}
  try:
    start, state = _restore_or_init(config, where, init, checkpoints, source, logger)
  except BaseException:
    checkpoints.close()
    raise
  writer = MetricWriter(workdir, write=lead)
  writer.truncate_after(start if start else -1)  # a fresh start keeps no row, not even step 0

  nonfinite = config.get("nonfinite", "stop")
  state_sh, param_sh, repl = where.state, where.state.params, where.replicated
  matmul_model = (config.get("cpu_matmul", "auto"), jax.default_backend(),
                  *registry.family_and_width(config.model))
  train_step = jax.jit(
      step_lib.make_train_step(model, tx, schedule, loss=config.loss,
                               accum_steps=config.accum_steps, seed=config.seed,
                               label_smoothing=config.get("label_smoothing", 0.0),
                               mixing=mix.Settings(config.get("mixup_alpha", 0.0),
                                                   config.get("cutmix_alpha", 0.0),
                                                   config.get("mix_prob", 1.0),
                                                   config.get("mix_switch_prob", 0.5)),
                               grad_shardings=param_sh, skip_nonfinite=nonfinite == "skip",
                               chains=chunks.train_chains(
                                   config.get("train_chains", 0), model, image_shape,
                                   config.batch_size // config.accum_steps // where.mesh.size,
                                   jax.default_backend())),
      in_shardings=(state_sh, where.batch), out_shardings=(state_sh, repl), donate_argnums=0,
      compiler_options=cpu_matmul.compiler_options(*matmul_model))
  per_pass = chunks.images_per_pass(config.get("infer_chunk", 0), model, image_shape,
                                    jax.default_backend())
  devices = where.mesh.size
  forward_options = cpu_matmul.inference_options(*matmul_model)
  eval_step = multihost.one_at_a_time(jax.jit(
      step_lib.make_eval_step(model, loss=config.loss, images_per_pass=per_pass,
                              devices=devices),
      in_shardings=(param_sh, where.batch), out_shardings=repl,
      compiler_options=forward_options), devices)
  feature_step = multihost.one_at_a_time(jax.jit(
      fewshot.make_feature_step(model, per_pass, devices), in_shardings=(param_sh, where.batch),
      out_shardings=repl, compiler_options=forward_options), devices)
  place = where.place_batch
  finite = _FiniteCheck(nonfinite, logger)
  if start == 0 and source is not None and config.fewshot.shots:
    # The features fine-tuning starts from (the source's, on this data at this resolution).
    shots = fewshot.evaluate(feature_step, state.params, data, config.fewshot, place)
    writer.row(0, shots)
    logger.info("step 0/%d  few-shot of the initial parameters %s", total,
                "  ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in shots.items()))

  batches = data.train_batches(start)
  progress = tqdm.tqdm(total=total, initial=start, disable=not lead, unit="step",
                       dynamic_ncols=True)
  row: dict[str, float] = {}
  window_start, window_steps, window_skipped = None, 0, 0
  window_wait, unread = 0.0, 0  # seconds waiting for input; examples the input could not read
  try:
    if stop is not None and multihost.any_process(stop.signal_name is not None):
      raise Interrupted(start, stop.signal_name or "another process's stop request", False)
    for step in range(start + 1, total + 1):
      waited = time.perf_counter()
      local = next(batches)
      waited = time.perf_counter() - waited
      unread += int(local["mask"].size - local["mask"].sum())
      state, metrics = train_step(state, place(local))
      finite.push(step, metrics)
      if window_start is None:  # the first step includes compilation: time from its end
        jax.block_until_ready(metrics)
        window_start = time.perf_counter()
      else:
        window_steps += 1
        window_wait += waited
      row = {}
      log_now = step % config.log_every == 0 or step == total
      eval_now = (config.eval_every > 0 and step % config.eval_every == 0) or step == total
      save_now = checkpoints.due(step, force=step == total)
      # A collective in multi-process runs: every process stops after the same step.
      stop_now = stop is not None and step < total and multihost.any_process(
          stop.signal_name is not None)
      if log_now or eval_now or save_now or stop_now:
        finite.flush()  # nothing non-finite is logged as a result, evaluated or saved
      if log_now:
        checkpoints.check()  # a background write that has failed by now stops the run
        row.update(jax.device_get(metrics))
        elapsed = time.perf_counter() - window_start
        img_per_sec = window_steps * config.batch_size / elapsed if window_steps else 0.0
        eta = None
        if img_per_sec:  # unknown until a step after the compiling one has been timed
          row["train/img_per_sec"] = img_per_sec
          eta = (total - step) * config.batch_size / img_per_sec
        if finite.skip:
          row["train/skipped"] = finite.skipped - window_skipped
          window_skipped = finite.skipped
        row["data/skipped"] = multihost.total(unread)  # a collective: every process logs here
        row["data/wait_fraction"] = window_wait / elapsed if window_steps else 0.0
        unread = 0
        progress.set_postfix(loss=f"{row['train/loss']:.4f}", img_s=f"{img_per_sec:.0f}")
        logger.info("step %d/%d  loss %.4f  lr %.3g  %.0f img/s  input wait %.0f%%  ETA %s",
                    step, total, row["train/loss"], row["train/lr"], img_per_sec,
                    100 * row["data/wait_fraction"],
                    "?" if eta is None else tqdm.tqdm.format_interval(eta))
        window_start, window_steps, window_wait = time.perf_counter(), 0, 0.0
      if stop_now:  # written (asynchronously) before a possibly long evaluation
        checkpoints.save(step, where.to_stored(state), force=True)
      if eval_now:
        result = evaluate(eval_step, state.params, data.eval_batches(), place)
        row.update({"eval/accuracy": result["accuracy"], "eval/loss": result["loss"]})
        logger.info("step %d/%d  eval accuracy %.4f  loss %.4f  (%d examples)", step, total,
                    result["accuracy"], result["loss"], result["count"])
        if config.fewshot.shots:
          shots = fewshot.evaluate(feature_step, state.params, data, config.fewshot, place)
          row.update(shots)
          logger.info("step %d/%d  few-shot %s", step, total,
                      "  ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in shots.items()))
        window_start, window_steps, window_wait = time.perf_counter(), 0, 0.0
      if row:
        writer.row(step, row)
      if save_now and not stop_now:
        checkpoints.save(step, where.to_stored(state), force=True)
      progress.update(1)
      if stop_now:
        raise Interrupted(step, stop.signal_name or "another process's stop request", True)
    finite.flush()
  finally:
    progress.close()
    writer.close()
    # Commits pending writes, also when interrupted. A write that failed is raised in place of
    # whatever else ended the loop: the checkpoint that exception may promise does not exist.
    checkpoints.close()
  return row
