import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.models import model_config
from vit_jax import attention_maps
from vit_jax.attention_maps import Layout
from vit_jax.models import registry


def tiny(**overrides):
  settings = dict(patch_size=4, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=16)
  return model_config("ViT-custom", **{**settings, **overrides}).to_dict()


def noisy_params(model, shape, seed=0):
  """Random parameters (nothing compiled), so that attention and the relative bias are far from
  flat: normal with std 0.5, LayerNorm scales around 1."""
  module = registry.build(model, 5)
  shapes = jax.eval_shape(module.init, jax.random.key(seed), jnp.zeros(shape))["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    center = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
    return (center + rng.normal(0, 0.5, leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def images(shape, seed=2):
  return jax.random.uniform(jax.random.key(seed), shape, minval=-1.0, maxval=1.0)


@pytest.mark.parametrize("overrides", [dict(pool="token"),
                                       dict(pool="gap", posemb="relative"),
                                       dict(pool="token", posemb="relative")])
def test_recomputed_weights_give_the_attention_modules_output(overrides):
  model = tiny(num_layers=1, **overrides)
  shape = (2, 8, 12, 3)  # a 2x3 grid of patches
  params = noisy_params(model, shape)
  module = attention_maps.inspection_model(model, 5)
  names = ("query", "key", "value", "relative_posemb", attention_maps.ATTENTION)
  _, out = jax.jit(lambda p, x: attention_maps.capture(module, p, x, names))(params, images(shape))
  relative = model["posemb"] == "relative"
  assert len(out["query"]) == 1 and len(out["relative_posemb"]) == (1 if relative else 0)
  for i in range(1):
    table = out["relative_posemb"][i] if relative else None
    weights = attention_maps.weights_from(out["query"][i], out["key"][i], table)
    assert weights.shape == (2, 2, 7 if overrides["pool"] == "token" else 6, weights.shape[-1])
    proj = params["Transformer"][f"encoderblock_{i}"][attention_maps.ATTENTION]["out"]

    def output(w, i=i, proj=proj):
      heads = jnp.einsum("bhqk,bkhd->bqhd", w, out["value"][i])
      return jnp.einsum("bqhd,hdw->bqw", heads, proj["kernel"]) + proj["bias"]

    want = out[attention_maps.ATTENTION][i]
    np.testing.assert_allclose(output(weights), want, atol=1e-5, rtol=1e-5)
    if relative:  # the bias matters: without it the output is not reproduced
      plain = attention_maps.weights_from(out["query"][i], out["key"][i])
      assert np.max(np.abs(output(plain) - want)) > 1e-3


def test_inspector_weights_for_uint8_images_every_pool_and_a_rectangular_grid():
  model = tiny(pool="map", posemb="learn2d")
  shape = (3, 12, 8, 1)  # a 3x2 grid
  params = noisy_params(model, shape)
  pixels = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
  logits, weights = attention_maps.make_inspector(model, 5)(params, pixels)
  assert logits.shape == (3, 5) and weights.shape == (2, 3, 2, 6, 6) and weights.dtype == np.float32
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
  where = attention_maps.layout(model, 12, 8)
  assert where == Layout((3, 2), 0, 4)
  assert attention_maps.head_maps(np.asarray(weights), where).shape == (3, 2, 3, 2)
  assert attention_maps.rollout_map(np.asarray(weights), where).shape == (3, 3, 2)


def test_rollout_of_uniform_attention_is_known_and_its_maps_are_uniform():
  layers, heads, tokens = 3, 2, 5
  weights = np.full((layers, heads, tokens, tokens), 1 / tokens, np.float32)
  uniform = np.full((tokens, tokens), 1 / tokens)
  # (0.5 U + 0.5 I)^L = 0.5^L I + (1 - 0.5^L) U, U being idempotent.
  want = 0.5**layers * np.eye(tokens) + (1 - 0.5**layers) * uniform
  np.testing.assert_allclose(attention_maps.rollout(weights), want, atol=1e-6)
  for where in (Layout((2, 2), 1, 4), Layout((1, 5), 0, 4)):  # with and without class token
    patches = tokens - where.num_prefix
    np.testing.assert_allclose(attention_maps.rollout_map(weights, where), 1 / patches,
                               atol=1e-6)


def test_identity_attention_gives_a_uniform_map_without_a_class_token():
  weights = np.tile(np.eye(4, dtype=np.float32), (2, 3, 1, 1))  # every token attends to itself
  where = Layout((2, 2), 0, 8)
  np.testing.assert_allclose(attention_maps.rollout(weights), np.eye(4), atol=1e-7)
  np.testing.assert_allclose(attention_maps.rollout_map(weights, where), 0.25, atol=1e-7)
  np.testing.assert_allclose(attention_maps.head_maps(weights, where), 0.25, atol=1e-7)


def test_one_layer_rollout_is_the_class_tokens_mixed_row_renormalised():
  logits = np.random.default_rng(3).normal(size=(1, 3, 7, 7))
  weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  where = Layout((2, 3), 1, 4)
  mixed = 0.5 * weights[0].mean(0) + 0.5 * np.eye(7)
  row = mixed[0, 1:] / mixed[0, 1:].sum()
  np.testing.assert_allclose(attention_maps.rollout_map(weights, where), row.reshape(2, 3),
                             atol=1e-7)
  heads = weights[0, :, 0, 1:] / weights[0, :, 0, 1:].sum(-1, keepdims=True)
  np.testing.assert_allclose(attention_maps.head_maps(weights, where), heads.reshape(3, 2, 3),
                             atol=1e-7)


def test_rollout_multiplies_the_later_layer_on_the_left():
  # Layer 1: every token attends to patch a; layer 2: to patch b. The rollout is
  # (0.5 1 e_b' + 0.5 I)(0.5 1 e_a' + 0.5 I) = 0.5 1 e_a' + 0.25 1 e_b' + 0.25 I, so the class
  # token's patch weights are a: 0.5, b: 0.25, renormalised 2/3 and 1/3.
  tokens, a, b = 5, 1, 3
  weights = np.zeros((2, 1, tokens, tokens))
  weights[0, :, :, a] = 1
  weights[1, :, :, b] = 1
  got = attention_maps.rollout_map(weights, Layout((2, 2), 1, 4)).reshape(-1)
  np.testing.assert_allclose(got, [2 / 3, 0, 1 / 3, 0], atol=1e-7)  # patches a-1, b-1


def test_mean_distance_of_hand_made_weights():
  # Every patch on itself: 0.
  self_only = np.tile(np.eye(5), (1, 2, 1, 1))  # (L=1, H=2), a class token and a 2x2 grid
  where = Layout((2, 2), 1, 16)
  np.testing.assert_allclose(attention_maps.mean_distance(self_only, where), 0.0, atol=1e-6)
  # Uniform over all tokens, class token included: it is left out and the patch weights
  # renormalised, so every query sees distances 0, 16, 16, 16*sqrt(2) equally.
  uniform = np.full((1, 2, 5, 5), 0.2)
  want = (0 + 16 + 16 + 16 * np.sqrt(2)) / 4
  np.testing.assert_allclose(attention_maps.mean_distance(uniform, where), want, rtol=1e-6)
  assert attention_maps.uniform_distance(where) == pytest.approx(want)
  # A 1x3 row without class token: each patch attends to its right neighbour (the last to the
  # first, 2 patches away): (7 + 7 + 14) / 3 pixels.
  shift = np.roll(np.eye(3), 1, axis=1)[None, None]
  got = attention_maps.mean_distance(shift, Layout((1, 3), 0, 7))
  np.testing.assert_allclose(got, [[(7 + 7 + 14) / 3]], rtol=1e-6)


def test_patch_distances_and_upsampling():
  d = attention_maps.patch_distances(Layout((2, 3), 0, 10))
  assert d.shape == (6, 6) and d[0, 5] == pytest.approx(10 * np.sqrt(1 + 4)) and d[1, 4] == 10
  up = attention_maps.upsample(np.array([[0.0, 1.0], [2.0, 3.0]]), 8, 8)
  assert up.shape == (8, 8) and up[0, 0] == 0.0 and up[-1, -1] == 3.0
  np.testing.assert_allclose(up.mean(), 1.5, atol=1e-6)


def test_a_mixer_has_no_attention_to_show_and_a_hybrid_uses_its_token_stride():
  with pytest.raises(ValueError, match="Mixer-B/16 is a Mixer model: it has no attention to show"):
    attention_maps.layout(registry.section("Mixer-B/16"), 224, 224)
  where = attention_maps.layout(registry.section("R50+ViT-B/16"), 224, 224)
  assert (where.grid, where.num_prefix, where.patch_size) == ((14, 14), 1, 16)
