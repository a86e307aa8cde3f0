"""MLP-Mixer (Tolstikhin et al., NeurIPS 2021) as Flax linen modules, in the original format.

Parameter names: `stem` (the patch convolution), `MixerBlock_{i}/{LayerNorm_0, token_mixing,
LayerNorm_1, channel_mixing}` (each mixing MLP `Dense_0`, `Dense_1`), `pre_head_layer_norm` and
`head`. With `scan_layers` the blocks are one `nn.scan` named `MixerBlock` whose parameters have
a leading layer axis (vit_jax.io.layers converts). The token-mixing weights fix the number of
patches, so a Mixer runs at the resolution it was built for only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import droppath, inputs, stack
from vit_jax.models.family import FEATURES, Family
from vit_jax.models.layernorm import LayerNorm
from vit_jax.models.mlp import MlpBlock

Dtype = Any


class MixerBlock(nn.Module):
  """x + token-mixing MLP across patches of LN(x), then x + channel-mixing MLP of LN(x).

  Each branch is dropped per example at rate `drop_path` in training (stochastic depth), or at
  `rate` when given (a scanned layer's). With `scanned` it returns (x, None), the carry and
  output `nn.scan` expects.
  """

  tokens_mlp_dim: int
  channels_mlp_dim: int
  dropout: float = 0.0
  gelu: str = "tanh"
  layernorm_epsilon: float = 1e-6
  drop_path: float = 0.0
  scanned: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, rate: jax.Array | None = None) -> Any:
    rate = self.drop_path if rate is None else rate
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    mlp = dict(dropout=self.dropout, gelu=self.gelu, kernel_init=nn.initializers.lecun_normal(),
               bias_init=nn.initializers.zeros, **dt)
    y = LayerNorm(epsilon=self.layernorm_epsilon, name="LayerNorm_0", **dt)(x)
    y = MlpBlock(self.tokens_mlp_dim, name="token_mixing", **mlp)(
        jnp.swapaxes(y, 1, 2), train=train)  # (B, C, T): mixes along the patches
    x = x + droppath.DropPath(rate)(jnp.swapaxes(y, 1, 2), train)
    y = LayerNorm(epsilon=self.layernorm_epsilon, name="LayerNorm_1", **dt)(x)
    y = MlpBlock(self.channels_mlp_dim, name="channel_mixing", **mlp)(y, train=train)
    x = x + droppath.DropPath(rate)(y, train)
    return (x, None) if self.scanned else x


class MlpMixer(nn.Module):
  """Mixer classifier: patch convolution, Mixer blocks, LayerNorm, mean over patches, head.

  Takes images (B, H, W, C) and returns float32 logits; the pooled (or pre-logits) features are
  sown as `intermediates/features`, as in the ViT.
  """

  num_classes: int
  patch_size: int
  hidden_size: int
  num_layers: int
  tokens_mlp_dim: int
  channels_mlp_dim: int
  representation_size: int = 0
  dropout: float = 0.0
  drop_path: float = 0.0  # stochastic depth of the last block (linear from 0 at the first)
  head_bias_init: float = 0.0
  gelu: str = "tanh"
  layernorm_epsilon: float = 1e-6
  remat: str = "none"
  scan_layers: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    if self.remat not in stack.REMAT_POLICIES:
      raise ValueError(f"remat '{self.remat}' is not one of {', '.join(stack.REMAT_POLICIES)}")
    batch, height, width, _ = images.shape
    inputs.check_grid(height, width, self.patch_size)
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    p = self.patch_size
    # A strided convolution's parameters (nn.Conv's names, shapes and initial values).
    x = inputs.PatchEmbedding(self.hidden_size, p, name="stem", **dt)(
        inputs.to_unit_range(images).astype(self.dtype), train)
    x = x.reshape(batch, -1, self.hidden_size)
    block = stack.rematted(MixerBlock, self.remat)
    settings = dict(tokens_mlp_dim=self.tokens_mlp_dim, channels_mlp_dim=self.channels_mlp_dim,
                    dropout=self.dropout, gelu=self.gelu,
                    layernorm_epsilon=self.layernorm_epsilon, **dt)
    if self.scan_layers:
      x = stack.scan(block, x, train, num_layers=self.num_layers, drop_path=self.drop_path,
                     name="MixerBlock", **settings)
    rates = droppath.rates(self.drop_path, self.num_layers)
    for i in range(0 if self.scan_layers else self.num_layers):
      x = block(name=f"MixerBlock_{i}", drop_path=rates[i], **settings)(x, train)
    x = LayerNorm(epsilon=self.layernorm_epsilon, name="pre_head_layer_norm", **dt)(x)
    x = jnp.mean(x, axis=1)
    if self.representation_size:
      x = nn.tanh(nn.Dense(self.representation_size, name="pre_logits", **dt)(x))
    self.sow("intermediates", FEATURES, x)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                    bias_init=nn.initializers.constant(self.head_bias_init), dtype=jnp.float32,
                    param_dtype=self.param_dtype, name="head")(x.astype(jnp.float32))


# The Mixer paper's Table 1: (hidden_size, num_layers, tokens_mlp_dim, channels_mlp_dim).
ARCH_KEYS = ("patch_size", "hidden_size", "num_layers", "tokens_mlp_dim", "channels_mlp_dim")
_WIDTHS = {
    "S": (512, 8, 256, 2048),
    "B": (768, 12, 384, 3072),
    "L": (1024, 24, 512, 4096),
    "H": (1280, 32, 640, 5120),
}
_PATCHES = {"S": (16, 32), "B": (16, 32), "L": (16, 32), "H": (14,)}
PRESETS: dict[str, dict[str, int]] = {
    f"Mixer-{size}/{patch}": dict(zip(ARCH_KEYS, (patch, *_WIDTHS[size]), strict=True))
    for size, patches in _PATCHES.items()
    for patch in patches
}
DEFAULTS: dict[str, Any] = {
    "representation_size": 0,  # 0: no tanh pre-logits layer (the original Mixer has none)
    "dropout": 0.0,  # after the GELU and the output of every mixing MLP
    "drop_path": 0.0,  # stochastic depth of the last block (linear from 0 at the first)
    "head_bias_init": 0.0,
    "dtype": "float32",
    "gelu": "tanh",
    "layernorm_epsilon": 1e-6,
    "remat": "none",
    "scan_layers": False,
}


def build(model: Mapping[str, Any], num_classes: int) -> MlpMixer:
  """The Mixer a resolved `config.model` section describes."""
  return MlpMixer(
      num_classes=num_classes, patch_size=model["patch_size"], hidden_size=model["hidden_size"],
      num_layers=model["num_layers"], tokens_mlp_dim=model["tokens_mlp_dim"],
      channels_mlp_dim=model["channels_mlp_dim"],
      representation_size=model["representation_size"], dropout=model["dropout"],
      drop_path=model.get("drop_path", 0.0),  # runs written before it had none
      head_bias_init=model["head_bias_init"], gelu=model["gelu"],
      layernorm_epsilon=model["layernorm_epsilon"], remat=model["remat"],
      scan_layers=model["scan_layers"], dtype=jnp.dtype(model["dtype"]))


def check_config(values: Mapping[str, Any], backend: str) -> list[str]:
  """What is wrong between the keys of a Mixer config (see `Family.check`)."""
  del backend
  problems = []
  p, size = values.get("model.patch_size"), values.get("image_size")
  if p is not None and size is not None and size % p:
    problems.append(f"image_size {size} is not divisible by model.patch_size {p}; use a "
                    f"multiple of {p} such as {max(1, round(size / p)) * p}")
  remat = values.get("model.remat")
  if remat is not None and remat not in stack.REMAT_POLICIES:
    problems.append(f"model.remat '{remat}' is not one of {', '.join(stack.REMAT_POLICIES)}")
  return problems


def forward_flops(model: Mapping[str, Any], image_size: tuple[int, int], channels: int,
                  num_classes: int) -> int:
  """Matmul FLOPs of one image's forward pass (2 per multiply-add): stem, mixing MLPs, head."""
  p, d = model["patch_size"], model["hidden_size"]
  tokens = (image_size[0] // p) * (image_size[1] // p)
  stem = 2 * tokens * p * p * channels * d
  token_mixing = 2 * 2 * d * tokens * model["tokens_mlp_dim"]
  channel_mixing = 2 * 2 * tokens * d * model["channels_mlp_dim"]
  r = model["representation_size"]
  head = 2 * d * r + 2 * (r or d) * num_classes
  return stem + model["num_layers"] * (token_mixing + channel_mixing) + head


def check_source(params: Mapping[str, Any], grid: tuple[int, int] | None,
                 model: Mapping[str, Any], image_size: int) -> str | None:
  """Why a Mixer's parameters cannot run as `model` at `image_size` (None when they can).

  Its patch size must be the model's, and its token-mixing weights fix the number of patches,
  hence the resolution.
  """
  p = model["patch_size"]
  kernel = params.get("stem", {}).get("kernel")
  source_patch = None if kernel is None else int(kernel.shape[0])
  if source_patch is not None and source_patch != p:
    return (f"the source is a Mixer with {source_patch}x{source_patch} patches but "
            f"{model['name']} has {p}x{p}; set --config.model.name to the source's preset")
  side = image_size // p
  if grid is not None and grid != (side, side):
    return (f"{model['name']} cannot change resolution: its token-mixing weights fix "
            f"{grid[0]}x{grid[1]} patches, image_size {grid[0] * p}, not {image_size}; set "
            f"--config.image_size={grid[0] * p}")
  return None


def is_mixer(params: Mapping[str, Any]) -> bool:
  """Whether top-level parameter names are a Mixer's."""
  return "stem" in params and any(str(k).startswith("MixerBlock") for k in params)


FAMILY = Family(name="Mixer", arch_keys=ARCH_KEYS, presets=PRESETS, defaults=DEFAULTS,
                build=build, check=check_config, forward_flops=forward_flops,
                token_stride=lambda model: model["patch_size"], recognizes=is_mixer,
                example="Mixer-B/16", resizable=False, check_source=check_source)
