"""Converting between per-layer and scanned encoder parameters.

Checkpoints and interchange files always hold `Transformer/encoderblock_{i}/...`, one subtree per
layer. A model built with `scan_layers` keeps the same tensors as one subtree
`Transformer/encoderblock/...` with a leading layer axis. The conversions apply wherever such a
subtree appears in a pytree, so they also convert optimizer states that mirror the parameters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

SCANNED = "encoderblock"
_LAYER = re.compile(rf"^{SCANNED}_(\d+)$")


def _has_scanned(node: Any) -> bool:
  return isinstance(node, Mapping) and SCANNED in node


def _has_layers(node: Any) -> bool:
  return isinstance(node, Mapping) and any(_LAYER.match(str(k)) for k in node)


def _unstack(node: Mapping, count: int) -> dict:
  stacked = node[SCANNED]
  out = {k: v for k, v in node.items() if k != SCANNED}
  for i in range(count):
    out[f"{SCANNED}_{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
  return out


def _stack(node: Mapping) -> dict:
  indices = sorted(int(_LAYER.match(str(k)).group(1)) for k in node if _LAYER.match(str(k)))
  if indices != list(range(len(indices))):
    raise ValueError(f"encoder layers {indices} are not numbered 0..{len(indices) - 1}")
  layers = [node[f"{SCANNED}_{i}"] for i in indices]
  out = {k: v for k, v in node.items() if not _LAYER.match(str(k))}
  out[SCANNED] = jax.tree.map(lambda *a: jnp.stack(a), *layers)
  return out


def to_per_layer(tree: Any) -> Any:
  """Every scanned `encoderblock` subtree of `tree` split into `encoderblock_{i}` subtrees.

  The layer count comes from the first subtree holding an array, so subtrees without arrays
  (e.g. optimizer-state placeholders of frozen parameters) are split alike.
  """
  counts = [a.shape[0] for node in jax.tree.leaves(tree, is_leaf=_has_scanned)
            if _has_scanned(node) for a in jax.tree.leaves(node[SCANNED])]
  if not counts:
    return tree
  return jax.tree.map(lambda n: _unstack(n, counts[0]) if _has_scanned(n) else n, tree,
                      is_leaf=_has_scanned)


def to_scanned(tree: Any) -> Any:
  """Every set of `encoderblock_{i}` subtrees of `tree` stacked into one `encoderblock`."""
  return jax.tree.map(lambda n: _stack(n) if _has_layers(n) else n, tree, is_leaf=_has_layers)
