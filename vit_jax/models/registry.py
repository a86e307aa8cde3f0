"""Every architecture family and its presets, and the one place a `config.model` becomes a module.

`model.name` is a registered preset (e.g. `ViT-B/16`), whose size fields fill the section's unset
ones, or a family's custom name (e.g. `ViT-custom`), for which every size field is set by hand.
Trainer, benchmark, few-shot evaluation, export and every other command build models through
`build`. Adding a family: a module in `models/` that defines its `Family`, and one entry in
`FAMILIES`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import hybrid, mixer, t2t, tnt, vit
from vit_jax.models.family import Family

FAMILIES: tuple[Family, ...] = (vit.FAMILY, hybrid.FAMILY, mixer.FAMILY, t2t.FAMILY, tnt.FAMILY)
PRESETS: dict[str, Family] = {name: f for f in FAMILIES for name in f.presets}
CUSTOM: dict[str, Family] = {f.custom: f for f in FAMILIES}


def _key_types() -> dict[str, type]:
  types: dict[str, type] = {}
  for f in FAMILIES:
    preset = next(iter(f.presets.values()))
    types.update({key: type(preset[key]) for key in f.arch_keys if key not in types})
    types.update({key: type(value) for key, value in f.defaults.items() if key not in types})
  return types


# Every key a `config.model` section of any family can hold (besides `name`), with its type.
KEY_TYPES: dict[str, type] = _key_types()


class ModelNameError(ValueError):
  """`model.name` is neither a registered preset nor a family's custom name."""


def family_of(name: str) -> Family:
  """The family of a preset or custom name; ModelNameError naming the closest names if none."""
  family = PRESETS.get(name) or CUSTOM.get(name)
  if family is not None:
    return family
  close = difflib.get_close_matches(str(name), [*PRESETS, *CUSTOM], n=3, cutoff=0.4)
  hint = f"did you mean {' or '.join(close)}? " if close else ""
  raise ModelNameError(
      f"model.name '{name}' is not a registered model; {hint}`python -m vit_jax.models` lists "
      f"them, and {' or '.join(CUSTOM)} with every size field set names a custom one")


def keys(family: Family) -> tuple[str, ...]:
  """The `config.model` keys of `family` besides `name`: its size fields, then its defaults."""
  return (*family.arch_keys, *family.defaults)


def default_of(key: str) -> Any:
  """The default of a non-size key, from the first family that has it (None for size keys)."""
  return next((f.defaults[key] for f in FAMILIES if key in f.defaults), None)


def fit_to_family(model: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
  """`model` with exactly its family's keys; the keys that cannot be dropped; those dropped.

  A section made for another family (after `--config.model.name=Mixer-B/16` on a ViT config)
  keeps the keys both have; the family's own keys it lacks (or holds unset) get their defaults.
  Size fields of other families describe the other architecture and are dropped (returned, so
  that the caller can say so); their other keys are dropped where unset or at their default,
  and otherwise named in the returned problems, since their value would do nothing.
  """
  family = family_of(model.get("name"))
  own = keys(family)
  other_sizes = {key for f in FAMILIES for key in f.arch_keys} - set(family.arch_keys)
  fitted: dict[str, Any] = {"name": model["name"]}
  problems, dropped = [], []
  for key, value in model.items():
    if key == "name":
      continue
    if key in own or key not in KEY_TYPES:  # unknown keys are left for validation to name
      fitted[key] = value
    elif key in other_sizes:
      if value is not None:
        dropped.append(f"model.{key}={value!r}")
    elif value is not None and value != default_of(key):
      problems.append(f"model.{key}={value!r} does not apply to {model['name']} (a "
                      f"{family.name} model); set --config.model.{key}={default_of(key)} "
                      "(its default) or start from a config of that family")
  for key, value in family.defaults.items():
    if fitted.get(key) is None:
      fitted[key] = value
  for key in family.arch_keys:
    fitted.setdefault(key, None)
  return fitted, problems, dropped


def arch_values(model: Mapping[str, Any]) -> dict[str, Any]:
  """The size fields of `model` (a `config.model` section), the unset ones from its preset.

  Raises ModelNameError for an unknown name, or for a custom name with a size field unset.
  """
  name = model.get("name")
  family = family_of(name)
  given = {key: model.get(key) for key in family.arch_keys}
  missing = [key for key, value in given.items() if value is None]
  if name in family.presets:
    return {key: family.presets[name][key] if value is None else value
            for key, value in given.items()}
  if missing:
    raise ModelNameError(f"model.name '{name}' is a custom size, so set model."
                         f"{', model.'.join(missing)}; or name a preset such as "
                         f"{next(iter(family.presets))}")
  return given


def family_and_width(model: Mapping[str, Any]) -> tuple[str, int]:
  """The family's name and the hidden size of `model` (a `config.model` section): what the
  CPU's choice of matrix-product library depends on (`vit_jax.train.cpu_matmul`)."""
  return family_of(model.get("name")).name, arch_values(model)["hidden_size"]


def section(name: str, **overrides: Any) -> dict[str, Any]:
  """A complete `config.model` section for `name`: preset (or given) sizes, family defaults."""
  family = family_of(name)
  model = {"name": name, **{key: None for key in family.arch_keys}, **family.defaults}
  model.update(overrides)
  model.update(arch_values(model))
  return model


def build(model: Mapping[str, Any], num_classes: int) -> nn.Module:
  """The Flax module a resolved `config.model` section describes."""
  return family_of(model["name"]).build(model, num_classes)


def check(values: Mapping[str, Any], backend: str) -> list[str]:
  """Problems between the keys of a config (see `Family.check`), or that its name is unknown."""
  if values.get("model.name") is None:  # its own check failed: reported there
    return []
  try:
    family = family_of(values["model.name"])
  except ModelNameError as e:
    return [str(e)]
  return family.check(values, backend)


def grid(model: Mapping[str, Any], image_size: int) -> tuple[int, int]:
  """The (gh, gw) grid of tokens a model sees at `image_size` (square images)."""
  side = image_size // family_of(model["name"]).token_stride(model)
  return side, side


def family_of_params(params: Mapping[str, Any]) -> Family | None:
  """The family whose top-level parameter names `params` has, or None if none recognises it."""
  return next((f for f in FAMILIES if f.recognizes(params)), None)


def source_problem(model: Mapping[str, Any], params: Mapping[str, Any],
                   grid: tuple[int, int] | None, image_size: int, source: str) -> str | None:
  """Why `params` (from `source`, at token grid `grid`) cannot start `model` at `image_size`.

  Parameters of another family are named as such; the family's own `check_source` runs on the
  rest (a Mixer's patch size and token count). None when nothing is wrong beyond the shapes,
  which resampling and loading check. Messages name `--config.` flags.
  """
  name = model["name"]
  family, found = family_of(name), family_of_params(params)
  if found is not None and found is not family:
    return (f"{source} holds a {found.name} model's parameters but model.name {name} is a "
            f"{family.name} model; set --config.model.name to a {found.name} preset such as "
            f"{found.example} (or its custom name)")
  return family.check_source(params, grid, model, image_size) if family.check_source else None


def param_count(model: Mapping[str, Any], num_classes: int, image_size: int,
                channels: int = 3) -> int:
  """Exact number of parameters, from their shapes (nothing is allocated)."""
  module = build(model, num_classes)
  images = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
  shapes = jax.eval_shape(module.init, jax.random.key(0), images)["params"]
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))


def forward_flops(model: Mapping[str, Any], num_classes: int, image_size: int,
                  channels: int = 3) -> int:
  """Matmul FLOPs of one image's forward pass (2 per multiply-add)."""
  family = family_of(model["name"])
  return family.forward_flops(model, (image_size, image_size), channels, num_classes)
