"""Learning-rate schedules and optimizer chains, built from Optax."""

from __future__ import annotations

from typing import Any

import jax
import optax

DECAYS = ("linear", "cosine", "constant")
OPTIMIZERS = ("adam", "sgd")
MOMENT_DTYPES = ("float32", "bfloat16")


def make_schedule(lr: float, warmup_steps: int, total_steps: int, decay: str) -> optax.Schedule:
  """Linear warm-up from 0 to `lr` over `warmup_steps`, then `decay` to 0 at `total_steps`."""
  if decay not in DECAYS:
    raise ValueError(f"unknown decay '{decay}'; choose one of: {', '.join(DECAYS)}")
  decay_steps = max(total_steps - warmup_steps, 1)
  if decay == "cosine":
    after = optax.cosine_decay_schedule(lr, decay_steps)
  elif decay == "linear":
    after = optax.linear_schedule(lr, 0.0, decay_steps)
  else:
    after = optax.constant_schedule(lr)
  if warmup_steps <= 0:
    return after
  warmup = optax.linear_schedule(0.0, lr, warmup_steps)
  return optax.join_schedules([warmup, after], [warmup_steps])


def decay_mask(params: Any) -> Any:
  """True for the weights that get weight decay: Dense and Conv kernels, nothing else.

  Decided by name, not rank: attention biases are (heads, head_dim) and the class token and
  position tables are 3-D, but none of them is decayed.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_optimizer(config: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  """Global-norm clipping followed by Adam with decoupled weight decay, or SGD with momentum.

  `config.moment_dtype` stores Adam's first moment (or SGD's momentum) in that dtype; Adam's
  second moment stays float32, as its small values need the precision.
  """
  if config.optimizer not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer '{config.optimizer}'; choose one of: {OPTIMIZERS}")
  moment = config.get("moment_dtype", "float32")
  if moment not in MOMENT_DTYPES:
    raise ValueError(f"unknown moment_dtype '{moment}'; choose one of: {MOMENT_DTYPES}")
  chain = []
  if config.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.optimizer == "adam":
    chain.append(optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2,
                             weight_decay=config.weight_decay, mask=decay_mask,
                             mu_dtype=moment))
  else:
    chain.append(optax.sgd(schedule, momentum=config.momentum, accumulator_dtype=moment))
    if config.weight_decay:
      chain.insert(-1, optax.add_decayed_weights(config.weight_decay, mask=decay_mask))
  return optax.chain(*chain)
