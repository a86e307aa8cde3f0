"""Mixup (Zhang et al., 2018) and CutMix (Yun et al., 2019) of a whole batch, on the device.

The semantics are those of timm's `Mixup` in "batch" mode, as DeiT trains: one draw per batch
decides whether to mix at all (probability `prob`), mixup or CutMix (CutMix with probability
`switch_prob` when both alphas are positive) and lambda ~ Beta(alpha, alpha). Every example is
mixed with its partner in the batch reversed (row i with row B-1-i). Mixup blends the images
as lam * x + (1 - lam) * partner; CutMix pastes the partner's pixels inside a box whose area is
about 1 - lam of the image, and the targets use the box's actual area (lam = 1 - box area /
image area). The targets (one-hot, possibly smoothed) are mixed with the same weight.

Rows with mask 0 (examples the input could not read, padding of a partial batch) keep mask 0,
so they count for nothing; and a row whose partner has mask 0 is left unmixed, so no example
takes pixels or a label from a row that holds no example.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from vit_jax.models import inputs

# Folded into the step's key for the mixing draw. The dropout keys of a step are the step's key
# itself and its folds with the micro-batch indices 0, 1, ...: this is far beyond any of those.
STREAM = 0x6D6978  # "mix"


class Settings(NamedTuple):
  """How a batch is mixed; mixing is off when both alphas are 0 or `prob` is 0."""

  mixup_alpha: float = 0.0  # Beta(alpha, alpha) of mixup's lambda; 0: no mixup
  cutmix_alpha: float = 0.0  # Beta(alpha, alpha) of CutMix's lambda; 0: no CutMix
  prob: float = 1.0  # probability that a batch is mixed at all
  switch_prob: float = 0.5  # probability of CutMix rather than mixup when both are on

  @property
  def enabled(self) -> bool:
    """Whether any batch can be mixed."""
    return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0


OFF = Settings()  # no mixing


class Draw(NamedTuple):
  """The random choices of one batch."""

  lam: jax.Array  # the drawn lambda: an example's own share (CutMix sizes its box by it); 1: none
  cutmix: jax.Array  # bool: paste a box of the partner instead of blending
  box: jax.Array  # (y0, y1, x0, x1), int32: rows y0..y1-1, columns x0..x1-1 pasted; 0 unless cutmix


def step_key(seed: int, step: jax.Array) -> jax.Array:
  """The key of the mixing draw of training step `step` of a run with `seed`."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), STREAM)


def box_from(lam: jax.Array, cy: jax.Array, cx: jax.Array, height: int,
             width: int) -> jax.Array:
  """CutMix's box (y0, y1, x0, x1) for lambda `lam` centred at pixel (cy, cx).

  As timm: sides of floor(side * sqrt(1 - lam)) pixels, extended by half of that (rounded down)
  on each side of the centre, then clipped to the image.
  """
  ratio = jnp.sqrt(1.0 - lam)
  half_h = jnp.floor(height * ratio).astype(jnp.int32) // 2
  half_w = jnp.floor(width * ratio).astype(jnp.int32) // 2
  return jnp.stack([jnp.clip(cy - half_h, 0, height), jnp.clip(cy + half_h, 0, height),
                    jnp.clip(cx - half_w, 0, width), jnp.clip(cx + half_w, 0, width)])


def draw(key: jax.Array, settings: Settings, height: int, width: int) -> Draw:
  """One batch's choices for images of `height` x `width` pixels."""
  k_apply, k_switch, k_mixup, k_cutmix, k_y, k_x = jax.random.split(key, 6)
  applied = jax.random.uniform(k_apply) < settings.prob
  if settings.mixup_alpha > 0 and settings.cutmix_alpha > 0:
    cutmix = jax.random.uniform(k_switch) < settings.switch_prob
  else:
    cutmix = jnp.asarray(settings.cutmix_alpha > 0)

  def beta(k: jax.Array, alpha: float) -> jax.Array:
    return jax.random.beta(k, alpha, alpha) if alpha > 0 else jnp.ones((), jnp.float32)

  lam = jnp.where(cutmix, beta(k_cutmix, settings.cutmix_alpha),
                  beta(k_mixup, settings.mixup_alpha))
  lam = jnp.where(applied, lam, 1.0)
  cy = jax.random.randint(k_y, (), 0, height)
  cx = jax.random.randint(k_x, (), 0, width)
  cutmix = cutmix & applied
  box = jnp.where(cutmix, box_from(lam, cy, cx, height, width), 0)
  return Draw(lam=lam, cutmix=cutmix, box=box)


def apply(images: jax.Array, targets: jax.Array, mask: jax.Array,
          d: Draw) -> tuple[jax.Array, jax.Array]:
  """(images, targets) mixed as `d` says: images (B, H, W, C), targets (B, K), mask (B,).

  uint8 images are first mapped to the model's float input range (`inputs.to_unit_range`),
  which the model then takes as they are.
  """
  x = inputs.to_unit_range(images)
  height, width = x.shape[1:3]
  partner, partner_targets = x[::-1], targets[::-1]
  y0, y1, x0, x1 = d.box
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  pasted = jnp.where(inside[None, :, :, None], partner, x)
  blended = (d.lam * x + (1.0 - d.lam) * partner).astype(x.dtype)
  area = ((y1 - y0) * (x1 - x0)).astype(jnp.float32)
  weight = jnp.where(d.cutmix, 1.0 - area / (height * width), d.lam)
  mixed = jnp.where(d.cutmix, pasted, blended)
  mixed_targets = weight * targets + (1.0 - weight) * partner_targets
  mixes = mask[::-1] > 0  # a row whose partner holds no example stays as it is
  return (jnp.where(mixes[:, None, None, None], mixed, x),
          jnp.where(mixes[:, None], mixed_targets, targets).astype(targets.dtype))


def mix_batch(key: jax.Array, images: jax.Array, targets: jax.Array, mask: jax.Array,
              settings: Settings) -> tuple[jax.Array, jax.Array]:
  """Mixed (images, targets) of a whole batch, drawn from `key` (see `apply`)."""
  return apply(images, targets, mask, draw(key, settings, images.shape[1], images.shape[2]))
