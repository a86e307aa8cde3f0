"""The Vision Transformer (Dosovitskiy et al., ICLR 2021) as Flax linen modules.

Parameter names follow the original checkpoint format (see docs/design.md): `embedding`, `cls`,
`Transformer/encoderblock_{i}/{LayerNorm_0,MultiHeadDotProductAttention_1,LayerNorm_2,MlpBlock_3}`,
`Transformer/encoder_norm`, `pre_logits`, `head`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import attention, droppath, flops, inputs, posemb, resnet
from vit_jax.models.family import FEATURES, Family
from vit_jax.models.heads import MAPHead
from vit_jax.models.layernorm import LayerNorm
from vit_jax.models.mlp import MlpBlock
from vit_jax.models.stack import REMAT_POLICIES, rematted, scan

POOLS = ("token", "gap", "map")
Dtype = Any


class EncoderBlock(nn.Module):
  """Pre-LayerNorm block: x + MHSA(LN(x)), then x + MLP(LN(x)).

  Each branch is dropped per example at rate `drop_path` in training (stochastic depth), or at
  `rate` when given (a scanned layer's). With `scanned` it returns (x, None), the carry and
  output `nn.scan` expects. With `queries` n > 0 it returns only the first n tokens: they attend
  to every token, but no other token's query, attention output or MLP is computed.
  """

  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  attention_dropout: float = 0.0
  attention: str = "plain"  # see vit_jax.models.attention
  relative_grid: tuple[int, int] | None = None  # patch grid, for the relative position bias
  num_prefix: int = 0  # class tokens before the patches
  gelu: str = "tanh"  # see vit_jax.models.mlp.GELUS
  layernorm_epsilon: float = 1e-6
  drop_path: float = 0.0
  scanned: bool = False
  queries: int = 0  # 0: every token's output; n > 0: only the first n tokens'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, rate: jax.Array | None = None) -> Any:
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    rate = self.drop_path if rate is None else rate
    bias = None
    if self.relative_grid is not None:
      table = posemb.RelativeEmbedding(self.relative_grid, x.shape[-1] // self.num_heads,
                                       self.num_prefix, self.param_dtype, name="relative_posemb")()
      bias = posemb.relative_bias(table)
    y = LayerNorm(epsilon=self.layernorm_epsilon, name="LayerNorm_0", **dt)(x)
    if attention.resolve(self.attention, self.dtype, has_bias=bias is not None) == "heads_first":
      y = attention.SelfAttention(num_heads=self.num_heads, extra_bias=bias,
                                  name="MultiHeadDotProductAttention_1", **dt)(y, self.queries)
    else:
      y = nn.MultiHeadDotProductAttention(
          num_heads=self.num_heads,
          kernel_init=nn.initializers.xavier_uniform(),
          broadcast_dropout=False,
          dropout_rate=self.attention_dropout,
          deterministic=not train,
          attention_fn=attention.attention_fn(self.attention, self.dtype, bias),
          name="MultiHeadDotProductAttention_1",
          **dt,
      )(y[:, :self.queries] if self.queries else y, y)
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    if self.queries:
      x = x[:, :self.queries]
    x = x + droppath.DropPath(rate)(y, train)
    y = LayerNorm(epsilon=self.layernorm_epsilon, name="LayerNorm_2", **dt)(x)
    mlp = MlpBlock(self.mlp_dim, self.dropout, gelu=self.gelu, name="MlpBlock_3", **dt)
    x = x + droppath.DropPath(rate)(mlp(y, train=train), train)
    return (x, None) if self.scanned else x


def check_memory_options(remat: str, scan_layers: bool, posemb_mode: str) -> str | None:
  """Why a remat policy / layer scan cannot be used (None when it can)."""
  if remat not in REMAT_POLICIES:
    return f"remat '{remat}' is not one of {', '.join(REMAT_POLICIES)}"
  if scan_layers and posemb_mode != "stem":
    return (f"scan_layers needs posemb_mode 'stem' (got '{posemb_mode}'): the layers of a scan "
            "must be identical")
  return None


class Encoder(nn.Module):
  """Position embeddings, a stack of encoder blocks and the final LayerNorm.

  Additive embeddings are `posembed_input` (before block 0; also reused before every block in
  `every_layer_shared` mode) and, in `every_layer` mode, `posembed_layer_{i}` before block i > 0.
  Blocks are `encoderblock_{i}`; with `scan_layers` they are one `nn.scan` named `encoderblock`
  whose parameters have a leading layer axis (vit_jax.io.layers converts between the two).
  Block i drops its branches at rate `droppath.rates(drop_path, num_layers)[i]`. With `outputs`
  n > 0 (and per-layer blocks) only the first n tokens' outputs are computed in the last block
  and returned: (B, n, D) instead of (B, T, D).
  """

  num_layers: int
  num_heads: int
  mlp_dim: int
  posemb: str = "learn1d"
  posemb_mode: str = "stem"
  dropout: float = 0.0
  attention_dropout: float = 0.0
  attention: str = "plain"
  gelu: str = "tanh"
  layernorm_epsilon: float = 1e-6
  drop_path: float = 0.0
  remat: str = "none"
  scan_layers: bool = False
  outputs: int = 0  # 0: every token; n > 0: only the first n tokens (not with scan_layers)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, grid: tuple[int, int], num_prefix: int,
               train: bool) -> jax.Array:
    problem = (posemb.check(self.posemb, self.posemb_mode, x.shape[-1])
               or attention.check(self.attention, self.attention_dropout,
                                  backend=jax.default_backend(), dtype=self.dtype,
                                  relative=self.posemb == "relative")
               or check_memory_options(self.remat, self.scan_layers, self.posemb_mode))
    if problem:
      raise ValueError(problem)
    add_posemb = posemb.embedder(self.posemb, self.posemb_mode, grid, num_prefix,
                                 self.param_dtype)
    x = nn.Dropout(self.dropout, deterministic=not train)(add_posemb(0, x))
    block = rematted(EncoderBlock, self.remat)
    settings = dict(
        num_heads=self.num_heads,
        mlp_dim=self.mlp_dim,
        dropout=self.dropout,
        attention_dropout=self.attention_dropout,
        attention=self.attention,
        relative_grid=grid if self.posemb == "relative" else None,
        num_prefix=num_prefix,
        gelu=self.gelu,
        layernorm_epsilon=self.layernorm_epsilon,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
    )
    if self.scan_layers:
      x = scan(block, x, train, num_layers=self.num_layers, drop_path=self.drop_path,
               name="encoderblock", **settings)
    rates = droppath.rates(self.drop_path, self.num_layers)
    for i in range(0 if self.scan_layers else self.num_layers):
      if i > 0:
        x = add_posemb(i, x)
      last = i == self.num_layers - 1
      x = block(name=f"encoderblock_{i}", drop_path=rates[i], queries=self.outputs * last,
                **settings)(x, train)
    return LayerNorm(epsilon=self.layernorm_epsilon, name="encoder_norm", dtype=self.dtype,
                     param_dtype=self.param_dtype)(x)


def token_stride(patch_size: int, resnet_layers: tuple[int, ...] | None) -> int:
  """Input pixels per token along each axis: the patch size, times the ResNet stem's stride."""
  return patch_size * (1 if resnet_layers is None else resnet.stride(resnet_layers))


class VisionTransformer(nn.Module):
  """ViT classifier: strided-conv patch embedding, Transformer encoder, pooling and head.

  Takes images (B, H, W, C) with H and W multiples of the token stride (`patch_size`, times the
  ResNet stem's stride in a hybrid) and returns float32 logits (B, num_classes), computed by a
  float32 head whatever the compute dtype. The pooled (or pre-logits) features are sown as
  `intermediates/features`. With `resnet_layers` (the hybrid) the patches are cut from the
  feature map of a ResNet stem (`vit_jax.models.resnet`) instead of the image.

  With `pool=token` the last block computes the class token's output alone (keys and values
  still from every token): the same logits for ~1/12 less work. `all_tokens`, `scan_layers`
  and training with dropout (its masks stay the full computation's) compute every token.
  """

  num_classes: int
  patch_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  posemb: str = "learn1d"
  posemb_mode: str = "stem"
  pool: str = "token"
  representation_size: int = 0
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path: float = 0.0  # stochastic depth of the last block (linear from 0 at the first)
  head_bias_init: float = 0.0
  attention: str = "plain"
  gelu: str = "tanh"  # see vit_jax.models.mlp.GELUS
  layernorm_epsilon: float = 1e-6  # of every LayerNorm
  remat: str = "none"
  scan_layers: bool = False
  resnet_layers: tuple[int, ...] | None = None  # units per stage of a ResNet stem (the hybrid)
  resnet_width: int = 64  # the ResNet root's width; stage b is 4 * width * 2**(b-1) wide
  all_tokens: bool = False  # compute every token's output in the last block, even if unused
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    if self.pool not in POOLS:
      raise ValueError(f"unknown pooling '{self.pool}'; choose one of: {', '.join(POOLS)}")
    batch, height, width, _ = images.shape
    stride = token_stride(self.patch_size, self.resnet_layers)
    what = "the patch size" if self.resnet_layers is None else (
        f"the hybrid's stride (ResNet stem {stride // self.patch_size} x patch "
        f"{self.patch_size}) =")
    grid = inputs.check_grid(height, width, stride, what)
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    p = self.patch_size
    x = inputs.to_unit_range(images).astype(self.dtype)
    if self.resnet_layers is not None:
      x = resnet.stem(x, self.resnet_layers, self.resnet_width, **dt)
    x = inputs.PatchEmbedding(self.hidden_size, p, name="embedding", **dt)(x, train)
    x = x.reshape(batch, -1, self.hidden_size)  # patches in raster (row-major) order
    if self.pool == "token":
      cls = self.param("cls", nn.initializers.zeros, (1, 1, self.hidden_size), self.param_dtype)
      x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (batch, 1, 1)), x], axis=1)
    dropout = train and (self.dropout > 0 or self.attention_dropout > 0)
    x = Encoder(
        num_layers=self.num_layers,
        num_heads=self.num_heads,
        mlp_dim=self.mlp_dim,
        posemb=self.posemb,
        posemb_mode=self.posemb_mode,
        dropout=self.dropout,
        attention_dropout=self.attention_dropout,
        attention=self.attention,
        gelu=self.gelu,
        layernorm_epsilon=self.layernorm_epsilon,
        drop_path=self.drop_path,
        remat=self.remat,
        scan_layers=self.scan_layers,
        outputs=int(self.pool == "token" and not (self.all_tokens or self.scan_layers or dropout)),
        name="Transformer",
        **dt,
    )(x, grid=grid, num_prefix=int(self.pool == "token"), train=train)
    if self.pool == "token":
      x = x[:, 0]
    elif self.pool == "gap":
      x = jnp.mean(x, axis=1)
    else:
      x = MAPHead(self.num_heads, self.mlp_dim, gelu=self.gelu,
                  layernorm_epsilon=self.layernorm_epsilon, name="MAPHead_0", **dt)(x)
    if self.representation_size:
      x = nn.tanh(nn.Dense(self.representation_size, name="pre_logits", **dt)(x))
    self.sow("intermediates", FEATURES, x)
    # The head runs in float32: with a bias init of -10, bfloat16 logits would be 1/16 apart.
    return nn.Dense(
        self.num_classes,
        kernel_init=nn.initializers.zeros,
        bias_init=nn.initializers.constant(self.head_bias_init),
        dtype=jnp.float32,
        param_dtype=self.param_dtype,
        name="head",
    )(x.astype(jnp.float32))


# The family's presets: Table 1 of the paper (B, L, H) plus the Ti and S widths of DeiT / "How to
# train your ViT", each as (hidden_size, num_layers, num_heads, mlp_dim), and their patch sizes.
ARCH_KEYS = ("patch_size", "hidden_size", "num_layers", "num_heads", "mlp_dim")
_WIDTHS = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
}
_PATCHES = {"Ti": (16,), "S": (16, 32), "B": (8, 16, 32), "L": (16, 32), "H": (14,)}
PRESETS: dict[str, dict[str, int]] = {
    f"ViT-{size}/{patch}": dict(zip(ARCH_KEYS, (patch, *_WIDTHS[size]), strict=True))
    for size, patches in _PATCHES.items()
    for patch in patches
}
# The other keys of a ViT's `config.model` section, with their defaults.
DEFAULTS: dict[str, Any] = {
    "posemb": "learn1d",
    "posemb_mode": "stem",
    "pool": "token",
    "representation_size": 0,  # 0: no tanh pre-logits layer
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "drop_path": 0.0,  # stochastic depth of the last block (linear from 0 at the first)
    "head_bias_init": 0.0,
    "dtype": "float32",  # compute dtype; parameters are always float32
    "attention": "auto",  # auto | plain | xla | cudnn | heads_first (vit_jax.models.attention)
    "gelu": "tanh",  # tanh (the original's approximation) | exact (erf, as PyTorch and timm)
    "layernorm_epsilon": 1e-6,  # of every LayerNorm
    "remat": "none",  # none | full | dots | dots_no_batch: activations recomputed in backward
    "scan_layers": False,  # one nn.scan over the encoder blocks (faster compile)
}


def build(model: Mapping[str, Any], num_classes: int) -> VisionTransformer:
  """The ViT a resolved `config.model` section describes."""
  return VisionTransformer(
      num_classes=num_classes,
      patch_size=model["patch_size"],
      hidden_size=model["hidden_size"],
      num_layers=model["num_layers"],
      num_heads=model["num_heads"],
      mlp_dim=model["mlp_dim"],
      posemb=model["posemb"],
      posemb_mode=model["posemb_mode"],
      pool=model["pool"],
      representation_size=model["representation_size"],
      dropout=model["dropout"],
      attention_dropout=model["attention_dropout"],
      head_bias_init=model["head_bias_init"],
      # Runs written before these options existed used Flax's attention, no remat or scan, the
      # tanh GELU, LayerNorm epsilon 1e-6 and no stochastic depth.
      attention=model.get("attention", "plain"),
      gelu=model.get("gelu", "tanh"),
      layernorm_epsilon=model.get("layernorm_epsilon", 1e-6),
      remat=model.get("remat", "none"),
      scan_layers=model.get("scan_layers", False),
      drop_path=model.get("drop_path", 0.0),
      resnet_layers=_layers(model.get("resnet_layers")),
      resnet_width=model.get("resnet_width") or 64,
      dtype=jnp.dtype(model["dtype"]),
  )


def _layers(value: Any) -> tuple[int, ...] | None:
  return None if value is None else tuple(int(v) for v in value)


def check_config(values: Mapping[str, Any], backend: str) -> list[str]:
  """What is wrong between the keys of a ViT config (see `Family.check`)."""

  def have(*keys: str) -> bool:  # a check is skipped where a value it needs is bad or unset
    return all(values.get(key) is not None for key in keys)

  problems = []
  if have("image_size", "model.patch_size"):
    p, size = values["model.patch_size"], values["image_size"]
    layers = _layers(values.get("model.resnet_layers"))
    stride = token_stride(p, layers)
    what = (f"model.patch_size {p}" if layers is None else
            f"the hybrid's stride {stride} (ResNet stem {stride // p} x model.patch_size {p})")
    if size % stride:
      problems.append(f"image_size {size} is not divisible by {what}; use a multiple of "
                      f"{stride} such as {max(1, round(size / stride)) * stride}")
  width, heads = values.get("model.hidden_size"), values.get("model.num_heads")
  if have("model.hidden_size", "model.num_heads") and width % heads:
    problems.append(f"model.hidden_size {width} is not divisible by model.num_heads {heads}")
  model = []  # the model's own checks name keys without the "model." prefix
  if have("model.attention", "model.attention_dropout"):
    model.append(attention.check(
        values["model.attention"], values["model.attention_dropout"], backend=backend,
        dtype=values.get("model.dtype"), relative=values.get("model.posemb") == "relative"))
  if have("model.remat", "model.scan_layers"):  # a bad posemb_mode is reported by posemb.check
    model.append(check_memory_options(values["model.remat"], values["model.scan_layers"],
                                      values.get("model.posemb_mode") or "stem"))
  if have("model.posemb", "model.posemb_mode"):  # width 0 (unknown) passes the width check
    model.append(posemb.check(values["model.posemb"], values["model.posemb_mode"], width or 0))
  return problems + [f"model.{p}" for p in model if p]


def forward_flops(model: Mapping[str, Any], image_size: tuple[int, int], channels: int,
                  num_classes: int) -> int:
  """Matmul FLOPs of one image's forward pass (vit_jax.models.flops), ResNet stem included."""
  layers = _layers(model.get("resnet_layers"))
  stem = 0
  if layers is not None:
    width = model["resnet_width"]
    stem = resnet.forward_flops(layers, width, image_size, channels)
    stride = resnet.stride(layers)
    image_size = (image_size[0] // stride, image_size[1] // stride)
    channels = resnet.out_channels(layers, width)
  return stem + flops.forward_flops(
      image_size=image_size, patch_size=model["patch_size"], channels=channels,
      hidden_size=model["hidden_size"], num_layers=model["num_layers"],
      mlp_dim=model["mlp_dim"], num_classes=num_classes,
      class_token=model["pool"] == "token", representation_size=model["representation_size"])


def model_stride(model: Mapping[str, Any]) -> int:
  """Input pixels per token of a `config.model` section (see `token_stride`)."""
  return token_stride(model["patch_size"], _layers(model.get("resnet_layers")))


def is_vit(params: Mapping[str, Any]) -> bool:
  """Whether top-level parameter names are a plain ViT's (patch embedding, no ResNet root)."""
  return "embedding" in params and "Transformer" in params and "conv_root" not in params


FAMILY = Family(name="ViT", arch_keys=ARCH_KEYS, presets=PRESETS, defaults=DEFAULTS,
                build=build, check=check_config, forward_flops=forward_flops,
                token_stride=model_stride, recognizes=is_vit, example="ViT-B/16")
