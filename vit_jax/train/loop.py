"""The training loop: initialise or resume, step, log, evaluate, checkpoint."""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import tqdm

from vit_jax.data.pipeline import Dataset
from vit_jax.evaluate import fewshot
from vit_jax.evaluate.classification import evaluate
from vit_jax.io import layers, posemb_resize
from vit_jax.models.vit import VisionTransformer
from vit_jax.train import multihost, optim, sharding
from vit_jax.train import step as step_lib
from vit_jax.train.checkpoint import Checkpointer, load_run_params
from vit_jax.train.metrics import LOGGER, MetricWriter


def model_from_config(model: Any, num_classes: int) -> VisionTransformer:
  """Builds the ViT described by a resolved `config.model`."""
  return VisionTransformer(
      num_classes=num_classes,
      patch_size=model.patch_size,
      hidden_size=model.hidden_size,
      num_layers=model.num_layers,
      num_heads=model.num_heads,
      mlp_dim=model.mlp_dim,
      posemb=model.posemb,
      posemb_mode=model.posemb_mode,
      pool=model.pool,
      representation_size=model.representation_size,
      dropout=model.dropout,
      attention_dropout=model.attention_dropout,
      head_bias_init=model.head_bias_init,
      # Runs written before these options existed used Flax's attention and no remat or scan.
      attention=model.get("attention", "plain"),
      remat=model.get("remat", "none"),
      scan_layers=model.get("scan_layers", False),
      dtype=jnp.dtype(model.dtype),
  )


def _grid(config: Any) -> tuple[int, int]:
  side = config["image_size"] // config["model"]["patch_size"]
  return side, side


def initial_params(config: Any, params: Any) -> Any:
  """`params` replaced by those of the run `config.init_from`, adapted to this model's grid."""
  logger = logging.getLogger(LOGGER)
  source_config, source = load_run_params(config.init_from)
  old, new = _grid(source_config), _grid(config)
  adapted, fresh = posemb_resize.adapt_params(source, multihost.host_copy(params), old, new,
                                              config.posemb_resample)
  logger.info("Initialised from %s (patch grid %dx%d -> %dx%d%s)", config.init_from, *old, *new,
              f"; new {', '.join(fresh)}" if fresh else "")
  return adapted


def _fmt_eta(seconds: float | None) -> str:
  if seconds is None:
    return "--:--:--"
  minutes, secs = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{secs:02d}"


def components(config: Any) -> tuple[VisionTransformer, Any, Any, Any]:
  """(model, lr schedule, optimizer, init_fn() -> initial TrainState) of a resolved config."""
  model = model_from_config(config.model, config.num_classes)
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


def train(config: Any, data: Dataset, workdir: str) -> dict[str, float]:
  """Trains to `config.total_steps`, resuming from the newest checkpoint; returns the last row."""
  logger = logging.getLogger(LOGGER)
  lead = jax.process_index() == 0
  total = config.total_steps

  model, schedule, tx, init_fn = components(config)
  where = Placement(config, init_fn)
  init = jax.jit(init_fn, out_shardings=where.state)

  checkpoints = Checkpointer(workdir, config.checkpoint_every, config.keep_checkpoints)
  start = checkpoints.latest_step() or 0
  if start >= total:  # before restoring anything or opening the writers
    logger.info("Run already finished at step %d of %d", start, total)
    checkpoints.close()
    return {}
  if start:
    state = where.from_stored(checkpoints.restore(where.abstract_stored, start))
    logger.info("Resuming from step %d (checkpoint %s/%d)", start, checkpoints.directory, start)
  else:
    state = init()
    if config.init_from:
      stored = where.to_stored(state)
      params = initial_params(config, stored.params)
      stored = step_lib.TrainState(step=stored.step, params=params, opt_state=stored.opt_state)
      state = where.from_stored(jax.device_put(stored, where.stored))
    logger.info("Starting at step 0 of %d", total)
  writer = MetricWriter(workdir, write=lead)
  writer.truncate_after(start)

  state_sh, param_sh, repl = where.state, where.state.params, where.replicated
  train_step = jax.jit(
      step_lib.make_train_step(model, tx, schedule, loss=config.loss,
                               accum_steps=config.accum_steps, seed=config.seed,
                               grad_shardings=param_sh),
      in_shardings=(state_sh, where.batch), out_shardings=(state_sh, repl), donate_argnums=0)
  eval_step = multihost.one_at_a_time(jax.jit(
      step_lib.make_eval_step(model, loss=config.loss), in_shardings=(param_sh, where.batch),
      out_shardings=repl))
  feature_step = multihost.one_at_a_time(jax.jit(
      fewshot.make_feature_step(model), in_shardings=(param_sh, where.batch),
      out_shardings=repl))
  place = where.place_batch

  batches = data.train_batches(start)
  progress = tqdm.tqdm(total=total, initial=start, disable=not lead, unit="step",
                       dynamic_ncols=True)
  row: dict[str, float] = {}
  window_start, window_steps = None, 0
  try:
    for step in range(start + 1, total + 1):
      state, metrics = train_step(state, place(next(batches)))
      if window_start is None:  # the first step includes compilation: time from its end
        jax.block_until_ready(metrics)
        window_start = time.perf_counter()
      else:
        window_steps += 1
      row = {}
      if step % config.log_every == 0 or step == total:
        row.update(jax.device_get(metrics))
        elapsed = time.perf_counter() - window_start
        img_per_sec = window_steps * config.batch_size / elapsed if window_steps else 0.0
        eta = None
        if img_per_sec:  # unknown until a step after the compiling one has been timed
          row["train/img_per_sec"] = img_per_sec
          eta = (total - step) * config.batch_size / img_per_sec
        progress.set_postfix(loss=f"{row['train/loss']:.4f}", img_s=f"{img_per_sec:.0f}")
        logger.info("step %d/%d  loss %.4f  lr %.3g  %.0f img/s  ETA %s", step, total,
                    row["train/loss"], row["train/lr"], img_per_sec, _fmt_eta(eta))
        window_start, window_steps = time.perf_counter(), 0
      if (config.eval_every > 0 and step % config.eval_every == 0) or step == total:
        result = evaluate(eval_step, state.params, data.eval_batches(), place)
        row.update({"eval/accuracy": result["accuracy"], "eval/loss": result["loss"]})
        logger.info("step %d/%d  eval accuracy %.4f  loss %.4f  (%d examples)", step, total,
                    result["accuracy"], result["loss"], result["count"])
        if config.fewshot.shots:
          shots = fewshot.evaluate(feature_step, state.params, data, config.fewshot, place)
          row.update(shots)
          logger.info("step %d/%d  few-shot %s", step, total,
                      "  ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in shots.items()))
        window_start, window_steps = time.perf_counter(), 0
      if row:
        writer.row(step, row)
      if checkpoints.due(step, force=step == total):
        checkpoints.save(step, where.to_stored(state), force=True)
      progress.update(1)
  finally:
    progress.close()
    checkpoints.close()  # commits pending writes, also when interrupted
    writer.close()
  return row
