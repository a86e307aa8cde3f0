"""Mixup and CutMix of a batch against NumPy re-computations of their definitions."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from vit_jax import configuration
from vit_jax.configuration import ConfigError
from vit_jax.train import mix

B, H, W, C, K = 6, 8, 8, 3, 5


def example(seed=0):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(B, H, W, C)).astype(np.float32)
  labels = rng.integers(0, K, size=B)
  targets = (np.eye(K)[labels] * 0.9 + 0.1 / K).astype(np.float32)  # smoothed, ls = 0.1
  return images, targets


def mixed(images, targets, mask, d):
  x, t = mix.apply(jnp.asarray(images), jnp.asarray(targets), jnp.asarray(mask), d)
  return np.asarray(x), np.asarray(t)


def a_draw(lam, cutmix=False, box=(0, 0, 0, 0)):
  return mix.Draw(lam=jnp.float32(lam), cutmix=jnp.asarray(cutmix),
                  box=jnp.asarray(box, jnp.int32))


def test_mixup_blends_each_example_with_the_batch_reversed():
  images, targets = example()
  x, t = mixed(images, targets, np.ones(B, np.float32), a_draw(0.3))
  for i in range(B):
    j = B - 1 - i
    np.testing.assert_allclose(x[i], 0.3 * images[i] + 0.7 * images[j], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(t[i], 0.3 * targets[i] + 0.7 * targets[j], rtol=1e-6)
  np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)  # still distributions


def test_cutmix_pastes_the_partners_box_and_weights_targets_by_its_area():
  images, targets = example(1)
  x, t = mixed(images, targets, np.ones(B, np.float32), a_draw(0.9, True, (1, 5, 2, 7)))
  want = images.copy()
  for i in range(B):
    for r in range(1, 5):
      for c in range(2, 7):
        want[i, r, c] = images[B - 1 - i, r, c]
  np.testing.assert_array_equal(x, want)
  lam = 1 - (4 * 5) / (H * W)  # the box's area, not the drawn 0.9
  np.testing.assert_allclose(t, lam * targets + (1 - lam) * targets[::-1], rtol=1e-6)


@pytest.mark.parametrize("lam,cy,cx", [(0.3, 4, 4), (0.5, 0, 7), (0.9, 7, 0), (0.05, 2, 5),
                                       (0.999, 3, 3), (0.0, 4, 4)])
def test_cutmix_box_follows_timms_rule(lam, cy, cx):
  cut_h, cut_w = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
  want = (min(max(cy - cut_h // 2, 0), H), min(max(cy + cut_h // 2, 0), H),
          min(max(cx - cut_w // 2, 0), W), min(max(cx + cut_w // 2, 0), W))
  got = mix.box_from(jnp.float32(lam), jnp.int32(cy), jnp.int32(cx), H, W)
  assert tuple(int(v) for v in got) == want


def test_uint8_images_are_mixed_in_the_models_input_range():
  rng = np.random.default_rng(2)
  pixels = rng.integers(0, 256, (B, H, W, C)).astype(np.uint8)
  _, targets = example()
  x, _ = mixed(pixels, targets, np.ones(B, np.float32), a_draw(0.25))
  unit = pixels.astype(np.float64) / 127.5 - 1.0  # vit_jax.models.inputs' mapping
  np.testing.assert_allclose(x, 0.25 * unit + 0.75 * unit[::-1], atol=1e-6)


def test_a_row_whose_partner_has_mask_0_stays_unmixed_and_masks_are_kept():
  images, targets = example(3)
  mask = np.ones(B, np.float32)
  mask[0] = 0.0  # a padding row: row B-1 is its partner
  for d in (a_draw(0.4), a_draw(0.4, True, (0, 4, 0, 8))):
    x, t = mixed(images, targets, mask, d)
    np.testing.assert_array_equal(x[B - 1], images[B - 1])
    np.testing.assert_array_equal(t[B - 1], targets[B - 1])
    for i in range(1, B - 1):  # rows with a read partner are mixed
      assert not np.allclose(x[i], images[i])


def test_the_draw_is_reproducible_from_seed_and_step():
  images, targets = example(4)
  mask = np.ones(B, np.float32)
  settings = mix.Settings(mixup_alpha=0.8, cutmix_alpha=1.0)

  draw = jax.jit(mix.draw, static_argnums=(1, 2, 3))

  def run(seed, step):
    d = draw(mix.step_key(seed, step), settings, H, W)
    return (float(d.lam), bool(d.cutmix), tuple(np.asarray(d.box))), mixed(images, targets,
                                                                          mask, d)

  (choice_a, (x_a, t_a)), (choice_b, (x_b, t_b)) = run(0, 5), run(0, 5)
  assert choice_a == choice_b
  np.testing.assert_array_equal(x_a, x_b)
  np.testing.assert_array_equal(t_a, t_b)
  for other in (run(0, 6), run(1, 5)):
    assert other[0][0] != choice_a[0]  # another lambda
  # Another stream than the step's dropout keys (the step's key and its micro-batch folds).
  step_key = jax.random.fold_in(jax.random.key(0), 5)
  data = jax.random.key_data
  for dropout in (step_key, *(jax.random.fold_in(step_key, k) for k in range(8))):
    assert not np.array_equal(data(mix.step_key(0, 5)), data(dropout))


def test_mix_prob_0_leaves_the_batch_untouched():
  images, targets = example(5)
  settings = mix.Settings(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.0)
  assert not settings.enabled and not mix.OFF.enabled
  mix_batch = jax.jit(mix.mix_batch, static_argnums=4)
  for step in range(5):
    x, t = mix_batch(mix.step_key(0, step), jnp.asarray(images), jnp.asarray(targets),
                     jnp.ones(B), settings)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(t, targets)


@pytest.mark.slow
def test_draw_frequencies_and_lambda_distribution():
  # Beta(a, a) has mean 1/2 and variance 1 / (4 (2a + 1)).
  settings = mix.Settings(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.6)
  keys = jax.random.split(jax.random.key(0), 4000)
  d = jax.jit(jax.vmap(lambda k: mix.draw(k, settings, 32, 32)))(keys)
  lam, cutmix, box = np.asarray(d.lam), np.asarray(d.cutmix), np.asarray(d.box)
  applied = lam < 1
  assert abs(applied.mean() - 0.6) < 0.03
  assert not cutmix[~applied].any()
  assert abs(cutmix[applied].mean() - 0.5) < 0.04
  for alpha, which in ((0.8, ~cutmix & applied), (1.0, cutmix)):
    assert abs(lam[which].mean() - 0.5) < 0.03
    assert abs(lam[which].var() - 1 / (4 * (2 * alpha + 1))) < 0.01
  area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2]) / (32 * 32)
  assert not area[~cutmix].any()
  # Sides rounded down and boxes clipped at the border: never more than drawn, hence the
  # area-corrected lambda of the targets.
  assert (area[cutmix] <= 1 - lam[cutmix] + 1e-6).all() and (area[cutmix] > 0).mean() > 0.8


def test_one_alpha_alone_always_gives_its_method():
  key = jax.random.key(3)
  assert not mix.draw(key, mix.Settings(mixup_alpha=0.8), H, W).cutmix
  assert mix.draw(key, mix.Settings(cutmix_alpha=1.0), H, W).cutmix
  assert mix.draw(key, mix.Settings(cutmix_alpha=1.0, prob=0.0), H, W).lam == 1.0


def config_with(key, value):
  """The default config (all of this off) with one dotted key set to any value."""
  d = configuration.resolve_model(common.get_config()).to_dict()
  *path, last = key.split(".")
  section = d
  for part in path:
    section = section[part]
  section[last] = value
  return ml_collections.ConfigDict(d, type_safe=False)


@pytest.mark.parametrize("key,value,message", [
    ("label_smoothing", 1.0, "label_smoothing must be in [0, 1), got 1.0"),
    ("mixup_alpha", -0.5, "mixup_alpha must be at least 0, got -0.5"),
    ("cutmix_alpha", "1", "cutmix_alpha must be a float, got str '1'"),
    ("mix_prob", 1.5, "mix_prob must be in [0, 1], got 1.5"),
    ("mix_switch_prob", -0.1, "mix_switch_prob must be in [0, 1], got -0.1"),
    ("model.drop_path", 1.0, "model.drop_path must be in [0, 1), got 1.0"),
])
def test_the_settings_are_checked(key, value, message):
  with pytest.raises(ConfigError) as err:
    configuration.validate(config_with(key, value), device_count=1)
  assert message in str(err.value)


def test_the_defaults_are_off_and_edge_values_are_accepted():
  config = common.get_config()
  assert (config.label_smoothing, config.mixup_alpha, config.cutmix_alpha) == (0.0, 0.0, 0.0)
  assert config.model.drop_path == 0.0
  for key, value in (("mix_prob", 0.0), ("mix_prob", 1), ("mix_switch_prob", 1.0),
                     ("label_smoothing", 0.1), ("mixup_alpha", 0.8), ("cutmix_alpha", 1.0),
                     ("model.drop_path", 0.1)):
    configuration.validate(config_with(key, value), device_count=1)
