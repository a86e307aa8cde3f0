"""The `model` section of a config, for a named preset (ViT-Ti/16 ... ViT-H/14) or a custom size.

Architecture fields left unset are filled from the preset named by `model.name` when the run
starts, so `--config.model.name=ViT-L/16` switches the whole architecture and an explicit
`--config.model.num_layers=6` overrides one field of it.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder


def model_config(name: str = "ViT-B/16", **overrides) -> ml_collections.ConfigDict:
  """A model section for preset `name` (vit_jax.models.presets) or a custom, fully sized model."""
  model = ml_collections.ConfigDict()
  model.name = name
  for key in ("patch_size", "hidden_size", "num_layers", "num_heads", "mlp_dim"):
    model[key] = placeholder(int)
  model.posemb = "learn1d"
  model.posemb_mode = "stem"
  model.pool = "token"
  model.representation_size = 0  # 0: no tanh pre-logits layer
  model.dropout = 0.0
  model.attention_dropout = 0.0
  model.head_bias_init = 0.0
  model.dtype = "float32"  # compute dtype; parameters are always float32
  model.attention = "auto"  # auto | plain | xla | cudnn (vit_jax.models.attention)
  model.remat = "none"  # none | full | dots | dots_no_batch: activations recomputed in backward
  model.scan_layers = False  # one nn.scan over the encoder blocks (faster compile)
  model.update(overrides)
  return model

