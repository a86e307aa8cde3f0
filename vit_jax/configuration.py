"""Resolving and checking a run's config before any work is done.

`resolve_model` fills the architecture from the preset named by `model.name` (explicit values
win); `resolve_data` fills what depends on the dataset (`num_classes`, `total_steps`); `validate`
collects every problem it can see without data. None of them touches the workdir.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import ml_collections

from vit_jax.data import preprocess
from vit_jax.io import posemb_resize
from vit_jax.models import attention, posemb
from vit_jax.models.presets import PRESETS
from vit_jax.models.vit import POOLS, check_memory_options
from vit_jax.train import optim, sharding, step

ARCH_KEYS = ("patch_size", "hidden_size", "num_layers", "num_heads", "mlp_dim")
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
  """The config cannot be run as given."""


def resolve_model(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Returns an unlocked copy with the model's architecture filled in from its preset."""
  config = ml_collections.ConfigDict(config.to_dict())
  model = config.model
  preset = PRESETS.get(model.name)
  missing = [k for k in ARCH_KEYS if model.get(k) is None]
  if missing and preset is None:
    raise ConfigError(
        f"model.name '{model.name}' is not a preset and model.{missing[0]} is unset; use one of "
        f"{', '.join(PRESETS)} or set model.{', model.'.join(missing)}")
  for key in missing:
    model[key] = getattr(preset, key)
  return config


def resolve_data(config: ml_collections.ConfigDict, *, num_train: int, num_classes: int,
                 splits: tuple[str, str] = ("train", "test")) -> ml_collections.ConfigDict:
  """Fills `num_classes`, the splits and `total_steps` (from `num_epochs`) where unset."""
  config.train_split, config.eval_split = splits
  if config.num_classes is None:
    config.num_classes = num_classes
  if config.total_steps is None:
    config.total_steps = max(1, math.ceil(config.num_epochs * num_train / config.batch_size))
  if config.warmup_steps >= config.total_steps:
    raise ConfigError(f"warmup_steps {config.warmup_steps} is not below total_steps "
                      f"{config.total_steps}; lower --config.warmup_steps")
  return config


def _lookup(config: ml_collections.ConfigDict, dotted: str) -> Any:
  for part in dotted.split("."):
    config = config[part]
  return config


def _choice(problems: list[str], key: str, value: Any, choices: tuple[str, ...]) -> None:
  if value not in choices:
    problems.append(f"{key} '{value}' is not one of {', '.join(choices)}")


def validate(config: ml_collections.ConfigDict, *, device_count: int,
             process_count: int = 1, backend: str = "cpu") -> None:
  """Raises ConfigError naming every problem found (resolve the model first).

  `backend` is JAX's default backend (cpu, gpu, tpu), for options only some backends offer.
  """
  problems = []
  m = config.model
  positive = ["image_size", "batch_size", "accum_steps", "lr", "num_epochs", "log_every",
              "checkpoint_every", "keep_checkpoints", "model.patch_size", "model.hidden_size",
              "model.num_layers", "model.num_heads", "model.mlp_dim"]
  non_negative = ["seed", "warmup_steps", "eval_every", "weight_decay", "grad_clip_norm",
                  "model.representation_size"]
  for key in positive:
    if _lookup(config, key) <= 0:
      problems.append(f"{key} must be positive, got {_lookup(config, key)}")
  for key in non_negative:
    if _lookup(config, key) < 0:
      problems.append(f"{key} must be at least 0, got {_lookup(config, key)}")
  for key in ("dropout", "attention_dropout"):
    if not 0.0 <= m[key] < 1.0:
      problems.append(f"model.{key} must be in [0, 1), got {m[key]}")
  if config.num_classes is not None and config.num_classes <= 0:
    problems.append(f"num_classes must be positive, got {config.num_classes}")
  if config.total_steps is not None and config.total_steps <= 0:
    problems.append(f"total_steps must be positive, got {config.total_steps}")
  if problems:  # the checks below divide by these values
    raise ConfigError("; ".join(problems))
  p, size = m.patch_size, config.image_size
  if size % p:
    problems.append(f"image_size {size} is not divisible by model.patch_size {p}; use a multiple "
                    f"of {p} such as {max(1, round(size / p)) * p}")
  if m.hidden_size % m.num_heads:
    problems.append(f"model.hidden_size {m.hidden_size} is not divisible by model.num_heads "
                    f"{m.num_heads}")
  b, a = config.batch_size, config.accum_steps
  if b % a:
    problems.append(f"batch_size {b} is not divisible by accum_steps {a}")
  elif (b // a) % device_count:
    problems.append(f"the micro-batch batch_size/accum_steps = {b // a} is not divisible by the "
                    f"{device_count} devices; use a batch_size that is a multiple of "
                    f"{device_count * a}")
  if b % process_count:
    problems.append(f"batch_size {b} is not divisible by the {process_count} processes")
  try:
    sharding.mesh_shape(config.mesh.data, config.mesh.fsdp, device_count)
  except ValueError as e:
    problems.append(str(e))
  if config.mesh.fsdp_min_size < 0:
    problems.append(f"mesh.fsdp_min_size must be at least 0, got {config.mesh.fsdp_min_size}")
  for problem in (attention.check(m.attention, m.attention_dropout, backend=backend,
                                  dtype=m.dtype, relative=m.posemb == "relative"),
                  check_memory_options(m.remat, m.scan_layers, m.posemb_mode)):
    if problem:
      problems.append(f"model.{problem}")
  posemb_problem = posemb.check(m.posemb, m.posemb_mode, m.hidden_size)
  if posemb_problem:
    problems.append(f"model.{posemb_problem}")
  _choice(problems, "model.pool", m.pool, POOLS)
  _choice(problems, "posemb_resample", config.posemb_resample, posemb_resize.METHODS)
  fs = config.fewshot
  if any(not isinstance(k, int) or k <= 0 for k in fs.shots):
    problems.append(f"fewshot.shots must be positive integers, got {tuple(fs.shots)}")
  if fs.draws <= 0 or fs.pool <= 0 or fs.l2 < 0:
    problems.append(f"fewshot.draws and fewshot.pool must be positive and fewshot.l2 at least 0, "
                    f"got {fs.draws}, {fs.pool}, {fs.l2}")
  if config.init_from and not os.path.isdir(config.init_from):
    problems.append(f"init_from {config.init_from} is not a directory; give a training run's "
                    "workdir")
  _choice(problems, "model.dtype", m.dtype, DTYPES)
  _choice(problems, "optimizer", config.optimizer, optim.OPTIMIZERS)
  _choice(problems, "moment_dtype", config.moment_dtype, optim.MOMENT_DTYPES)
  _choice(problems, "decay", config.decay, optim.DECAYS)
  _choice(problems, "loss", config.loss, step.LOSSES)
  _choice(problems, "augment", config.augment, preprocess.AUGMENTS)
  _choice(problems, "image_channels", str(config.image_channels), ("1", "3"))
  if problems:
    raise ConfigError("; ".join(problems))


def to_json(config: ml_collections.ConfigDict) -> str:
  """The config as stable, indented JSON (what config.json holds)."""
  return json.dumps(json.loads(config.to_json()), indent=2, sort_keys=True) + "\n"


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


# Settings that change how a run is laid out on the devices, not what it computes: a run may be
# resumed with other values (e.g. on another number of devices). A trailing dot is a section.
LAYOUT_KEYS = ("mesh.", "model.attention", "model.remat", "model.scan_layers")
# Keys added after runs were already written, with the value those runs used.
ADDED_KEYS: dict[str, Any] = {"moment_dtype": "float32"}


def _is_layout(key: str) -> bool:
  return any(key.startswith(k) if k.endswith(".") else key == k for k in LAYOUT_KEYS)


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> bool:
  """Returns whether `workdir` holds an earlier run of this config; raises if it holds another.

  Layout settings (`LAYOUT_KEYS`) are not compared. A key in `ADDED_KEYS` that the earlier
  run's config.json lacks (written before the key existed) is compared with the value that run
  used.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"workdir {workdir} exists and is not a directory; choose another --workdir")
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    if os.path.exists(os.path.join(workdir, "checkpoints")):
      raise ConfigError(f"workdir {workdir} has checkpoints but no config.json, so they cannot be "
                        "checked against this config; choose another --workdir")
    return False
  try:
    with open(path) as f:
      old = _flatten(json.load(f))
  except (OSError, ValueError) as e:
    raise ConfigError(f"cannot read {path} ({e}); choose another --workdir") from None
  new = _flatten(json.loads(config.to_json()))
  for key, value in ADDED_KEYS.items():
    old.setdefault(key, value)
  keys = sorted(k for k in set(old) | set(new) if not _is_layout(k))
  diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
  if diff:
    shown = ", ".join(diff[:4]) + (f" and {len(diff) - 4} more" if len(diff) > 4 else "")
    raise ConfigError(f"workdir {workdir} holds a run with a different config ({shown}); use a "
                      "new --workdir, or repeat that run's settings to resume it")
  return True
