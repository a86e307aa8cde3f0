"""What the registry knows of an architecture family: its presets, defaults, builder and checks.

A leaf module: each family's own module (e.g. `models/vit.py`) defines one `Family`, and
`models/registry.py` lists them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn

# Every family sows its pooled (or pre-logits) features as `intermediates/<FEATURES>` (few-shot
# evaluation reads them). Not "pre_logits": that is the name of the pre-logits layer itself.
FEATURES = "features"


@dataclasses.dataclass(frozen=True)
class Family:
  """One architecture family and its named presets.

  `build(model, num_classes)` turns a resolved `config.model` section (a mapping with every key
  of `arch_keys` and `defaults`) into a Flax module. `check(values, backend)` returns what is
  wrong between keys: `values` maps dotted config keys ("image_size", "model.patch_size", ...)
  to the values that passed their own type and range checks, and a check that needs a key
  missing there is skipped. `forward_flops(model, (height, width), channels, num_classes)` counts
  one image's matmul FLOPs (2 per multiply-add). `token_stride(model)` is the input pixels per
  token along each axis, so a model sees an (image_size / token_stride)^2 grid of tokens.
  `recognizes(params)` tells whether top-level parameter names are this family's.
  """

  name: str
  arch_keys: tuple[str, ...]  # the config.model keys that fix the architecture's size
  presets: Mapping[str, Mapping[str, int]]  # preset name -> a value for each of arch_keys
  defaults: Mapping[str, Any]  # the family's other config.model keys and their defaults
  build: Callable[[Mapping[str, Any], int], nn.Module]
  check: Callable[[Mapping[str, Any], str], list[str]]
  forward_flops: Callable[[Mapping[str, Any], tuple[int, int], int, int], int]
  token_stride: Callable[[Mapping[str, Any]], int]
  recognizes: Callable[[Mapping[str, Any]], bool]
  example: str  # a preset named in messages
  resizable: bool = True  # False: its weights fix the token count (no other resolution)
  # Why parameters of this family (`params`, at token grid `grid`) cannot start a model of
  # `model` at `image_size`, beyond their shapes (None when they can); see models/mixer.py.
  check_source: Callable[[Mapping[str, Any], tuple[int, int] | None, Mapping[str, Any], int],
                         str | None] | None = None
  image_size: int = 224  # the presets' resolution

  @property
  def custom(self) -> str:
    """The model name of a custom-sized member of the family (every arch key set by hand)."""
    return f"{self.name}-custom"
