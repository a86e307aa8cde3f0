"""Transformer in Transformer (TNT; Han et al., NeurIPS 2021) as Flax linen modules.

The same function as timm's `TNT` (its non-legacy form, the authors' `tnt_pytorch/tnt.py`): each
patch_size x patch_size patch is convolved on its own (7x7, stride `inner_stride`, zero padding
3 at every patch border) into ceil(p / stride)^2 inner tokens of width `inner_dim`. Every block
runs a Transformer over the inner tokens of each patch, adds their projection to the patch's
outer token, then runs a Transformer over the outer tokens (class token first).

Parameter names mirror timm's state dict (see vit_jax.io.torch_state): `pixel_embed/proj` (the
pixel convolution), `pixel_pos` (1, inner_dim, h, w) in timm's layout, `norm1_proj`, `proj`,
`norm2_proj`, `cls_token`, `patch_pos` (1, 1 + N, hidden_size), `blocks_{i}/{norm_in, attn_in,
norm_mlp_in, mlp_in, norm1_proj, proj, norm2_proj, norm_out, attn_out, norm_mlp, mlp}` (each
attention `qk`, `v` without bias and `proj`; each MLP `fc1`, `fc2`), `norm`, `head`.

- timm's `legacy=True` (its `tnt_s_legacy_patch16_224`) convolves the whole image and then cuts
  the feature map into patches (no zero padding at patch borders), and in the blocks normalises
  each inner token separately before a `proj` with bias and no `norm2_proj`. Not implemented.
- The authors' files hold an all-zero, never-used `outer_tokens` tensor; there is no such
  parameter here (the loader drops it). Their own names differ (`patch_embed`, `inner_pos`,
  `outer_pos`, `proj_norm1`, `inner_attn`, `outer_mlp` ...) and their `inner_pos`
  (1, h*w, inner_dim) is `pixel_pos` transposed; the loader renames them to timm's names and
  layout, which are the ones here (vit_jax.io.torch_state.from_tnt_authors).
- `dropout` acts where the authors' `drop_rate` does: after the position add, after each
  attention's output projection and after the GELU and output of each MLP (timm's
  `pos_drop_rate` and `proj_drop_rate`; timm's head dropout, absent in the authors' code, is
  not applied). Stochastic depth drops each residual branch per example: per patch for the
  inner branches, whose batch is (images x patches), as in timm.
- `patch_pos` is a learned table like the ViT's `learn1d`; at another resolution the loader
  resamples it on its 2-D grid, so the family is resizable. `pixel_pos` depends on the patch
  size and stride only.
- `posemb` "learn1d" at the stem (the default) is `patch_pos`. Any kind and mode of the ViT's
  ablation (vit_jax.models.posemb) can replace it for the outer tokens, class token first
  (`posembed_input`, `posembed_layer_{i}`, `blocks_{i}/attn_out/relative_posemb`); `learn1d`
  in the every-layer modes keeps `patch_pos` before block 0. The inner tokens always get
  `pixel_pos`, as in the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import attention, droppath, inputs, posemb, stack
from vit_jax.models.family import FEATURES, Family
from vit_jax.models.layernorm import LayerNorm
from vit_jax.models.mlp import GELUS
from vit_jax.models.torch_layers import TRUNC, Mlp, dense

Dtype = Any
KERNEL = 7  # the pixel convolution's size (padding 3), fixed in the authors' code
# Attentions over at most this many tokens (the inner ones: 16 at patch 16, stride 4) use
# attention.small_attention, measured faster there; the outer ones (197) do not.
SMALL_TOKENS = 64


def _torch_conv_bias(fan_in: int) -> Callable:
  """PyTorch's default Conv2d bias initialiser: uniform in +-1 / sqrt(fan_in)."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class Attention(nn.Module):
  """Multi-head self-attention with a joint `qk` and a separate `v` projection, both unbiased.

  `qk`'s outputs are all query features then all key features, each head-major (head h owns
  features h*hd .. (h+1)*hd - 1); logits are scaled by hd^-0.5 and soft-maxed in float32.
  """

  num_heads: int
  dropout: float = 0.0
  relative_grid: tuple[int, int] | None = None  # patch grid, for the relative position bias
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, queries: int = 0) -> jax.Array:
    """x (B, T, D) -> (B, T, D); with `queries` n > 0 only the first n tokens attend: (B, n, D)."""
    dt = (self.dtype, self.param_dtype)
    width = x.shape[-1]
    head_dim = width // self.num_heads
    heads = (*x.shape[:-1], self.num_heads, head_dim)
    qk = dense(2 * width, "qk", *dt, use_bias=False)(x)
    q, k = attention.heads_first_parts(qk.reshape(*x.shape[:-1], 2, *heads[-2:]))
    v = jnp.swapaxes(dense(width, "v", *dt, use_bias=False)(x).reshape(heads), -2, -3)
    if queries:
      q = q[..., :queries, :]
    bias = None
    if self.relative_grid is not None:  # outer tokens only: the class token is the one prefix
      bias = posemb.relative_bias(posemb.RelativeEmbedding(
          self.relative_grid, head_dim, 1, self.param_dtype, name="relative_posemb")())(
              jnp.swapaxes(q, -2, -3))
    if bias is None and x.shape[-2] <= SMALL_TOKENS:  # the inner attention
      y = attention.small_attention(q, k, v)
    else:
      y = attention.heads_first_attention(q, k, v, bias)
    y = jnp.swapaxes(y, -2, -3).reshape(*y.shape[:-3], y.shape[-2], width)
    y = dense(width, "proj", *dt)(y)
    return nn.Dropout(self.dropout, deterministic=not train)(y)


class Block(nn.Module):
  """One TNT block on inner tokens (B*N, m, c) and outer tokens (B, 1 + N, d).

  inner += attn_in(norm_in(inner)); inner += mlp_in(norm_mlp_in(inner)); the patch tokens
  outer[:, 1:] += norm2_proj(proj(norm1_proj(inner of the patch flattened pixel-major to m*c)));
  outer += attn_out(norm_out(outer)); outer += mlp(norm_mlp(outer)). Returns (inner, outer).
  With `queries` n > 0 the outer attention and MLP compute only the first n outer tokens, which
  attend to all, and the returned outer is (B, n, d).
  """

  inner_heads: int
  num_heads: int
  inner_mlp_dim: int
  mlp_dim: int
  drop_path: float = 0.0
  dropout: float = 0.0
  gelu: str = "exact"
  layernorm_epsilon: float = 1e-5
  relative_grid: tuple[int, int] | None = None  # of the outer attention's patches
  queries: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inner: jax.Array, outer: jax.Array,
               train: bool) -> tuple[jax.Array, jax.Array]:
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def norm(name: str) -> LayerNorm:
      return LayerNorm(epsilon=self.layernorm_epsilon, name=name, **dt)

    def branch(y: jax.Array) -> jax.Array:
      return droppath.DropPath(self.drop_path)(y, train)

    mlp = dict(dropout=self.dropout, gelu=self.gelu, **dt)
    inner = inner + branch(Attention(self.inner_heads, self.dropout, name="attn_in", **dt)(
        norm("norm_in")(inner), train))
    inner = inner + branch(Mlp(self.inner_mlp_dim, name="mlp_in", **mlp)(
        norm("norm_mlp_in")(inner), train))
    batch, tokens, width = outer.shape
    flat = inner.reshape(batch, tokens - 1, -1)  # (B, N, m*c), pixel-major
    update = dense(width, "proj", self.dtype, self.param_dtype, use_bias=False)(
        norm("norm1_proj")(flat))
    outer = jnp.concatenate([outer[:, :1], outer[:, 1:] + norm("norm2_proj")(update)], axis=1)
    y = Attention(self.num_heads, self.dropout, self.relative_grid, name="attn_out", **dt)(
        norm("norm_out")(outer), train, self.queries)
    outer = (outer[:, :self.queries] if self.queries else outer) + branch(y)
    outer = outer + branch(Mlp(self.mlp_dim, name="mlp", **mlp)(norm("norm_mlp")(outer), train))
    return inner, outer


class PixelEmbed(nn.Module):
  """The pixel convolution `proj`, applied to each patch (P, p, p, C) on its own (in training on
  a CPU as a product of its windows: `inputs.WindowConv`)."""

  inner_dim: int
  inner_stride: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, patches: jax.Array, train: bool = False) -> jax.Array:
    fan_in = patches.shape[-1] * KERNEL * KERNEL
    # PyTorch's default Conv2d init (kaiming_uniform with a=sqrt(5)): uniform +-1/sqrt(fan_in).
    return inputs.WindowConv(
        self.inner_dim, KERNEL, self.inner_stride, KERNEL // 2,
        kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
        bias_init=_torch_conv_bias(fan_in), dtype=self.dtype, param_dtype=self.param_dtype,
        name="proj")(patches, train)


def inner_side(patch_size: int, inner_stride: int) -> int:
  """Inner tokens along each side of a patch: ceil(patch_size / inner_stride)."""
  return -(-patch_size // inner_stride)


class TNT(nn.Module):
  """TNT classifier: pixel embedding, outer stem, TNT blocks, LayerNorm, class token, head.

  Takes images (B, H, W, C) and returns float32 logits; the class token's final features (or
  the pre-logits) are sown as `intermediates/features`. As in the ViT, the last block's outer
  attention and MLP compute the class token alone (same logits), except with `all_tokens` or in
  training with dropout.
  """

  num_classes: int
  patch_size: int
  inner_dim: int
  hidden_size: int
  num_layers: int
  inner_heads: int
  num_heads: int
  inner_mlp_dim: int
  mlp_dim: int
  inner_stride: int = 4
  representation_size: int = 0
  dropout: float = 0.0
  drop_path: float = 0.0
  head_bias_init: float = 0.0
  gelu: str = "exact"
  layernorm_epsilon: float = 1e-5
  posemb: str = "learn1d"
  posemb_mode: str = "stem"
  remat: str = "none"
  all_tokens: bool = False  # compute every outer token in the last block, even if unused
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    if self.remat not in stack.REMAT_POLICIES:
      raise ValueError(f"remat '{self.remat}' is not one of {', '.join(stack.REMAT_POLICIES)}")
    if self.gelu not in GELUS:
      raise ValueError(f"gelu '{self.gelu}' is not one of {', '.join(GELUS)}")
    problem = posemb.check(self.posemb, self.posemb_mode, self.hidden_size)
    if problem:
      raise ValueError(problem)
    batch, height, width, channels = images.shape
    gh, gw = inputs.check_grid(height, width, self.patch_size)
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    p, c, d = self.patch_size, self.inner_dim, self.hidden_size
    side = inner_side(p, self.inner_stride)
    x = inputs.to_unit_range(images).astype(self.dtype)
    patches = x.reshape(batch, gh, p, gw, p, channels).transpose(0, 1, 3, 2, 4, 5)
    inner = PixelEmbed(c, self.inner_stride, name="pixel_embed", **dt)(
        patches.reshape(batch * gh * gw, p, p, channels), train)
    pixel_pos = self.param("pixel_pos", TRUNC, (1, c, side, side), self.param_dtype)
    inner = inner + jnp.transpose(pixel_pos, (0, 2, 3, 1)).astype(self.dtype)
    inner = inner.reshape(batch * gh * gw, side * side, c)

    def norm(name: str) -> LayerNorm:
      return LayerNorm(epsilon=self.layernorm_epsilon, name=name, **dt)

    outer = norm("norm1_proj")(inner.reshape(batch, gh * gw, side * side * c))
    outer = norm("norm2_proj")(dense(d, "proj", self.dtype, self.param_dtype)(outer))
    cls = self.param("cls_token", TRUNC, (1, 1, d), self.param_dtype).astype(self.dtype)
    outer = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, d)), outer], axis=1)
    stem = None
    if self.posemb == "learn1d":  # the reference's own table
      patch_pos = self.param("patch_pos", TRUNC, (1, 1 + gh * gw, d), self.param_dtype)
      stem = lambda x: x + patch_pos.astype(self.dtype)  # noqa: E731
    add_posemb = posemb.embedder(self.posemb, self.posemb_mode, (gh, gw), 1, self.param_dtype,
                                 stem=stem)
    outer = nn.Dropout(self.dropout, deterministic=not train)(add_posemb(0, outer))

    block = Block
    if self.remat != "none":  # argument 3 (counting self) is `train`, a Python bool
      block = nn.remat(block, policy=stack.REMAT_POLICIES[self.remat], static_argnums=(3,))
    # Dropout's masks stay the full computation's: no shortcut then.
    class_token_only = not (self.all_tokens or (train and self.dropout > 0))
    for i, rate in enumerate(droppath.rates(self.drop_path, self.num_layers)):
      inner, outer = block(
          inner_heads=self.inner_heads, num_heads=self.num_heads,
          inner_mlp_dim=self.inner_mlp_dim, mlp_dim=self.mlp_dim, drop_path=rate,
          dropout=self.dropout, gelu=self.gelu, layernorm_epsilon=self.layernorm_epsilon,
          relative_grid=(gh, gw) if self.posemb == "relative" else None,
          queries=int(class_token_only and i == self.num_layers - 1),
          name=f"blocks_{i}", **dt)(inner, outer if i == 0 else add_posemb(i, outer), train)
    x = norm("norm")(outer)[:, 0]
    if self.representation_size:
      x = nn.tanh(nn.Dense(self.representation_size, kernel_init=TRUNC, name="pre_logits",
                           **dt)(x))
    self.sow("intermediates", FEATURES, x)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                    bias_init=nn.initializers.constant(self.head_bias_init), dtype=jnp.float32,
                    param_dtype=self.param_dtype, name="head")(x.astype(jnp.float32))


# The TNT paper's Table 1 (timm's tnt_s_patch16_224 and tnt_b_patch16_224).
ARCH_KEYS = ("patch_size", "inner_dim", "hidden_size", "num_layers", "inner_heads", "num_heads",
             "inner_mlp_dim", "mlp_dim")
PRESETS: dict[str, dict[str, int]] = {
    "TNT-S": dict(zip(ARCH_KEYS, (16, 24, 384, 12, 4, 6, 96, 1536), strict=True)),
    "TNT-B": dict(zip(ARCH_KEYS, (16, 40, 640, 12, 4, 10, 160, 2560), strict=True)),
}
DEFAULTS: dict[str, Any] = {
    "inner_stride": 4,  # of the pixel convolution: ceil(patch_size / stride)^2 inner tokens
    "representation_size": 0,  # 0: no tanh pre-logits layer (the original TNT has none)
    "dropout": 0.0,  # after the position add, attention projections and MLPs
    "drop_path": 0.0,  # stochastic depth of the last block (linear from 0 at the first)
    "head_bias_init": 0.0,
    "dtype": "float32",
    "gelu": "exact",  # PyTorch's nn.GELU
    "layernorm_epsilon": 1e-5,  # PyTorch's nn.LayerNorm default, used by timm's TNT
    "posemb": "learn1d",  # `patch_pos`; or another kind of vit_jax.models.posemb
    "posemb_mode": "stem",
    "remat": "none",
}


def build(model: Mapping[str, Any], num_classes: int) -> TNT:
  """The TNT a resolved `config.model` section describes."""
  return TNT(
      num_classes=num_classes, **{key: model[key] for key in ARCH_KEYS},
      inner_stride=model["inner_stride"], representation_size=model["representation_size"],
      dropout=model["dropout"], drop_path=model["drop_path"],
      head_bias_init=model["head_bias_init"], gelu=model["gelu"],
      layernorm_epsilon=model["layernorm_epsilon"], posemb=model["posemb"],
      posemb_mode=model["posemb_mode"], remat=model["remat"], dtype=jnp.dtype(model["dtype"]))


def check_config(values: Mapping[str, Any], backend: str) -> list[str]:
  """What is wrong between the keys of a TNT config (see `Family.check`)."""
  del backend
  problems = []
  p, size = values.get("model.patch_size"), values.get("image_size")
  if p is not None and size is not None and size % p:
    problems.append(f"image_size {size} is not divisible by model.patch_size {p}; use a "
                    f"multiple of {p} such as {max(1, round(size / p)) * p}")
  for width, heads in (("inner_dim", "inner_heads"), ("hidden_size", "num_heads")):
    w, h = values.get(f"model.{width}"), values.get(f"model.{heads}")
    if w is not None and h is not None and w % h:
      problems.append(f"model.{width} {w} is not divisible by model.{heads} {h}; use a "
                      f"multiple of {h} such as {max(1, round(w / h)) * h}")
  stride = values.get("model.inner_stride")
  if stride is not None and stride < 1:
    problems.append(f"model.inner_stride {stride} must be at least 1 (4 in the paper)")
  remat = values.get("model.remat")
  if remat is not None and remat not in stack.REMAT_POLICIES:
    problems.append(f"model.remat '{remat}' is not one of {', '.join(stack.REMAT_POLICIES)}")
  kind, mode = values.get("model.posemb"), values.get("model.posemb_mode")
  if kind is not None and mode is not None:
    problem = posemb.check(kind, mode, values.get("model.hidden_size") or 0)
    problems += [f"model.{problem}"] if problem else []
  return problems


def _attention_flops(tokens: int, width: int) -> int:
  """qk, v and output projections, logits and weighted values of one sequence (2 per MAC)."""
  return 2 * tokens * width * 4 * width + 2 * 2 * tokens * tokens * width


def forward_flops(model: Mapping[str, Any], image_size: tuple[int, int], channels: int,
                  num_classes: int) -> int:
  """Matmul FLOPs of one image's forward pass (2 per multiply-add).

  The pixel convolution (every tap, padding included), the stem projection, per block the inner
  attention and MLP of every patch, the inner-to-outer projection, the outer attention and MLP,
  and the head.
  """
  p, c, d = model["patch_size"], model["inner_dim"], model["hidden_size"]
  patches = (image_size[0] // p) * (image_size[1] // p)
  pixels = inner_side(p, model["inner_stride"]) ** 2  # inner tokens per patch
  conv = 2 * patches * pixels * KERNEL * KERNEL * channels * c
  stem = 2 * patches * pixels * c * d
  inner = patches * (_attention_flops(pixels, c) + 2 * 2 * pixels * c * model["inner_mlp_dim"])
  tokens = patches + 1
  outer = _attention_flops(tokens, d) + 2 * 2 * tokens * d * model["mlp_dim"]
  r = model["representation_size"]
  head = 2 * d * r + 2 * (r or d) * num_classes
  return conv + stem + model["num_layers"] * (inner + stem + outer) + head


def is_tnt(params: Mapping[str, Any]) -> bool:
  """Whether top-level parameter names are a TNT's."""
  return "pixel_embed" in params


FAMILY = Family(name="TNT", arch_keys=ARCH_KEYS, presets=PRESETS, defaults=DEFAULTS,
                build=build, check=check_config, forward_flops=forward_flops,
                token_stride=lambda model: model["patch_size"], recognizes=is_tnt,
                example="TNT-S", resizable=True)
