"""Tokens-to-Token ViT (T2T-ViT; Yuan et al., ICCV 2021) as Flax linen modules.

The same function as the authors' `models/t2t_vit.py`: three soft splits (overlapping unfolds,
7x7/4, 3x3/2, 3x3/2 by default) with a T2T layer of width `token_dim` after the first two, a
Linear `project`, a class token, a fixed sinusoid position table, pre-LN Transformer blocks, a
LayerNorm and the class token's head. A T2T layer is a Performer (`Token_performer`, linear
attention through positive random features) or a one-head Transformer (`Token_transformer`, the
`_t` presets); both add the attention's values as the residual, since the width changes.

Parameter names mirror the authors' state dict (see vit_jax.io.torch_state):
`tokens_to_token/{attention1, attention2, project}`, `cls_token`, `pos_embed` (1, 1 + T, D),
`blocks_{i}/{norm1, attn/qkv, attn/proj, norm2, mlp/fc1, mlp/fc2}`, `norm`, `head`. A performer
T2T layer holds `norm1`, `kqv`, `proj`, `norm2`, `mlp_0`, `mlp_2` (the indices of the authors'
nn.Sequential) and its random features `w`; a transformer one `norm1`, `attn/{qkv, proj}`,
`norm2`, `mlp/{fc1, fc2}`.

- The soft splits are configurable (`t2t_kernels`, `t2t_strides`, padding (k - s + 1) // 2) so
  that small images keep a token grid; the defaults are the authors'.
- `w` and `pos_embed` (requires_grad=False in the reference) are parameters under
  `jax.lax.stop_gradient`, so reference files load bit-for-bit. `pos_embed` is made for the
  input resolution at init; `init_from` at another resolution keeps the new model's own table
  (vit_jax.io.posemb_resize.FIXED), so the family is resizable.
- `dropout` acts where the authors' `drop_rate` does (after the position add, the blocks'
  attention projection, GELU and MLP output). The performer T2T layers always drop 0.1 in
  training after `proj` and `mlp_2` (the authors' fixed dp1 and dp2); the transformer ones
  never drop. Stochastic depth acts on the backbone blocks only.
- The transformer T2T layer scales its logits by the INPUT width^-0.5 (147^-0.5, 576^-0.5),
  not its head width's, as the authors' code does.
- `posemb` "sinusoid" (the default) is the authors' table. Any kind and mode of the ViT's
  ablation (vit_jax.models.posemb) can replace it, for the backbone's tokens with the class
  token first (`posembed_input`, `posembed_layer_{i}`, `blocks_{i}/attn/relative_posemb`); the
  T2T layers never see a position embedding, as in the reference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import attention, droppath, inputs, posemb, vit
from vit_jax.models.family import FEATURES, Family
from vit_jax.models.mlp import GELUS
from vit_jax.models.t2t_tokens import (  # noqa: F401  (re-exported: the family's API)
  KERNEL_RATIO,
  PERFORMER_DROPOUT,
  T2T_LAYERS,
  T2TModule,
  TokenPerformer,
  TokenTransformer,
  padding,
  sinusoid_init,
  sinusoid_table,
  soft_split,
  split_fits,
)
from vit_jax.models.torch_layers import TRUNC, Mlp, dense, norm

Dtype = Any
SINUSOID = "sinusoid"  # the authors' fixed table, `pos_embed`: the default position embedding


class Attention(nn.Module):
  """The backbone's multi-head self-attention: `qkv` (no bias), scale head_dim^-0.5, `proj`."""

  num_heads: int
  dropout: float = 0.0
  relative_grid: tuple[int, int] | None = None  # token grid, for the relative position bias
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, queries: int = 0) -> jax.Array:
    """x (B, T, D) -> (B, T, D); with `queries` n > 0 only the first n tokens attend: (B, n, D)."""
    width = x.shape[-1]
    head_dim = width // self.num_heads
    heads = (*x.shape[:-1], self.num_heads, head_dim)
    qkv = dense(3 * width, "qkv", self.dtype, self.param_dtype, use_bias=False)(x)
    q, k, v = attention.heads_first_parts(qkv.reshape(*x.shape[:-1], 3, *heads[-2:]))
    if queries:
      q = q[..., :queries, :]
    bias = None
    if self.relative_grid is not None:  # the class token is the one prefix token
      bias = posemb.relative_bias(posemb.RelativeEmbedding(
          self.relative_grid, head_dim, 1, self.param_dtype, name="relative_posemb")())(
              jnp.swapaxes(q, -2, -3))
    y = attention.heads_first_attention(q, k, v, bias)
    y = jnp.swapaxes(y, -2, -3).reshape(*y.shape[:-3], y.shape[-2], width)
    y = dense(width, "proj", self.dtype, self.param_dtype)(y)
    return nn.Dropout(self.dropout, deterministic=not train)(y)


class Block(nn.Module):
  """Pre-LN block: x + drop_path(attn(norm1(x))), then x + drop_path(mlp(norm2(x))).

  With `queries` n > 0 only the first n tokens' outputs are computed (they attend to all).
  """

  num_heads: int
  mlp_dim: int
  drop_path: float = 0.0
  dropout: float = 0.0
  gelu: str = "exact"
  layernorm_epsilon: float = 1e-5
  relative_grid: tuple[int, int] | None = None
  queries: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = Attention(self.num_heads, self.dropout, self.relative_grid, name="attn", **dt)(
        norm(self, "norm1")(x), train, self.queries)
    if self.queries:
      x = x[:, :self.queries]
    x = x + droppath.DropPath(self.drop_path)(y, train)
    y = Mlp(self.mlp_dim, self.dropout, self.gelu, name="mlp", **dt)(norm(self, "norm2")(x), train)
    return x + droppath.DropPath(self.drop_path)(y, train)


class T2TViT(nn.Module):
  """T2T-ViT classifier: T2T module, class token, fixed position table, blocks, norm, head.

  Takes images (B, H, W, C) whose sides are multiples of the product of `t2t_strides` and
  returns float32 logits; the class token's final features (or the pre-logits) are sown as
  `intermediates/features`. As in the ViT, the last block computes the class token's output
  alone (same logits), except with `all_tokens` or in training with dropout.
  """

  num_classes: int
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  token_dim: int = 64
  t2t_layer: str = "performer"
  t2t_kernels: tuple[int, ...] = (7, 3, 3)
  t2t_strides: tuple[int, ...] = (4, 2, 2)
  representation_size: int = 0
  dropout: float = 0.0
  drop_path: float = 0.0
  performer_dropout: float = PERFORMER_DROPOUT
  head_bias_init: float = 0.0
  gelu: str = "exact"
  layernorm_epsilon: float = 1e-5
  posemb: str = SINUSOID
  posemb_mode: str = "stem"
  remat: str = "none"
  all_tokens: bool = False  # compute every token's output in the last block, even if unused
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    if self.remat not in vit.REMAT_POLICIES:
      raise ValueError(f"remat '{self.remat}' is not one of {', '.join(vit.REMAT_POLICIES)}")
    if self.gelu not in GELUS:
      raise ValueError(f"gelu '{self.gelu}' is not one of {', '.join(GELUS)}")
    problem = posemb.check(self.posemb, self.posemb_mode, self.hidden_size, own=(SINUSOID,))
    if problem:
      raise ValueError(problem)
    batch, height, width, _ = images.shape
    grid = inputs.check_grid(height, width, math.prod(self.t2t_strides),
                             "the T2T token stride (the product of t2t_strides)")
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    d = self.hidden_size
    x = T2TModule(d, self.token_dim, self.t2t_layer, tuple(self.t2t_kernels),
                  tuple(self.t2t_strides), self.performer_dropout, self.gelu,
                  self.layernorm_epsilon, name="tokens_to_token", **dt)(
                      inputs.to_unit_range(images).astype(self.dtype), train)
    cls = self.param("cls_token", TRUNC, (1, 1, d), self.param_dtype).astype(self.dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, d)), x], axis=1)
    stem = None
    if self.posemb == SINUSOID:  # the reference's fixed table
      table = jax.lax.stop_gradient(
          self.param("pos_embed", sinusoid_init, (1, x.shape[1], d), self.param_dtype))
      stem = lambda x: x + table.astype(self.dtype)  # noqa: E731
    add_posemb = posemb.embedder(self.posemb, self.posemb_mode, grid, 1, self.param_dtype,
                                 stem=stem)
    x = nn.Dropout(self.dropout, deterministic=not train)(add_posemb(0, x))
    block = Block
    if self.remat != "none":  # argument 2 (counting self) is `train`, a Python bool
      block = nn.remat(block, policy=vit.REMAT_POLICIES[self.remat], static_argnums=(2,))
    relative = grid if self.posemb == "relative" else None
    # Dropout's masks stay the full computation's: no shortcut then.
    class_token_only = not (self.all_tokens or (train and self.dropout > 0))
    for i, rate in enumerate(droppath.rates(self.drop_path, self.num_layers)):
      queries = int(class_token_only and i == self.num_layers - 1)
      x = block(self.num_heads, self.mlp_dim, rate, self.dropout, self.gelu,
                self.layernorm_epsilon, relative, queries, name=f"blocks_{i}", **dt)(
                    x if i == 0 else add_posemb(i, x), train)
    x = norm(self, "norm")(x)[:, 0]
    if self.representation_size:
      x = nn.tanh(dense(self.representation_size, "pre_logits", self.dtype,
                         self.param_dtype)(x))
    self.sow("intermediates", FEATURES, x)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                    bias_init=nn.initializers.constant(self.head_bias_init), dtype=jnp.float32,
                    param_dtype=self.param_dtype, name="head")(x.astype(jnp.float32))


# The authors' t2t_vit_{7,10,12,14,19,24} (performer T2T layers) and t2t_vit_t_{14,19,24}
# (transformer ones): (hidden_size, num_layers, num_heads, mlp_ratio).
ARCH_KEYS = ("hidden_size", "num_layers", "num_heads", "mlp_dim", "token_dim", "t2t_layer")
_SIZES = {"7": (256, 7, 4, 2), "10": (256, 10, 4, 2), "12": (256, 12, 4, 2),
          "14": (384, 14, 6, 3), "19": (448, 19, 7, 3), "24": (512, 24, 8, 3)}


def _preset(size: str, t2t_layer: str) -> dict[str, Any]:
  d, depth, heads, ratio = _SIZES[size]
  return dict(zip(ARCH_KEYS, (d, depth, heads, d * ratio, 64, t2t_layer), strict=True))


PRESETS: dict[str, dict[str, Any]] = {
    **{f"T2T-ViT-{size}": _preset(size, "performer") for size in _SIZES},
    **{f"T2T-ViT_t-{size}": _preset(size, "transformer") for size in ("14", "19", "24")},
}
DEFAULTS: dict[str, Any] = {
    "t2t_kernels": (7, 3, 3),  # of the three soft splits; padding (k - s + 1) // 2
    "t2t_strides": (4, 2, 2),  # their product is the token stride (16)
    "representation_size": 0,  # 0: no tanh pre-logits layer (the original has none)
    "dropout": 0.0,  # the reference's drop_rate (the performer T2T layers always drop 0.1)
    "drop_path": 0.0,  # stochastic depth of the last block (linear from 0 at the first)
    "head_bias_init": 0.0,
    "dtype": "float32",
    "gelu": "exact",  # PyTorch's nn.GELU
    "layernorm_epsilon": 1e-5,  # PyTorch's nn.LayerNorm default
    "posemb": SINUSOID,  # or a kind of the ViT's ablation (vit_jax.models.posemb)
    "posemb_mode": "stem",
    "remat": "none",
}


def build(model: Mapping[str, Any], num_classes: int) -> T2TViT:
  """The T2T-ViT a resolved `config.model` section describes."""
  return T2TViT(
      num_classes=num_classes, **{key: model[key] for key in ARCH_KEYS},
      t2t_kernels=tuple(model["t2t_kernels"]), t2t_strides=tuple(model["t2t_strides"]),
      representation_size=model["representation_size"], dropout=model["dropout"],
      drop_path=model["drop_path"], head_bias_init=model["head_bias_init"], gelu=model["gelu"],
      layernorm_epsilon=model["layernorm_epsilon"], posemb=model["posemb"],
      posemb_mode=model["posemb_mode"], remat=model["remat"], dtype=jnp.dtype(model["dtype"]))


def check_config(values: Mapping[str, Any], backend: str) -> list[str]:
  """What is wrong between the keys of a T2T-ViT config (see `Family.check`)."""
  del backend
  problems = []
  kernels, strides = values.get("model.t2t_kernels"), values.get("model.t2t_strides")
  for key, sizes in (("t2t_kernels", kernels), ("t2t_strides", strides)):
    if sizes is not None and (len(sizes) != 3 or min(sizes) < 1):
      problems.append(f"model.{key} {tuple(sizes)} must be 3 positive sizes, one per soft split "
                      f"(the authors' are {DEFAULTS[key]})")
  if problems or kernels is None or strides is None:
    kernels = strides = None
  else:
    for i, (k, s) in enumerate(zip(kernels, strides, strict=True)):
      if not split_fits(k, s):
        problems.append(f"soft split {i} (model.t2t_kernels[{i}] {k}, model.t2t_strides[{i}] "
                        f"{s}) does not shrink the token grid exactly {s}-fold; use a kernel of "
                        f"at least {max(s - 1, 1)}{', and odd' if s == 1 else ''}")
  size = values.get("image_size")
  if strides is not None and size is not None and size % math.prod(strides):
    p = math.prod(strides)
    problems.append(f"image_size {size} is not divisible by the T2T token stride {p} (the "
                    f"product of model.t2t_strides {tuple(strides)}); use a multiple of {p} such "
                    f"as {max(1, round(size / p)) * p}, or other strides")
  layer = values.get("model.t2t_layer")
  if layer is not None and layer not in T2T_LAYERS:
    problems.append(f"model.t2t_layer '{layer}' is not one of {', '.join(T2T_LAYERS)}")
  d, h = values.get("model.hidden_size"), values.get("model.num_heads")
  if d is not None and h is not None and d % h:
    problems.append(f"model.hidden_size {d} is not divisible by model.num_heads {h}; use a "
                    f"multiple of {h} such as {max(1, round(d / h)) * h}")
  remat = values.get("model.remat")
  if remat is not None and remat not in vit.REMAT_POLICIES:
    problems.append(f"model.remat '{remat}' is not one of {', '.join(vit.REMAT_POLICIES)}")
  kind, mode = values.get("model.posemb"), values.get("model.posemb_mode")
  if kind is not None and mode is not None:
    problem = posemb.check(kind, mode, d or 0, own=(SINUSOID,))
    problems += [f"model.{problem}"] if problem else []
  return problems


def _t2t_layer_flops(layer: str, tokens: int, width_in: int, width: int) -> int:
  """One T2T layer's matmul FLOPs on a sequence (2 per multiply-add)."""
  dense = 2 * tokens * width_in * 3 * width + 2 * tokens * width * width * 3  # kqv, proj, MLP
  if layer == "performer":
    m = int(width * KERNEL_RATIO)
    # phi(k), phi(q); the normaliser; v^T phi(k); phi(q) (v^T phi(k))^T
    return dense + 2 * 2 * tokens * width * m + 2 * tokens * m + 2 * 2 * tokens * width * m
  return dense + 2 * 2 * tokens * tokens * width  # logits, weighted values


def forward_flops(model: Mapping[str, Any], image_size: tuple[int, int], channels: int,
                  num_classes: int) -> int:
  """Matmul FLOPs of one image's forward pass (2 per multiply-add).

  The two T2T layers on their unfolded inputs, `project`, per block the attention and MLP, and
  the head. The unfolds themselves move data only.
  """
  kernels, strides, t = model["t2t_kernels"], model["t2t_strides"], model["token_dim"]
  height, width = image_size
  total, features = 0, channels
  for i in range(2):
    height, width = height // strides[i], width // strides[i]
    width_in = features * kernels[i] ** 2
    total += _t2t_layer_flops(model["t2t_layer"], height * width, width_in, t)
    features = t
  height, width = height // strides[2], width // strides[2]
  d = model["hidden_size"]
  total += 2 * height * width * t * kernels[2] ** 2 * d
  n = height * width + 1
  block = 2 * n * d * 4 * d + 2 * 2 * n * n * d + 2 * 2 * n * d * model["mlp_dim"]
  r = model["representation_size"]
  head = 2 * d * r + 2 * (r or d) * num_classes
  return total + model["num_layers"] * block + head


def is_t2t(params: Mapping[str, Any]) -> bool:
  """Whether top-level parameter names are a T2T-ViT's."""
  return "tokens_to_token" in params


FAMILY = Family(name="T2T-ViT", arch_keys=ARCH_KEYS, presets=PRESETS, defaults=DEFAULTS,
                build=build, check=check_config, forward_flops=forward_flops,
                token_stride=lambda model: math.prod(model["t2t_strides"]),
                recognizes=is_t2t, example="T2T-ViT-14", resizable=True, check_source=None)
