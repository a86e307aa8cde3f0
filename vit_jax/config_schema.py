"""Every key of a run's config with its type and the values it may take.

`SCHEMA` maps each dotted key of configs/common.py (its `model` section from configs/models.py)
to a `Field`. `read` finds the keys a config has (and the unknown and missing ones);
`check_value` checks one value on its own. Rules that need other keys or the machine
(divisibility, the device mesh, attention on this backend, `init_from` on disk) are checked by
`vit_jax.configuration.validate`; a field's `see` names that check.
"""

from __future__ import annotations

import difflib
import math
import numbers
from typing import Any, NamedTuple

import ml_collections

from vit_jax.data import types as data_types
from vit_jax.io import posemb_resize
from vit_jax.models import registry
from vit_jax.models.mlp import GELUS
from vit_jax.models.t2t import T2T_LAYERS
from vit_jax.models.vit import POOLS
from vit_jax.train import cpu_matmul, host_memory, optim, step

INT, FLOAT, STR, BOOL, INTS = "int", "float", "str", "bool", "ints"
# Rules on a value alone; a tuple of choices is a rule too.
POSITIVE, AT_LEAST_0, UNIT, NOT_EMPTY = "positive", "at least 0", "in [0, 1)", "not empty"
PROBABILITY = "in [0, 1]"
# The size fields of every family (filled from a preset when unset).
ARCH_KEYS = tuple(dict.fromkeys(key for f in registry.FAMILIES for key in f.arch_keys))
DTYPES = ("float32", "bfloat16", "float16")
NONFINITE = ("stop", "skip")  # what a non-finite loss or gradient norm does


class Field(NamedTuple):
  """One config key: its type, the values it may take, and whether None is allowed."""

  kind: str  # INT (a bool is not one), FLOAT (an int is fine), STR, BOOL, INTS (tuple of ints)
  # "" (any value of the kind), POSITIVE, AT_LEAST_0, UNIT, PROBABILITY, NOT_EMPTY
  rule: str | tuple = ""
  optional: bool = False  # a placeholder that is None until the data or the preset fills it
  see: str = ""  # the check of validate that also involves other keys


SCHEMA: dict[str, Field] = {
    # Data.
    "dataset": Field(STR, NOT_EMPTY),
    "data_dir": Field(STR, optional=True),
    "manual_dir": Field(STR, optional=True),
    "download": Field(BOOL),
    "train_split": Field(STR, optional=True),
    "eval_split": Field(STR, optional=True),
    "num_classes": Field(INT, POSITIVE, optional=True),
    "image_size": Field(INT, POSITIVE, see="divisible by model.patch_size"),
    "image_channels": Field(INT, (1, 3)),
    "augment": Field(STR, data_types.AUGMENTS),
    "eval_resize_small": Field(INT, AT_LEAST_0, see="0 or at least image_size"),
    "bad_images": Field(STR, data_types.BAD_IMAGES),
    "data_workers": Field(INT, AT_LEAST_0),
    # Schedule.
    "batch_size": Field(INT, POSITIVE, see="divisible by accum_steps, devices and processes"),
    "accum_steps": Field(INT, POSITIVE),
    "num_epochs": Field(FLOAT, POSITIVE),
    "total_steps": Field(INT, POSITIVE, optional=True, see="above warmup_steps"),
    "seed": Field(INT, AT_LEAST_0),
    # Optimizer.
    "optimizer": Field(STR, optim.OPTIMIZERS),
    "lr": Field(FLOAT, POSITIVE),
    "warmup_steps": Field(INT, AT_LEAST_0),
    "decay": Field(STR, optim.DECAYS),
    "weight_decay": Field(FLOAT, AT_LEAST_0),
    "grad_clip_norm": Field(FLOAT, AT_LEAST_0),
    "adam_b1": Field(FLOAT, UNIT),
    "adam_b2": Field(FLOAT, UNIT),
    "momentum": Field(FLOAT, UNIT),
    "moment_dtype": Field(STR, optim.MOMENT_DTYPES),
    "loss": Field(STR, step.LOSSES),
    "nonfinite": Field(STR, NONFINITE),
    # Regularisation of the training targets (vit_jax.train.mix).
    "label_smoothing": Field(FLOAT, UNIT),
    "mixup_alpha": Field(FLOAT, AT_LEAST_0),
    "cutmix_alpha": Field(FLOAT, AT_LEAST_0),
    "mix_prob": Field(FLOAT, PROBABILITY),
    "mix_switch_prob": Field(FLOAT, PROBABILITY),
    # Few-shot evaluation.
    "fewshot.shots": Field(INTS, POSITIVE),
    "fewshot.draws": Field(INT, POSITIVE),
    "fewshot.pool": Field(INT, POSITIVE),
    "fewshot.l2": Field(FLOAT, AT_LEAST_0),
    # Starting from another run.
    "init_from": Field(STR, see="empty, a directory, a .npz or a .safetensors file"),
    "posemb_resample": Field(STR, posemb_resize.METHODS),
    "reset_head": Field(BOOL),
    # Devices.
    "mesh.data": Field(INT, see="sharding.mesh_shape"),
    "mesh.fsdp": Field(INT, see="sharding.mesh_shape"),
    "mesh.fsdp_min_size": Field(INT, AT_LEAST_0),
    "infer_chunk": Field(INT, AT_LEAST_0),
    "train_chains": Field(INT, AT_LEAST_0),
    "host_memory": Field(STR, host_memory.MODES),
    "cpu_matmul": Field(STR, cpu_matmul.MODES),
    # Logging and checkpoints.
    "log_every": Field(INT, POSITIVE),
    "eval_every": Field(INT, AT_LEAST_0),
    "checkpoint_every": Field(INT, POSITIVE),
    "keep_checkpoints": Field(INT, POSITIVE),
    # Model.
    "model.name": Field(STR, see="a registered preset, or a custom name with every size set"),
    **{f"model.{key}": Field(INT, POSITIVE, optional=True) for key in ARCH_KEYS},
    "model.resnet_layers": Field(INTS, POSITIVE, optional=True),
    "model.t2t_layer": Field(STR, T2T_LAYERS, optional=True),
    "model.t2t_kernels": Field(INTS, POSITIVE, see="t2t.check_config"),
    "model.t2t_strides": Field(INTS, POSITIVE, see="t2t.check_config"),
    "model.inner_stride": Field(INT, POSITIVE, see="tnt.check_config"),
    "model.posemb": Field(STR, see="posemb.check"),
    "model.posemb_mode": Field(STR, see="posemb.check"),
    "model.pool": Field(STR, POOLS),
    "model.representation_size": Field(INT, AT_LEAST_0),
    "model.dropout": Field(FLOAT, UNIT),
    "model.drop_path": Field(FLOAT, UNIT),
    "model.attention_dropout": Field(FLOAT, UNIT, see="attention.check"),
    "model.head_bias_init": Field(FLOAT),
    "model.dtype": Field(STR, DTYPES),
    "model.attention": Field(STR, see="attention.check"),
    "model.gelu": Field(STR, GELUS),
    "model.layernorm_epsilon": Field(FLOAT, POSITIVE),
    "model.remat": Field(STR, see="vit.check_memory_options"),
    "model.scan_layers": Field(BOOL, see="vit.check_memory_options"),
}
SECTIONS = tuple(sorted({key.split(".")[0] for key in SCHEMA if "." in key}))
_KIND_NAMES = {INT: "an int", FLOAT: "a float", STR: "a string", BOOL: "a bool (True or False)",
               INTS: "a tuple of ints"}


def show(value: Any) -> str:
  """`value`'s type and a one-line, shortened repr, for error messages."""
  kind = type(value).__name__
  if isinstance(value, ml_collections.ConfigDict):  # its repr is multi-line YAML
    value = value.to_dict()
  text = " ".join(repr(value).split())
  return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


def _items(section: Any) -> list[tuple[Any, Any]] | None:
  if isinstance(section, (ml_collections.ConfigDict, dict)):
    return list(section.items())
  return None


def _unknown(key: str) -> str:
  close = difflib.get_close_matches(key, [*SCHEMA, *SECTIONS], n=1)
  if close:
    return f"unknown config key '{key}'; did you mean '{close[0]}'?"
  return f"unknown config key '{key}' (no known key is close to it); remove it"


def read(config: Any) -> tuple[dict[str, Any], list[str]]:
  """The value of each schema key `config` has, and its unknown, missing and malformed keys."""
  values: dict[str, Any] = {}
  problems: list[str] = []
  items = _items(config)
  if items is None:
    return values, [f"the config must be a ConfigDict, got {show(config)}"]
  found: dict[str, bool] = {}  # section -> whether it holds keys
  for name, value in items:
    key = str(name)
    if key in SECTIONS:
      inner = _items(value)
      found[key] = inner is not None
      if inner is None:
        problems.append(f"{key} must be a section of keys (a ConfigDict), got {show(value)}")
      for sub, sub_value in inner or ():
        dotted = f"{key}.{sub}"
        if dotted in SCHEMA:
          values[dotted] = sub_value
        else:
          problems.append(_unknown(dotted))
    elif key in SCHEMA:
      values[key] = value
    else:
      problems.append(_unknown(key))
  model_keys = _model_keys(values.get("model.name"))
  for key in sorted(set(values) - model_keys):
    if key.startswith("model.") and values[key] is not None:
      problems.append(f"{key} does not apply to {values['model.name']}; remove it")
  missing = [s for s in SECTIONS if s not in found]
  missing += [k for k in SCHEMA if k not in values and ("." not in k or found.get(k.split(".")[0]))
              and (not k.startswith("model.") or k in model_keys)]
  if missing:
    names = ", ".join(f"'{key}'" for key in missing)
    problems.append(f"missing config key{'s' if len(missing) > 1 else ''} {names}; start the "
                    "config from configs/common.py's get_config()")
  return values, problems


def _model_keys(name: Any) -> set[str]:
  """The dotted `model.` keys of the family `name` belongs to (every one when it is unknown)."""
  try:
    family = registry.family_of(name) if isinstance(name, str) else None
  except registry.ModelNameError:  # reported by the model checks
    family = None
  if family is None:
    return {key for key in SCHEMA if key.startswith("model.")}
  return {"model.name", *(f"model.{key}" for key in registry.keys(family))}


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_kind(kind: str, value: Any) -> bool:
  if kind == INT:
    return _is_int(value)
  if kind == FLOAT:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
  if kind == STR:
    return isinstance(value, str)
  if kind == BOOL:
    return isinstance(value, bool)
  return isinstance(value, (tuple, list)) and all(_is_int(v) for v in value)


def check_value(key: str, field: Field, value: Any) -> str | None:
  """What is wrong with `value` as `key` on its own: its type or range (None when nothing)."""
  if value is None and field.optional:
    return None
  if not _is_kind(field.kind, value):
    return f"{key} must be {_KIND_NAMES[field.kind]}, got {show(value)}"
  if field.kind == FLOAT and not math.isfinite(value):
    return f"{key} must be finite, got {value}"
  rule = field.rule
  if isinstance(rule, tuple):
    if value not in rule:
      return f"{key} '{value}' is not one of {', '.join(map(str, rule))}"
  elif field.kind == INTS:
    if rule == POSITIVE and any(v <= 0 for v in value):
      return f"{key} must be positive integers, got {tuple(value)}"
  elif rule == POSITIVE and value <= 0:
    return f"{key} must be positive, got {value}"
  elif rule == AT_LEAST_0 and value < 0:
    return f"{key} must be at least 0, got {value}"
  elif rule == UNIT and not 0 <= value < 1:
    return f"{key} must be in [0, 1), got {value}"
  elif rule == PROBABILITY and not 0 <= value <= 1:
    return f"{key} must be in [0, 1], got {value}"
  elif rule == NOT_EMPTY and not value:
    return f"{key} must not be empty"
  return None
