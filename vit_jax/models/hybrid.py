"""The hybrid ResNet+ViT family: a ViT on the feature map of a ResNet stem (`models/resnet.py`).

The module is the ViT's (`VisionTransformer` with `resnet_layers`); this module registers its
presets. A preset's `/N` is its token stride: the stem's (16 for three stages, 32 for four)
times `patch_size` 1. The parameters are the ViT's plus the stem's, at the top level.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vit_jax.models import resnet, vit
from vit_jax.models.family import Family

ARCH_KEYS = (*vit.ARCH_KEYS, "resnet_layers", "resnet_width")
# (ViT width, ResNet units per stage) of the original hybrids, all with patch_size 1 and a root
# 64 wide: R50 with 3 stages (the 4th of ResNet-50 dropped) ends at stride 16; R26 and R50 with
# all 4 stages at stride 32.
_HYBRIDS = {
    "R50+ViT-B/16": ("B", (3, 4, 9)),
    "R26+ViT-S/32": ("S", (2, 2, 2, 2)),
    "R50+ViT-L/32": ("L", (3, 4, 6, 3)),
}
PRESETS: dict[str, dict[str, Any]] = {
    name: {**vit.PRESETS[f"ViT-{size}/16"], "patch_size": 1, "resnet_layers": layers,
           "resnet_width": 64}
    for name, (size, layers) in _HYBRIDS.items()
}


def check_config(values: Mapping[str, Any], backend: str) -> list[str]:
  """The ViT's checks (the image size against the stem's stride included), and the stem width."""
  problems = vit.check_config(values, backend)
  width = values.get("model.resnet_width")
  if width is not None and width % resnet.GN_GROUPS:
    problems.append(f"model.resnet_width {width} is not a multiple of {resnet.GN_GROUPS}, the "
                    "GroupNorm groups of every stem layer; use e.g. "
                    f"{max(1, round(width / resnet.GN_GROUPS)) * resnet.GN_GROUPS}")
  return problems


def is_hybrid(params: Mapping[str, Any]) -> bool:
  """Whether top-level parameter names are a hybrid's (a ViT with a ResNet root)."""
  return "conv_root" in params and "Transformer" in params


FAMILY = Family(name="ResNet+ViT", arch_keys=ARCH_KEYS, presets=PRESETS, defaults=vit.DEFAULTS,
                build=vit.build, check=check_config, forward_flops=vit.forward_flops,
                token_stride=vit.model_stride, recognizes=is_hybrid, example="R50+ViT-B/16")
