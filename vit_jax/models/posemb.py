"""Position embeddings of the paper's Appendix D.4, selected by `kind` and `mode`.

Kinds: `none`; learned `learn1d` (one row per token in raster order) and `learn2d` (row and column
tables of width D/2, concatenated); fixed `sincos1d` and `sincos2d`; and `relative`, a learned
bias q_a . R[di, dj] on the attention logits of every layer. The additive kinds are added once
before the first block (`stem`), before every block with its own table (`every_layer`), or
before every block with one table (`every_layer_shared`).

`learn1d` follows the original ViT format: with a class token the table has a leading row for
it, so checkpoints and parameter counts match the paper. The other additive kinds add nothing to
the class token.

A family may have an embedding of its own as its default (T2T-ViT's fixed sinusoid table, TNT's
`patch_pos`): `check(..., own=...)` accepts its name at the stem, and `embedder(..., stem=...)`
adds it in place of `posembed_input`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("none", "learn1d", "learn2d", "sincos1d", "sincos2d", "relative")
MODES = ("stem", "every_layer", "every_layer_shared")
LEARNED = ("learn1d", "learn2d")
FIXED = ("sincos1d", "sincos2d")
ADDITIVE = LEARNED + FIXED
# The width each kind needs to divide it into halves (sin/cos, row/col) or quarters.
WIDTH_MULTIPLE = {"learn2d": 2, "sincos1d": 2, "sincos2d": 4}
Grid = tuple[int, int]


def applicable_modes(kind: str) -> tuple[str, ...]:
  """The modes that mean something for `kind` (`stem` stands for the paper's default column)."""
  if kind in LEARNED:
    return MODES
  if kind in FIXED:  # a fixed table is the same in every layer: nothing to share
    return ("stem", "every_layer")
  return ("stem",)


def check(kind: str, mode: str, width: int, own: tuple[str, ...] = ()) -> str | None:
  """Returns a one-line description of what is wrong with (kind, mode, width), or None.

  `own` names a family's own embeddings, which apply at the stem only.
  """
  kinds = own + KINDS
  if kind not in kinds:
    return f"posemb: unknown position embedding '{kind}'; choose one of: {', '.join(kinds)}"
  if mode not in MODES:
    return (f"posemb_mode: unknown position-embedding mode '{mode}'; choose one of: "
            f"{', '.join(MODES)}")
  if kind in own and mode != "stem":
    return (f"posemb_mode '{mode}' does not apply to posemb '{kind}' (the model's own table, "
            "added once); use stem, or another posemb")
  if kind not in own and mode not in applicable_modes(kind):
    why = {"none": "nothing is added", "relative": "it biases the attention of every layer",
           "sincos1d": "a fixed table has nothing to share", "sincos2d": "a fixed table has "
           "nothing to share"}[kind]
    return (f"posemb_mode '{mode}' does not apply to posemb '{kind}' ({why}); use one of: "
            f"{', '.join(applicable_modes(kind))}")
  multiple = WIDTH_MULTIPLE.get(kind, 1)
  if width % multiple:
    return (f"posemb '{kind}' needs a hidden_size divisible by {multiple}, got {width}; use "
            f"{width + multiple - width % multiple}")
  return None


def sincos1d_table(length: int, width: int) -> np.ndarray:
  """(length, width): sin of position * w_k in the first half, cos in the second.

  w_k = 10000^(-k / (width/2)), k = 0 .. width/2 - 1 (the Transformer's frequencies).
  """
  omega = 1.0 / 10000.0 ** (np.arange(width // 2) / (width // 2))
  angles = np.arange(length)[:, None] * omega[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


def sincos2d_table(grid: Grid, width: int) -> np.ndarray:
  """(gh*gw, width) in raster order: [sin(i w), cos(i w), sin(j w), cos(j w)] for patch (i, j).

  w_k = 10000^(-k / (width/4)), k = 0 .. width/4 - 1; i is the row and j the column index.
  """
  gh, gw = grid
  quarter = width // 4
  omega = 1.0 / 10000.0 ** (np.arange(quarter) / quarter)
  rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
  ri = rows.reshape(-1, 1) * omega[None, :]
  cj = cols.reshape(-1, 1) * omega[None, :]
  return np.concatenate([np.sin(ri), np.cos(ri), np.sin(cj), np.cos(cj)], 1).astype(np.float32)


def learn2d_table(row: jax.Array, col: jax.Array) -> jax.Array:
  """(gh*gw, D) in raster order from row (gh, D/2) and column (gw, D/2) tables."""
  gh, gw = row.shape[0], col.shape[0]
  rows = jnp.broadcast_to(row[:, None, :], (gh, gw, row.shape[1]))
  cols = jnp.broadcast_to(col[None, :, :], (gh, gw, col.shape[1]))
  return jnp.concatenate([rows, cols], axis=-1).reshape(gh * gw, -1)


def patch_table(kind: str, params: dict[str, Any], grid: Grid, width: int) -> np.ndarray:
  """The (gh*gw, D) embedding each patch gets from one additive module's `params`."""
  if kind == "learn1d":
    table = np.asarray(params["pos_embedding"])[0]
    return table[table.shape[0] - grid[0] * grid[1]:]  # drop the class-token row
  if kind == "learn2d":
    return np.asarray(learn2d_table(params["row_embedding"], params["col_embedding"]))
  if kind == "sincos1d":
    return sincos1d_table(grid[0] * grid[1], width)
  if kind == "sincos2d":
    return sincos2d_table(grid, width)
  raise ValueError(f"posemb '{kind}' has no additive table; use one of: {', '.join(ADDITIVE)}")


class AddPositionEmbedding(nn.Module):
  """Adds an additive kind's table to tokens (B, num_prefix + gh*gw, D)."""

  kind: str
  grid: Grid
  num_prefix: int = 0  # class tokens before the patches
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    init = nn.initializers.normal(stddev=0.02)
    if self.kind == "learn1d":
      table = self.param("pos_embedding", init, (1, x.shape[1], width), self.param_dtype)
      return x + table.astype(x.dtype)
    if self.kind == "learn2d":
      row = self.param("row_embedding", init, (self.grid[0], width // 2), self.param_dtype)
      col = self.param("col_embedding", init, (self.grid[1], width // 2), self.param_dtype)
      table = learn2d_table(row, col)
    else:
      table = jnp.asarray(patch_table(self.kind, {}, self.grid, width))
    table = jnp.pad(table, ((self.num_prefix, 0), (0, 0)))  # class tokens get nothing
    return x + table[None].astype(x.dtype)


def embedder(kind: str, mode: str, grid: Grid, num_prefix: int, param_dtype: Any,
             stem: Callable[[jax.Array], jax.Array] | None = None
             ) -> Callable[[int, jax.Array], jax.Array]:
  """`add(i, x)`: x plus the embedding the input of block i gets (i = 0: the stem's).

  Call inside a compact method: the tables are that module's submodules, `posembed_input` (or
  `stem`, a family's own table, which `every_layer_shared` then reuses) and, in `every_layer`
  mode, `posembed_layer_{i}`. Kinds that add nothing (`none`, `relative`) return x unchanged.
  """
  if stem is None and kind not in ADDITIVE:
    return lambda i, x: x

  def table(name: str) -> AddPositionEmbedding:
    return AddPositionEmbedding(kind, grid, num_prefix, param_dtype, name=name)

  first = stem or table("posembed_input")

  def add(i: int, x: jax.Array) -> jax.Array:
    if i == 0 or mode == "every_layer_shared":
      return first(x)
    return table(f"posembed_layer_{i}")(x) if mode == "every_layer" else x

  return add


def relative_index(grid: Grid, num_prefix: int = 0) -> np.ndarray:
  """(T, T) index into the flattened relative table for every (query, key) pair.

  Patch pairs index the (2gh-1, 2gw-1) offset grid at (ia-ib+gh-1, ja-jb+gw-1). With class
  tokens, three extra rows follow: token->patch, patch->token and token->token.
  """
  gh, gw = grid
  rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
  rows, cols = rows.reshape(-1), cols.reshape(-1)
  di = rows[:, None] - rows[None, :] + gh - 1
  dj = cols[:, None] - cols[None, :] + gw - 1
  patches = di * (2 * gw - 1) + dj
  if not num_prefix:
    return patches
  base = (2 * gh - 1) * (2 * gw - 1)
  t = num_prefix + gh * gw
  index = np.full((t, t), base + 2)  # token -> token
  index[:num_prefix, num_prefix:] = base  # token -> patch
  index[num_prefix:, :num_prefix] = base + 1  # patch -> token
  index[num_prefix:, num_prefix:] = patches
  return index


class RelativeEmbedding(nn.Module):
  """The learned table R of one layer, gathered to (T, T, head_dim) for every token pair."""

  grid: Grid
  head_dim: int
  num_prefix: int = 0
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self) -> jax.Array:
    gh, gw = self.grid
    init = nn.initializers.normal(stddev=0.02)
    table = self.param("rel_embedding", init, (2 * gh - 1, 2 * gw - 1, self.head_dim),
                       self.param_dtype)
    flat = table.reshape(-1, self.head_dim)
    if self.num_prefix:
      extra = self.param("cls_embedding", init, (3, self.head_dim), self.param_dtype)
      flat = jnp.concatenate([flat, extra], axis=0)
    return flat[relative_index(self.grid, self.num_prefix)]


def relative_bias(table: jax.Array) -> Callable[[jax.Array], jax.Array]:
  """query (B, T, H, d) -> the (B, H, T, T) logit bias q_a . R[a, b] / sqrt(d) of a gathered table.

  Scaled like q.k, so the logits are q_a . (k_b + R[a, b]) / sqrt(d). A query of the first
  n < T tokens (B, n, H, d) gets their n rows, (B, H, n, T).
  """

  def bias(query: jax.Array) -> jax.Array:
    # Accumulated and returned in float32, like the q.k logits it is added to.
    scale = jnp.sqrt(jnp.float32(query.shape[-1]))
    rows = table[:query.shape[1]]  # fewer queries than keys: the first tokens'
    return jnp.einsum("bqhd,qkd->bhqk", query, rows.astype(query.dtype),
                      preferred_element_type=jnp.float32) / scale

  return bias
