"""T2T-ViT's tokens-to-token module: soft splits (PyTorch's nn.Unfold) and the T2T layers.

A T2T layer is a Performer (`TokenPerformer`, the authors' `Token_performer`) or a one-head
Transformer (`TokenTransformer`, their `Token_transformer`); `T2TModule` chains soft split, T2T
layer, soft split, T2T layer, soft split and the Linear `project` (see models/t2t.py). Also the
PyTorch-born building blocks the backbone shares: `dense`, `norm`, `Mlp`, `sinusoid_table`.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import inputs
from vit_jax.models.torch_layers import Mlp, dense, norm

Dtype = Any
T2T_LAYERS = ("performer", "transformer")
PERFORMER_DROPOUT = 0.1  # the reference Token_performer's fixed dp1 and dp2
KERNEL_RATIO = 0.5  # random features per token_dim of the performer
PERFORMER_EPSILON = 1e-8  # added to the performer's normaliser
# In training on a CPU the first transformer T2T layer's (3136 x 3136) logits per image are
# computed in query slices of at most this many rows: T2T-ViT_t-14's training step took 8% less
# time so with jax 0.10.2 and 2% with 0.12.0.1, while the benchmark's inference step took longer
# (docs/performance.md). Elsewhere they are computed whole.
CPU_QUERY_ROWS = 784


def padding(kernel: int, stride: int) -> int:
  """A soft split's zero padding: (k - s + 1) // 2 (2, 1, 1 for the authors' splits)."""
  return (kernel - stride + 1) // 2


def split_fits(kernel: int, stride: int) -> bool:
  """Whether a kernel x kernel split of `stride` turns every side s*n into exactly n tokens."""
  pad = padding(kernel, stride)
  return kernel >= 1 and stride >= 1 and pad >= 0 and -stride <= 2 * pad - kernel < 0


def soft_split(x: jax.Array, kernel: int, stride: int) -> jax.Array:
  """PyTorch's nn.Unfold in channels-last form: (B, H, W, C) -> (B, H', W', C*k*k).

  Feature c*k*k + i*k + j of an output position holds channel c at kernel row i, column j, the
  order of nn.Unfold; taps in the padding read zeros.
  """
  return inputs.conv_taps(x, kernel, stride, padding(kernel, stride), channels_last=False)


def sinusoid_table(positions: int, width: int) -> np.ndarray:
  """The authors' get_sinusoid_encoding: (1, positions, width), float64.

  Entry (p, i) is sin (even i) or cos (odd i) of p / 10000^(2 * (i // 2) / width).
  """
  exponent = 2 * (np.arange(width) // 2) / width
  angles = np.arange(positions)[:, None] / np.power(10000, exponent)[None, :]
  angles[:, 0::2] = np.sin(angles[:, 0::2])
  angles[:, 1::2] = np.cos(angles[:, 1::2])
  return angles[None]


def sinusoid_init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> Any:
  del key
  return jnp.asarray(sinusoid_table(shape[1], shape[2]).astype(np.float32), dtype)


def random_features_init(key: jax.Array, shape: tuple[int, ...],
                          dtype: Dtype = jnp.float32) -> jax.Array:
  """Orthonormal rows times sqrt(m), as the reference's orthogonal_(randn(m, d)) * sqrt(m)."""
  return nn.initializers.orthogonal(scale=math.sqrt(shape[0]))(key, shape, dtype)


class TokenPerformer(nn.Module):
  """The reference Token_performer: (B, T, d_in) -> (B, T, width).

  With x = norm1(x) and k, q, v = kqv(x) (in that order), phi(z) = exp(z w^T - |z|^2 / 2) / sqrt(m):
  y = phi(q) (v^T phi(k))^T / (phi(q) . sum_t phi(k) + 1e-8); x = v + dropout(proj(y));
  then x + mlp(norm2(x)) with mlp = mlp_0 -> GELU -> mlp_2 -> dropout. The feature map and the
  linear attention run in float32, as the reference's `.float()` calls.
  """

  width: int
  dropout: float = PERFORMER_DROPOUT
  gelu: str = "exact"
  layernorm_epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def features(self, z: jax.Array, w: jax.Array) -> jax.Array:
    """The positive random features phi(z), (B, T, m) in float32."""
    z = z.astype(jnp.float32)
    half_norm = jnp.sum(z * z, axis=-1, keepdims=True) / 2
    return jnp.exp(jnp.einsum("btd,md->btm", z, w) - half_norm) / math.sqrt(w.shape[0])

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    dt = (self.dtype, self.param_dtype)
    e = self.width
    m = int(e * KERNEL_RATIO)
    w = jax.lax.stop_gradient(
        self.param("w", random_features_init, (m, e), self.param_dtype).astype(jnp.float32))
    x = norm(self, "norm1")(x)
    kqv = dense(3 * e, "kqv", *dt)(x)
    k, q, v = kqv[..., :e], kqv[..., e:2 * e], kqv[..., 2 * e:]
    kp, qp = self.features(k, w), self.features(q, w)
    denominator = jnp.einsum("btm,bm->bt", qp, kp.sum(axis=1))[..., None]
    kptv = jnp.einsum("btn,btm->bnm", v.astype(jnp.float32), kp)  # (B, e, m)
    y = jnp.einsum("btm,bnm->btn", qp, kptv) / (denominator + PERFORMER_EPSILON)
    y = nn.Dropout(self.dropout, deterministic=not train)(
        dense(e, "proj", *dt)(y.astype(self.dtype)))
    x = v + y  # the values, not the (wider) input, carry the residual
    h = nn.gelu(dense(e, "mlp_0", *dt)(norm(self, "norm2")(x)), approximate=self.gelu == "tanh")
    h = nn.Dropout(self.dropout, deterministic=not train)(dense(e, "mlp_2", *dt)(h))
    return x + h


def query_rows(setting: int | None, train: bool) -> int | None:
  """The query rows per slice `TokenAttention` computes with: `setting` if given, else
  `CPU_QUERY_ROWS` in training on a CPU and the whole sequence (None) otherwise."""
  if setting is not None:
    if setting < 1:
      raise ValueError(f"query_rows {setting} is not positive; use None or a row count")
    return setting
  return CPU_QUERY_ROWS if train and jax.default_backend() == "cpu" else None


def sliced_attention(q: jax.Array, k: jax.Array, v: jax.Array, rows: int | None) -> jax.Array:
  """softmax(q k^T) v over (B, T, D) arrays, the queries in equal slices of at most `rows` rows.

  Every query row sees every key either way, so slicing keeps the function.
  """
  tokens = q.shape[1]
  parts = 1 if rows is None else -(-tokens // rows)
  bounds = [tokens * i // parts for i in range(parts + 1)]
  outs = []
  for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
    logits = jnp.einsum("bqd,bkd->bqk", q[:, lo:hi], k, preferred_element_type=jnp.float32)
    outs.append(jnp.einsum("bqk,bkd->bqd", jax.nn.softmax(logits, axis=-1).astype(v.dtype), v))
  return outs[0] if parts == 1 else jnp.concatenate(outs, axis=1)


class TokenAttention(nn.Module):
  """The reference token_transformer.Attention with one head: v + proj(softmax(q k^T s) v).

  `qkv` (no bias) gives q, k, v of `width` each; s = (input width)^-0.5. `query_rows`: see
  `query_rows` (the function); it changes the speed, not the function.
  """

  width: int
  query_rows: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    e = self.width
    qkv = dense(3 * e, "qkv", self.dtype, self.param_dtype, use_bias=False)(x)
    q, k, v = qkv[..., :e], qkv[..., e:2 * e], qkv[..., 2 * e:]
    y = sliced_attention(q * x.shape[-1] ** -0.5, k, v, query_rows(self.query_rows, train))
    return v + dense(e, "proj", self.dtype, self.param_dtype)(y)


class TokenTransformer(nn.Module):
  """The reference Token_transformer: x = attn(norm1(x)); x + mlp(norm2(x)), no dropout."""

  width: int
  gelu: str = "exact"
  layernorm_epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = TokenAttention(self.width, name="attn", **dt)(norm(self, "norm1")(x), train)
    return x + Mlp(self.width, gelu=self.gelu, name="mlp", **dt)(norm(self, "norm2")(x), train)


class T2TModule(nn.Module):
  """Soft split, T2T layer, soft split, T2T layer, soft split, `project`: (B, H, W, C) -> tokens."""

  hidden_size: int
  token_dim: int
  t2t_layer: str
  kernels: tuple[int, ...]
  strides: tuple[int, ...]
  performer_dropout: float = PERFORMER_DROPOUT
  gelu: str = "exact"
  layernorm_epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.t2t_layer not in T2T_LAYERS:
      raise ValueError(f"t2t_layer '{self.t2t_layer}' is not one of {', '.join(T2T_LAYERS)}")
    settings = dict(gelu=self.gelu, layernorm_epsilon=self.layernorm_epsilon, dtype=self.dtype,
                    param_dtype=self.param_dtype)
    if self.t2t_layer == "performer":
      settings["dropout"] = self.performer_dropout
    layer = TokenPerformer if self.t2t_layer == "performer" else TokenTransformer
    for i in range(2):
      x = soft_split(x, self.kernels[i], self.strides[i])
      batch, height, width, features = x.shape
      x = layer(self.token_dim, name=f"attention{i + 1}", **settings)(
          x.reshape(batch, height * width, features), train)
      x = x.reshape(batch, height, width, self.token_dim)
    x = soft_split(x, self.kernels[2], self.strides[2])
    batch, height, width, features = x.shape
    return dense(self.hidden_size, "project", self.dtype, self.param_dtype)(
        x.reshape(batch, height * width, features))
