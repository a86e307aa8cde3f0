"""The `model` section of a config: a registered preset (ViT-B/16, R50+ViT-B/16, Mixer-B/16 ...).

Size fields left unset are filled from the preset named by `model.name` when the run starts, so
`--config.model.name=ViT-L/16` switches the whole architecture and an explicit
`--config.model.num_layers=6` overrides one field of it. The section holds the keys of every
family: those of the named family with its defaults (`vit_jax.models.<family>.DEFAULTS`), the
others unset, so `--config.model.name=Mixer-B/16` works on any config (when the run starts,
another family's sizes are dropped with a warning, its other keys are dropped at their
defaults, and one set to a value of its own is an error). A custom model is named `ViT-custom`
(`ResNet+ViT-custom`, `Mixer-custom`) and sets every size field.
`python -m vit_jax.models` lists the presets.
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
  for key, kind in registry.KEY_TYPES.items():
    model[key] = placeholder(kind)
  model.update(family.defaults)
  model.update(overrides)
  return model
