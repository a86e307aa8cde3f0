"""The `model` section of a config: a registered preset (ViT-Ti/16 ... ViT-H/14) or a custom size.

Size fields left unset are filled from the preset named by `model.name` when the run starts, so
`--config.model.name=ViT-L/16` switches the whole architecture and an explicit
`--config.model.num_layers=6` overrides one field of it. A custom model is named `ViT-custom`
and sets every size field. The other keys and their defaults come from the model's family
(`vit_jax.models.vit.DEFAULTS`); `python -m vit_jax.models` lists the presets.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from vit_jax.models import registry


def model_config(name: str = "ViT-B/16", **overrides) -> ml_collections.ConfigDict:
  """A model section for preset `name`, or for a family's custom name with every size given."""
  family = registry.family_of(name)
  model = ml_collections.ConfigDict()
  model.name = name
  for key in family.arch_keys:
    model[key] = placeholder(int)
  model.update(family.defaults)
  model.update(overrides)
  return model
