"""MLP-Mixer: names, the mixing computations against NumPy, scan and remat equivalence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.io import layers
from vit_jax.models import mixer, registry

TINY = dict(num_classes=10, patch_size=4, hidden_size=16, num_layers=2, tokens_mlp_dim=8,
            channels_mlp_dim=32)


def np_layernorm(x, p, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(x.var(-1, keepdims=True) + eps) * p["scale"] + p["bias"]


def np_gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def np_mlp(x, p):
  h = np_gelu_tanh(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
  return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


def np_block(x, p):
  y = np_layernorm(x, p["LayerNorm_0"])
  x = x + np_mlp(y.transpose(0, 2, 1), p["token_mixing"]).transpose(0, 2, 1)
  return x + np_mlp(np_layernorm(x, p["LayerNorm_1"]), p["channel_mixing"])


def random_params(params, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: rng.normal(0, 0.5, a.shape).astype(np.float64), params)


def test_parameter_names_follow_the_original_format():
  params = mixer.MlpMixer(**TINY).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
  flat = {"/".join(k.key for k in path): v.shape
          for path, v in jax.tree_util.tree_leaves_with_path(params)}
  assert flat["stem/kernel"] == (4, 4, 3, 16) and flat["stem/bias"] == (16,)
  assert flat["MixerBlock_1/LayerNorm_0/scale"] == (16,)
  assert flat["MixerBlock_1/token_mixing/Dense_0/kernel"] == (16, 8)  # 16 patches -> 8
  assert flat["MixerBlock_1/token_mixing/Dense_1/kernel"] == (8, 16)
  assert flat["MixerBlock_1/LayerNorm_1/bias"] == (16,)
  assert flat["MixerBlock_1/channel_mixing/Dense_0/kernel"] == (16, 32)
  assert flat["pre_head_layer_norm/scale"] == (16,)
  assert flat["head/kernel"] == (16, 10)
  assert not np.any(np.asarray(params["head"]["kernel"]))  # zero-initialised head
  assert len(flat) == 2 + 2 * 12 + 2 + 2  # stem, 2 blocks, pre-head norm, head


def test_token_mixing_block_matches_the_definition():
  block = mixer.MixerBlock(tokens_mlp_dim=8, channels_mlp_dim=32)
  x = np.random.default_rng(1).normal(size=(2, 16, 16))
  params = random_params(block.init(jax.random.key(0), jnp.zeros((1, 16, 16)), False)["params"])
  got = block.apply({"params": params}, jnp.asarray(x, jnp.float32), False)  # float32 compute
  np.testing.assert_allclose(got, np_block(x, params), rtol=1e-5, atol=1e-5)


def test_whole_model_matches_the_definition():
  model = mixer.MlpMixer(**TINY)
  images = np.random.default_rng(2).uniform(-1, 1, (2, 16, 16, 3))
  params = random_params(model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"], 3)
  got = model.apply({"params": params}, jnp.asarray(images, jnp.float32))
  # Patches in raster order, each flattened as (row, col, channel), times the stem kernel.
  patches = images.reshape(2, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 16, 48)
  x = patches @ params["stem"]["kernel"].reshape(48, 16) + params["stem"]["bias"]
  for i in range(2):
    x = np_block(x, params[f"MixerBlock_{i}"])
  x = np_layernorm(x, params["pre_head_layer_norm"]).mean(1)
  np.testing.assert_allclose(got, x @ params["head"]["kernel"] + params["head"]["bias"],
                             rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("remat", ["none", "full"])
def test_scanned_blocks_compute_the_same_as_per_layer_blocks(remat):
  images = jax.random.normal(jax.random.key(4), (2, 16, 16, 3))
  plain = mixer.MlpMixer(**TINY)
  # Random weights: a constant shift would give every class the same logit whatever the input.
  params = random_params(plain.init(jax.random.key(0), images)["params"], 7)
  scanned = mixer.MlpMixer(**TINY, scan_layers=True, remat=remat)
  stacked = layers.to_scanned(params)
  assert stacked["MixerBlock"]["token_mixing"]["Dense_0"]["kernel"].shape == (2, 16, 8)
  np.testing.assert_allclose(scanned.apply({"params": stacked}, images),
                             plain.apply({"params": params}, images), rtol=1e-5, atol=1e-5)
  assert jax.tree.map(np.shape, layers.to_per_layer(stacked)) == jax.tree.map(np.shape, params)


@pytest.mark.slow
def test_features_are_sown_for_few_shot():
  model = mixer.MlpMixer(**TINY, representation_size=12)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  _, state = model.apply(variables, jnp.ones((3, 16, 16, 3)), mutable=["intermediates"])
  assert state["intermediates"]["features"][0].shape == (3, 12)


def test_presets_and_the_forward_flops_against_xlas_count():
  assert registry.section("Mixer-B/16")["tokens_mlp_dim"] == 384
  model = registry.section("Mixer-S/32")
  module = registry.build(model, 1000)
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  params = jax.eval_shape(module.init, jax.random.key(0), images)
  xla = jax.jit(module.apply).lower(params, images).cost_analysis()["flops"]
  ours = registry.forward_flops(model, 1000, 224)
  assert 0.97 * xla <= ours <= xla  # XLA also counts norms, GELU and additions


def test_a_source_of_another_patch_size_or_token_count_is_refused_naming_the_fix():
  model = registry.section("Mixer-B/16")
  params = {"stem": {"kernel": np.zeros((16, 16, 3, 768))}}
  assert mixer.check_source(params, (14, 14), model, 224) is None
  assert mixer.check_source(params, (14, 14), model, 384) == (
      "Mixer-B/16 cannot change resolution: its token-mixing weights fix 14x14 patches, "
      "image_size 224, not 384; set --config.image_size=224")
  b32 = {"stem": {"kernel": np.zeros((32, 32, 3, 768))}}
  assert mixer.check_source(b32, (7, 7), model, 224) == (
      "the source is a Mixer with 32x32 patches but Mixer-B/16 has 16x16; set "
      "--config.model.name to the source's preset")


def test_zero_drop_path_in_training_is_the_definition():
  model = mixer.MlpMixer(**TINY)  # drop_path 0: no key needed in training
  images = np.random.default_rng(5).uniform(-1, 1, (2, 16, 16, 3))
  params = random_params(model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"], 6)
  got = model.apply({"params": params}, jnp.asarray(images, jnp.float32), train=True)
  want = model.apply({"params": params}, jnp.asarray(images, jnp.float32))
  # Equal but for rounding: in training on a CPU the stem multiplies the flattened patches.
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))
  x = mixer.MixerBlock(tokens_mlp_dim=8, channels_mlp_dim=32)
  y = np.random.default_rng(1).normal(size=(2, 16, 16))
  block = random_params(x.init(jax.random.key(0), jnp.zeros((1, 16, 16)), False)["params"])
  np.testing.assert_allclose(x.apply({"params": block}, jnp.asarray(y, jnp.float32), True),
                             np_block(y, block), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_drop_path_acts_in_training_only_and_reproducibly():
  images = jax.random.normal(jax.random.key(4), (8, 16, 16, 3))
  plain = mixer.MlpMixer(**TINY)
  dropping = mixer.MlpMixer(**TINY, drop_path=0.5)
  params = random_params(plain.init(jax.random.key(0), images)["params"], 8)

  def train(seed):
    return dropping.apply({"params": params}, images, train=True,
                          rngs={"dropout": jax.random.key(seed)})

  evaluated = plain.apply({"params": params}, images)
  np.testing.assert_array_equal(dropping.apply({"params": params}, images), evaluated)
  np.testing.assert_array_equal(train(1), train(1))
  assert not np.allclose(train(1), train(2))
  assert not np.allclose(train(1), evaluated)


@pytest.mark.slow
@pytest.mark.parametrize("scan,remat", [(False, "none"), (True, "none"), (True, "full")])
def test_scanned_and_unrolled_blocks_drop_the_branches_of_the_right_layers(scan, remat):
  # As for the ViT: scanned and unrolled layers draw different keys, but with rates 0 and
  # 0.9999 over 2 layers both compute a 1-layer Mixer of block 0 (block 1 always dropped).
  images = jax.random.normal(jax.random.key(4), (8, 16, 16, 3))
  params = random_params(mixer.MlpMixer(**TINY).init(jax.random.key(0), images)["params"], 9)
  first = {k: v for k, v in params.items() if k != "MixerBlock_1"}
  truth = mixer.MlpMixer(**dict(TINY, num_layers=1)).apply({"params": first}, images)
  model = mixer.MlpMixer(**TINY, drop_path=0.9999, scan_layers=scan, remat=remat)
  got = model.apply({"params": layers.to_scanned(params) if scan else params}, images,
                    train=True, rngs={"dropout": jax.random.key(5)})
  np.testing.assert_allclose(got, truth, rtol=1e-5, atol=1e-5)
