"""Resolving and checking a run's config before any work is done.

`resolve_model` fills the architecture from the preset named by `model.name` (explicit values
win); `resolve_data` fills what depends on the dataset (`num_classes`, `total_steps`); `validate`
checks every key against `vit_jax.config_schema` and their relations, and reports every problem
it can see without data at once. `check_workdir` reads the workdir but writes nothing to it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import ml_collections

from vit_jax import config_schema
from vit_jax.config_schema import SCHEMA
from vit_jax.models import registry
from vit_jax.train import sharding


class ConfigError(ValueError):
  """The config cannot be run as given."""


def resolve_model(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Returns an unlocked copy with the model's size fields filled in from its preset.

  `model.name` must be a registered preset or a family's custom name (`ViT-custom`) with every
  size field set; anything else is a ConfigError naming the closest presets. The section keeps
  only its family's keys (`registry.fit_to_family`); a key of another family set to a value of
  its own is a ConfigError.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  model = config.get("model")
  if not isinstance(model, ml_collections.ConfigDict):
    raise ConfigError(f"model must be a section of keys (configs/models.py's model_config()), "
                      f"got {config_schema.show(model)}")
  name = model.get("name")
  if not isinstance(name, str):
    raise ConfigError(f"model.name must be a string, got {config_schema.show(name)}; use a "
                      "preset such as ViT-B/16 (python -m vit_jax.models lists them)")
  try:
    fitted, problems, dropped = registry.fit_to_family(model.to_dict())
    if problems:
      raise ConfigError("; ".join(problems))
    if dropped:
      logging.getLogger(__name__).warning(
          "%s does not use %s (sizes of another family); dropped", name, ", ".join(dropped))
    fitted.update(registry.arch_values(fitted))
  except registry.ModelNameError as e:
    raise ConfigError(str(e)) from None
  config.model = ml_collections.ConfigDict(fitted)
  return config


def name_from_command_line(config: ml_collections.ConfigDict,
                           overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """`config` with the config file's size fields unset where the command line (`overrides`,
  flat keys) named a preset, so that the preset's sizes replace the file's; the size fields
  the command line set stay. A custom name keeps the file's sizes."""
  name = overrides.get("model.name")
  if not isinstance(name, str):
    return config
  try:
    family = registry.family_of(name)
  except registry.ModelNameError:
    return config  # resolve_model names the closest presets
  if name not in family.presets:
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  for key in family.arch_keys:
    if f"model.{key}" not in overrides and key in config.model:
      config.model[key] = None
  return config


def _warmup_problem(warmup_steps: int, total_steps: int) -> str | None:
  if warmup_steps >= total_steps:
    return (f"warmup_steps {warmup_steps} is not below total_steps {total_steps}; lower "
            "--config.warmup_steps")
  return None


def resolve_data(config: ml_collections.ConfigDict, *, num_train: int, num_classes: int,
                 splits: tuple[str, str] = ("train", "test")) -> ml_collections.ConfigDict:
  """Fills `num_classes`, the splits and `total_steps` (from `num_epochs`) where unset."""
  config.train_split, config.eval_split = splits
  if config.num_classes is None:
    config.num_classes = num_classes
  if config.total_steps is None:
    config.total_steps = max(1, math.ceil(config.num_epochs * num_train / config.batch_size))
  problem = _warmup_problem(config.warmup_steps, config.total_steps)
  if problem:
    raise ConfigError(problem)
  return config


def _init_from_problem(path: str) -> str | None:
  fix = ("give a training run's workdir or a .npz parameter file (or a .safetensors file of a "
         "timm ViT, timm's TNT or the T2T-ViT authors')")
  if not os.path.exists(path):
    return f"init_from {path} does not exist; {fix}"
  if not os.path.isdir(path) and not (os.path.isfile(path)
                                      and path.endswith((".npz", ".safetensors"))):
    return f"init_from {path} is neither a directory nor a .npz file nor a .safetensors file; {fix}"
  return None


def _relations(v: dict[str, Any], device_count: int, process_count: int,
               backend: str) -> list[str]:
  """Problems between keys, or with this machine; `v` holds only values that passed alone."""

  def have(*keys: str) -> bool:  # a check is skipped where a value it needs is bad or unset
    return all(v.get(key) is not None for key in keys)

  problems = []
  if have("batch_size", "accum_steps"):
    b, a = v["batch_size"], v["accum_steps"]
    if b % a:
      problems.append(f"batch_size {b} is not divisible by accum_steps {a}")
    elif (b // a) % device_count:
      problems.append(f"the micro-batch batch_size/accum_steps = {b // a} is not divisible by "
                      f"the {device_count} devices; use a batch_size that is a multiple of "
                      f"{device_count * a}")
    elif v.get("train_chains") and (b // a // device_count) % v["train_chains"]:
      problems.append(f"train_chains {v['train_chains']} does not divide the "
                      f"{b // a // device_count} images per device and micro-batch; use a "
                      f"divisor of it, or 0 (auto)")
  if have("batch_size") and v["batch_size"] % process_count:
    problems.append(f"batch_size {v['batch_size']} is not divisible by the {process_count} "
                    "processes")
  if have("warmup_steps", "total_steps"):
    problems.append(_warmup_problem(v["warmup_steps"], v["total_steps"]))
  if have("mesh.data", "mesh.fsdp"):
    try:
      sharding.mesh_shape(v["mesh.data"], v["mesh.fsdp"], device_count)
    except ValueError as e:
      problems.append(str(e))
  if have("eval_resize_small", "image_size") and 0 < v["eval_resize_small"] < v["image_size"]:
    problems.append(f"eval_resize_small {v['eval_resize_small']} is below image_size "
                    f"{v['image_size']}; use 0 (resize the whole image) or at least "
                    f"{v['image_size']}")
  problems += registry.check(v, backend)
  if v.get("init_from"):
    problems.append(_init_from_problem(v["init_from"]))
  return [p for p in problems if p]


def validate(config: ml_collections.ConfigDict, *, device_count: int,
             process_count: int = 1, backend: str = "cpu") -> None:
  """Raises one ConfigError naming every problem found (resolve the model first).

  Each key is checked for its type and range (`config_schema.SCHEMA`), unknown and missing
  keys are reported, then the relations between keys that passed (divisibility, the device
  mesh, attention on this backend). `backend` is JAX's default backend (cpu, gpu, tpu), for
  options only some backends offer.
  """
  values, problems = config_schema.read(config)
  ok = {}
  for key, field in SCHEMA.items():
    if key in values:
      problem = config_schema.check_value(key, field, values[key])
      if problem:
        problems.append(problem)
      else:
        ok[key] = values[key]
  problems += _relations(ok, device_count, process_count, backend)
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


# Settings that change how a run is laid out on the devices or in memory, not what it computes: a
# run may be resumed with other values (e.g. on another number of devices). A trailing dot is a
# section.
LAYOUT_KEYS = ("mesh.", "infer_chunk", "train_chains", "host_memory", "cpu_matmul",
               "model.attention", "model.remat", "model.scan_layers")
# Settings of what a run does when something goes wrong, which may also change on resuming: e.g.
# a run that stopped on a non-finite loss is resumed with nonfinite=skip.
RECOVERY_KEYS = ("nonfinite", "bad_images", "data_workers")


def _family_default(key: str) -> Callable[[dict[str, Any]], Any]:
  """The value a run's model family had for `key` before the key existed: its default."""
  return lambda flat: registry.family_of(flat["model.name"]).defaults[key]


# Keys added after runs were already written, with the value those runs used (or a function of
# the new config giving it). Only keys the new config has are filled in.
ADDED_KEYS: dict[str, Any] = {"moment_dtype": "float32", "nonfinite": "stop",
                              "eval_resize_small": 0, "bad_images": "skip", "data_workers": 0,
                              "reset_head": False, "model.gelu": "tanh",
                              "model.layernorm_epsilon": 1e-6, "label_smoothing": 0.0,
                              "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "mix_prob": 1.0,
                              "mix_switch_prob": 0.5, "model.drop_path": 0.0,
                              "model.posemb": _family_default("posemb"),
                              "model.posemb_mode": "stem"}


def _may_change(key: str) -> bool:
  return any(key.startswith(k) if k.endswith(".") else key == k
             for k in LAYOUT_KEYS + RECOVERY_KEYS)


def _unwritable(workdir: str) -> str | None:
  """Why `workdir` cannot be written (or created), or None."""
  existing = os.path.abspath(workdir)
  while not os.path.exists(existing) and os.path.dirname(existing) != existing:
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    return (f"workdir {workdir} cannot be created: {existing} is not a directory; choose another "
            "--workdir")
  if not os.access(existing, os.W_OK | os.X_OK):
    return (f"workdir {workdir} is not writable (permission denied on {existing}); choose "
            "another --workdir or fix its permissions")
  return None


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> bool:
  """Returns whether `workdir` holds an earlier run of this config; raises if it holds another.

  The workdir, or the nearest existing parent it would be created in, must be writable.
  Layout and recovery settings (`LAYOUT_KEYS`, `RECOVERY_KEYS`) are not compared. A key in
  `ADDED_KEYS` that the earlier run's config.json lacks (written before the key existed) is
  compared with the value that run used.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"workdir {workdir} exists and is not a directory; choose another --workdir")
  problem = _unwritable(workdir)
  if problem:
    raise ConfigError(problem)
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
    if key in new:
      old.setdefault(key, value(new) if callable(value) else value)
  keys = sorted(k for k in set(old) | set(new) if not _may_change(k))
  diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
  if diff:
    shown = ", ".join(diff[:4]) + (f" and {len(diff) - 4} more" if len(diff) > 4 else "")
    raise ConfigError(f"workdir {workdir} holds a run with a different config ({shown}); use a "
                      "new --workdir, or repeat that run's settings to resume it")
  return True
