"""Model FLOPs of a ViT, counted from its shape (the numerator of MFU).

Only matrix multiplications are counted, at 2 FLOPs per multiply-add, as is usual for MFU: the
patch embedding, the q/k/v/out projections, the two attention products, the MLP, the optional
pre-logits layer and the head. Normalisations, softmax, GELU and additions are left out, and so
is the small attention-pooling probe of `pool=map`.

This is the architecture's count, the one papers publish. A class-token ViT runs fewer: its last
block computes the class token's output alone (vit_jax.models.vit), 6.9% fewer products for
ViT-Ti/16 at 224.
"""

from __future__ import annotations


def forward_flops(*, image_size: tuple[int, int], patch_size: int, channels: int, hidden_size: int,
                  num_layers: int, mlp_dim: int, num_classes: int, class_token: bool = True,
                  representation_size: int = 0) -> int:
  """FLOPs of one image's forward pass."""
  height, width = image_size
  patches = (height // patch_size) * (width // patch_size)
  tokens = patches + int(class_token)
  d = hidden_size
  embed = 2 * patches * patch_size * patch_size * channels * d
  projections = 2 * tokens * d * 4 * d  # q, k, v and out
  attention = 2 * 2 * tokens * tokens * d  # q.k and weights.v
  mlp = 2 * 2 * tokens * d * mlp_dim
  width_out = representation_size or d
  head = 2 * d * representation_size + 2 * width_out * num_classes
  return embed + num_layers * (projections + attention + mlp) + head
