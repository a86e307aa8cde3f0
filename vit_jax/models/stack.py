"""A stack of identical residual blocks: rematerialisation and one `nn.scan` over the layers.

A block here is a module called as `block(x, train)` that takes a `scanned` attribute (then it
returns `(x, None)`, the carry and output `nn.scan` expects) and, for stochastic depth, a
`drop_path` attribute (its rate when unrolled) and an optional third argument `rate` (its rate
when scanned: a layer's rate is then a scanned input, as the layers of a scan share attributes).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import droppath

# Which activations of a block are kept for the backward pass; the rest are recomputed.
# `none` keeps all (no rematerialisation), `full` keeps only the block's input.
REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def rematted(block: type[nn.Module], remat: str) -> type[nn.Module]:
  """`block` with its activations recomputed in the backward pass as policy `remat` says."""
  if remat == "none":
    return block
  # Argument 2 (counting self) is `train`, a Python bool.
  return nn.remat(block, policy=REMAT_POLICIES[remat], static_argnums=(2,))


def scan(block: type[nn.Module], x: jax.Array, train: bool, *, num_layers: int,
         drop_path: float, name: str, **settings: Any) -> jax.Array:
  """`x` through `num_layers` blocks run as one `nn.scan` named `name` (in a compact method).

  Its parameters have a leading layer axis. Layer i drops its branches at rate
  `droppath.rates(drop_path, num_layers)[i]`; with `drop_path` 0 no rate is passed at all.
  """
  with_rates = drop_path > 0
  stack = nn.scan(block, variable_axes={"params": 0},
                  split_rngs={"params": True, "dropout": True},
                  in_axes=(nn.broadcast, 0) if with_rates else nn.broadcast, length=num_layers)
  module = stack(scanned=True, name=name, **settings)
  if with_rates:
    x, _ = module(x, train, jnp.asarray(droppath.rates(drop_path, num_layers), jnp.float32))
  else:
    x, _ = module(x, train)
  return x
