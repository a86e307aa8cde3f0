"""Attention weights of a trained ViT, recovered without changing the model, and what the paper
computes from them: attention rollout (Abnar & Zuidema 2020; the paper's Figure 6) and the mean
attention distance of every head (Figure 7, right).

The model is applied per layer (no `nn.scan`) with Flax's `capture_intermediates`, which records
the outputs of each encoder block's `MultiHeadDotProductAttention_1/query` and `.../key`
projections (B, T, H, D) and, for `posemb=relative`, the gathered table of its `relative_posemb`
module (T, T, D). The weights are then recomputed in float32 as

    softmax((q . k + q . R) / sqrt(D))

(R only with the relative embedding), the logits the attention module itself computes. Tokens
are ordered as in the model: the class token first (`pool=token`), then the patches in raster
order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ATTENTION = "MultiHeadDotProductAttention_1"  # an encoder block's self-attention module
CAPTURED = ("query", "key", "relative_posemb")  # what the weights are recomputed from
Inspector = Callable[[Any, Any], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where the patches are among a model's tokens, and how large they are in pixels."""

  grid: tuple[int, int]  # patch rows, patch columns
  num_prefix: int  # class tokens before the patches (1 with pool=token, else 0)
  patch_size: int


def layout(model: Mapping[str, Any], height: int, width: int) -> Layout:
  """The token layout of a resolved `config.model` section on (height, width) images.

  Raises ValueError for a model without attention (a Mixer).
  """
  from vit_jax.models import inputs, registry

  family = registry.family_of(model["name"])
  if "pool" not in model:
    raise ValueError(f"{model['name']} is a {family.name} model: it has no attention to show; "
                     "attention figures need a ViT or hybrid run")
  stride = family.token_stride(model)
  grid = inputs.check_grid(height, width, stride)
  return Layout(grid, int(model["pool"] == "token"), stride)


def inspection_model(model: Mapping[str, Any], num_classes: int) -> Any:
  """The model of `model` as checkpoints store it: per layer, no remat, Flax's own attention,
  every token computed in the last block (`all_tokens`; else only the class token's query).

  None of these settings changes the parameters or the function computed; Flax's attention
  (`plain`) runs on every backend and dtype, so a run trained with cuDNN's kernel can be
  inspected on a CPU.
  """
  from vit_jax.models import registry

  module = registry.build({**model, "scan_layers": False, "remat": "none", "attention": "plain"},
                          num_classes)
  return module.clone(all_tokens=True) if hasattr(module, "all_tokens") else module


def _in_block(module: Any, method: str, names: Sequence[str]) -> bool:
  path = module.path
  return (method == "__call__" and len(path) >= 3 and path[0] == "Transformer"
          and path[1].startswith("encoderblock_") and module.name in names)


def _lookup(tree: Mapping[str, Any], path: Sequence[str]) -> Any:
  """The first captured output at `path` in a block's intermediates, or None."""
  for name in [*path, "__call__"]:
    if name not in tree:
      return None
    tree = tree[name]
  return tree[0]


def capture(module: Any, params: Any, images: Any, names: Sequence[str] = CAPTURED
            ) -> tuple[jax.Array, dict[str, list[jax.Array]]]:
  """Logits, and per name the output of every encoder block's submodule of that name.

  `names` are submodules of the attention (`query`, `key`, `value`, `out`), the attention
  module itself (`MultiHeadDotProductAttention_1`) or `relative_posemb`; result[name][i] is
  block i's output (a name a block lacks, e.g. `relative_posemb`, gives an empty list).
  """
  logits, state = module.apply({"params": params}, images, mutable=["intermediates"],
                               capture_intermediates=lambda m, f: _in_block(m, f, names))
  blocks = state["intermediates"].get("Transformer", {})
  count = sum(1 for key in blocks if key.startswith("encoderblock_"))
  out: dict[str, list[jax.Array]] = {name: [] for name in names}
  for i in range(count):
    block = blocks[f"encoderblock_{i}"]
    for name in names:
      found = _lookup(block, [name] if name in (ATTENTION, "relative_posemb")
                      else [ATTENTION, name])
      if found is not None:
        out[name].append(found)
  return logits, out


def weights_from(query: jax.Array, key: jax.Array, table: jax.Array | None = None) -> jax.Array:
  """Attention weights (B, H, T, T), float32, from one block's query and key (B, T, H, D).

  `table` is the block's gathered relative table (T, T, D), for `posemb=relative`.
  """
  from vit_jax.models import posemb

  q, k = query.astype(jnp.float32), key.astype(jnp.float32)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(q.shape[-1]))
  if table is not None:
    logits = logits + posemb.relative_bias(table.astype(jnp.float32))(q)
  return jax.nn.softmax(logits, axis=-1)


def make_inspector(model: Mapping[str, Any], num_classes: int) -> Inspector:
  """A jitted (params, images) -> (logits (B, classes), weights (L, B, H, T, T) float32).

  `images` are uint8 pixels or floats in [-1, 1] (vit_jax.models.inputs), (B, H, W, C) with H
  and W multiples of the patch size.
  """
  module = inspection_model(model, num_classes)

  def inspect(params: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits, out = capture(module, params, images)
    tables = out["relative_posemb"] or [None] * len(out["query"])
    weights = [weights_from(q, k, t) for q, k, t in zip(out["query"], out["key"], tables,
                                                         strict=True)]
    return logits, jnp.stack(weights)

  return jax.jit(inspect)


def rollout(weights: Any) -> Any:
  """Attention rollout (..., T, T) of per-layer weights (L, ..., H, T, T).

  Per layer the heads are averaged, the residual added as 0.5 A + 0.5 I and the rows
  renormalised; the layers are multiplied through, last layer leftmost: row t of the result is
  how token t of the last layer draws on the input tokens.
  """
  mixed = 0.5 * weights.mean(axis=-3) + 0.5 * np.eye(weights.shape[-1], dtype=weights.dtype)
  mixed = mixed / mixed.sum(axis=-1, keepdims=True)
  joint = mixed[0]
  for layer in mixed[1:]:
    joint = layer @ joint
  return joint


def token_map(attention: Any, where: Layout) -> Any:
  """(..., gh, gw): the class token's row of `attention` (..., T, T) over the patch columns,
  renormalised to sum 1; without a class token the mean of the patch rows."""
  p = where.num_prefix
  row = attention[..., 0, p:] if p else attention[..., p:, p:].mean(axis=-2)
  total = row.sum(axis=-1, keepdims=True)
  row = row / (total + (total == 0))  # no weight on any patch: an all-zero map
  return row.reshape(*row.shape[:-1], *where.grid)


def rollout_map(weights: Any, where: Layout) -> Any:
  """(..., gh, gw): the rollout of weights (L, ..., H, T, T) as a map over the patches."""
  return token_map(rollout(weights), where)


def head_maps(weights: Any, where: Layout) -> Any:
  """(..., H, gh, gw): every head's map (`token_map`) in the last layer of (L, ..., H, T, T)."""
  return token_map(weights[-1], where)


def patch_distances(where: Layout) -> np.ndarray:
  """(N, N) pixel distances between the centres of the N patches (patch_size * grid distance)."""
  rows, cols = np.meshgrid(np.arange(where.grid[0]), np.arange(where.grid[1]), indexing="ij")
  rows, cols = rows.reshape(-1), cols.reshape(-1)
  grid = np.hypot(rows[:, None] - rows[None, :], cols[:, None] - cols[None, :])
  return (where.patch_size * grid).astype(np.float32)


def mean_distance(weights: Any, where: Layout) -> Any:
  """(L, ..., H): the mean attention distance in pixels of every head, from (L, ..., H, T, T).

  Only patch queries and patch keys count: the weights a patch gives the patches are
  renormalised to sum 1 (the class token, which has no position, is left out), the distance to
  each key patch is weighted by them, and the result is averaged over the query patches.
  """
  p = where.num_prefix
  patches = weights[..., p:, p:]
  patches = patches / patches.sum(axis=-1, keepdims=True)
  return (patches * patch_distances(where)).sum(axis=-1).mean(axis=-1)


def uniform_distance(where: Layout) -> float:
  """The mean attention distance of a head that weights every patch equally."""
  return float(patch_distances(where).mean())


def upsample(patch_map: np.ndarray, height: int, width: int) -> np.ndarray:
  """A (gh, gw) map resized bilinearly to (height, width) pixels, as images are resized."""
  from vit_jax.data import preprocess

  image = np.asarray(patch_map, np.float32)[..., None]
  return preprocess.resize(image, height, width)[..., 0]
