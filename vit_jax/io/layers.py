"""Converting between per-layer and scanned block parameters.

Checkpoints and interchange files always hold one subtree per layer: a ViT's
`Transformer/encoderblock_{i}/...`, a Mixer's `MixerBlock_{i}/...`. A model built with
`scan_layers` keeps the same tensors as one subtree (`Transformer/encoderblock/...`,
`MixerBlock/...`) with a leading layer axis. The conversions apply wherever such a subtree
appears in a pytree, so they also convert optimizer states that mirror the parameters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

SCANNED_NAMES = ("encoderblock", "MixerBlock")  # the scanned subtree of each family
_LAYER = re.compile(rf"^({'|'.join(SCANNED_NAMES)})_(\d+)$")


def _scanned_name(node: Any) -> str | None:
  if isinstance(node, Mapping):
    return next((name for name in SCANNED_NAMES if name in node), None)
  return None


def _has_scanned(node: Any) -> bool:
  return _scanned_name(node) is not None


def _has_layers(node: Any) -> bool:
  return isinstance(node, Mapping) and any(_LAYER.match(str(k)) for k in node)


def _unstack(node: Mapping, count: int) -> dict:
  name = _scanned_name(node)
  stacked = node[name]
  out = {k: v for k, v in node.items() if k != name}
  for i in range(count):
    out[f"{name}_{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
  return out


def _stack(node: Mapping) -> dict:
  matches = [_LAYER.match(str(k)) for k in node]
  name = next(m.group(1) for m in matches if m)
  indices = sorted(int(m.group(2)) for m in matches if m and m.group(1) == name)
  if indices != list(range(len(indices))):
    raise ValueError(f"{name} layers {indices} are not numbered 0..{len(indices) - 1}")
  layers = [node[f"{name}_{i}"] for i in indices]
  out = {k: v for k, v in node.items() if not _LAYER.match(str(k))}
  out[name] = jax.tree.map(lambda *a: jnp.stack(a), *layers)
  return out


def to_per_layer(tree: Any) -> Any:
  """Every scanned subtree of `tree` (`encoderblock`, `MixerBlock`) split into `{name}_{i}`.

  The layer count comes from the first subtree holding an array, so subtrees without arrays
  (e.g. optimizer-state placeholders of frozen parameters) are split alike.
  """
  counts = [a.shape[0] for node in jax.tree.leaves(tree, is_leaf=_has_scanned)
            if _has_scanned(node) for a in jax.tree.leaves(node[_scanned_name(node)])]
  if not counts:
    return tree
  return jax.tree.map(lambda n: _unstack(n, counts[0]) if _has_scanned(n) else n, tree,
                      is_leaf=_has_scanned)


def to_scanned(tree: Any) -> Any:
  """Every set of `{name}_{i}` subtrees of `tree` stacked into one `{name}` subtree."""
  return jax.tree.map(lambda n: _stack(n) if _has_layers(n) else n, tree, is_leaf=_has_layers)
