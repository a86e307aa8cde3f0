"""Named architecture presets with the widths, depths, heads and MLP sizes of the ViT paper."""

from __future__ import annotations

from typing import NamedTuple


class Preset(NamedTuple):
  """Architecture hyper-parameters of one named model."""

  patch_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int


# Table 1 of the paper (B, L, H) plus the Ti and S widths of DeiT / "How to train your ViT".
_FAMILIES = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
}
_PATCHES = {"Ti": (16,), "S": (16, 32), "B": (8, 16, 32), "L": (16, 32), "H": (14,)}

PRESETS: dict[str, Preset] = {
    f"ViT-{family}/{patch}": Preset(patch, *_FAMILIES[family])
    for family, patches in _PATCHES.items()
    for patch in patches
}


def get_preset(name: str) -> Preset:
  """Returns the preset called `name`, e.g. "ViT-B/16"."""
  if name not in PRESETS:
    raise ValueError(f"unknown model '{name}'; choose one of: {', '.join(PRESETS)}")
  return PRESETS[name]
