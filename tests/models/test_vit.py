import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.io import layers
from vit_jax.models import droppath, registry
from vit_jax.models.inputs import check_grid
from vit_jax.models.vit import VisionTransformer

TINY = dict(num_classes=10, patch_size=8, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64)


def init(model, shape):
  return model.init(jax.random.key(0), jnp.zeros(shape))["params"]


@pytest.mark.slow
def test_output_shape_and_dtype():
  model = VisionTransformer(**TINY)
  params = init(model, (1, 32, 32, 3))
  logits = model.apply({"params": params}, jnp.ones((5, 32, 32, 3)))
  assert logits.shape == (5, 10)
  assert logits.dtype == jnp.float32


@pytest.mark.slow
def test_non_square_input_uses_the_whole_grid():
  model = VisionTransformer(**TINY)
  params = init(model, (1, 32, 48, 3))  # 4 x 6 patches
  assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 4 * 6 + 1, 32)
  logits = model.apply({"params": params}, jnp.ones((2, 32, 48, 3)))
  assert logits.shape == (2, 10)


def test_gap_pooling_has_no_class_token():
  model = VisionTransformer(**TINY, pool="gap")
  params = init(model, (1, 32, 48, 3))
  assert "cls" not in params
  assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 24, 32)


def test_image_not_divisible_by_patch_is_a_clear_error():
  model = VisionTransformer(**TINY)
  with pytest.raises(ValueError, match=r"30x32 is not divisible by the patch size 8"):
    init(model, (1, 30, 32, 3))
  assert check_grid(32, 48, 8) == (4, 6)


def test_parameter_names_follow_the_original_format():
  model = VisionTransformer(**TINY, representation_size=16)
  params = init(model, (1, 32, 32, 3))
  flat = {"/".join(k.key for k in path): v.shape
          for path, v in jax.tree_util.tree_leaves_with_path(params)}
  block = "Transformer/encoderblock_1"
  assert flat["embedding/kernel"] == (8, 8, 3, 32)
  assert flat["cls"] == (1, 1, 32)
  assert flat["Transformer/posembed_input/pos_embedding"] == (1, 17, 32)
  assert flat[f"{block}/MultiHeadDotProductAttention_1/query/kernel"] == (32, 4, 8)
  assert flat[f"{block}/MultiHeadDotProductAttention_1/query/bias"] == (4, 8)
  assert flat[f"{block}/MultiHeadDotProductAttention_1/out/kernel"] == (4, 8, 32)
  assert flat[f"{block}/MultiHeadDotProductAttention_1/out/bias"] == (32,)
  assert flat[f"{block}/LayerNorm_0/scale"] == (32,)
  assert flat[f"{block}/LayerNorm_2/bias"] == (32,)
  assert flat[f"{block}/MlpBlock_3/Dense_0/kernel"] == (32, 64)
  assert flat[f"{block}/MlpBlock_3/Dense_1/kernel"] == (64, 32)
  assert flat["Transformer/encoder_norm/scale"] == (32,)
  assert flat["pre_logits/kernel"] == (32, 16)
  assert flat["head/kernel"] == (16, 10)


def test_zero_init_head_outputs_its_bias():
  model = VisionTransformer(**TINY, head_bias_init=-10.0)
  params = init(model, (1, 32, 32, 3))
  x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
  np.testing.assert_array_equal(model.apply({"params": params}, x), np.full((3, 10), -10.0))


def test_tokens_are_in_raster_order():
  # Without position embeddings the encoder is permutation-equivariant over patches, so moving a
  # patch must move exactly the matching token of the final sequence (all of them computed).
  model = VisionTransformer(**TINY, posemb="none", all_tokens=True)
  params = init(model, (1, 16, 24, 3))
  x = jax.random.normal(jax.random.key(2), (1, 16, 24, 3))

  def tokens(img):
    _, state = model.apply({"params": params}, img, capture_intermediates=True)
    return state["intermediates"]["Transformer"]["encoder_norm"]["__call__"][0][0, 1:]

  swapped = x.at[:, 0:8, 0:8].set(x[:, 8:16, 16:24]).at[:, 8:16, 16:24].set(x[:, 0:8, 0:8])
  a, b = tokens(x), tokens(swapped)
  # Patch (0, 0) is token 0 and patch (1, 2) is token 1 * 3 + 2 = 5 in a 2 x 3 grid.
  np.testing.assert_allclose(a[0], b[5], atol=1e-5)
  np.testing.assert_allclose(a[5], b[0], atol=1e-5)
  np.testing.assert_allclose(a[1], b[1], atol=1e-5)


@pytest.mark.slow
def test_dropout_only_in_training():
  model = VisionTransformer(**TINY, dropout=0.5, pool="gap")
  params = init(model, (1, 32, 32, 3))
  params["head"]["kernel"] = jax.random.normal(jax.random.key(3), params["head"]["kernel"].shape)
  x = jax.random.normal(jax.random.key(4), (2, 32, 32, 3))
  eval_a = model.apply({"params": params}, x)
  eval_b = model.apply({"params": params}, x, train=False)
  train = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(5)})
  np.testing.assert_array_equal(eval_a, eval_b)
  assert not np.allclose(eval_a, train)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_parameters():
  f32 = VisionTransformer(**TINY, pool="gap")
  bf16 = VisionTransformer(**TINY, pool="gap", dtype=jnp.bfloat16)
  params = init(bf16, (1, 32, 32, 3))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  params["head"]["kernel"] = jax.random.normal(jax.random.key(3), params["head"]["kernel"].shape)
  x = jax.random.normal(jax.random.key(6), (2, 32, 32, 3))
  low = bf16.apply({"params": params}, x)
  assert low.dtype == jnp.float32
  np.testing.assert_allclose(low, f32.apply({"params": params}, x), atol=0.15, rtol=0.05)


def _loss_and_grads(model, params, images):
  def loss(p):
    return jnp.sum(model.apply({"params": p}, images, train=True,
                               rngs={"dropout": jax.random.key(3)}) ** 2)

  return jax.value_and_grad(loss)(params)


def _assert_same_gradients(expected, actual):
  # float32 sums in another order: errors are measured against the gradient's overall size.
  scale = max(float(np.abs(a).max()) for a in jax.tree.leaves(expected))
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(actual), strict=True):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * scale)


def _with_random_head(params):
  # The head starts at zero, which would leave every other gradient zero.
  params["head"]["kernel"] = jax.random.normal(jax.random.key(2), params["head"]["kernel"].shape)
  return params


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_changes_memory_not_gradients(policy):
  images = jax.random.normal(jax.random.key(1), (2, 16, 24, 3))
  plain = VisionTransformer(**TINY)
  params = _with_random_head(plain.init(jax.random.key(0), images)["params"])
  value, grads = _loss_and_grads(plain, params, images)
  value_r, grads_r = _loss_and_grads(VisionTransformer(**TINY, remat=policy), params, images)
  np.testing.assert_allclose(value_r, value, rtol=1e-6)
  _assert_same_gradients(grads, grads_r)


@pytest.mark.slow
def test_scanned_layers_give_the_same_outputs_and_gradients():
  images = jax.random.normal(jax.random.key(1), (2, 16, 24, 3))
  kw = dict(TINY, num_layers=3, posemb="relative")
  plain = VisionTransformer(**kw)
  params = _with_random_head(plain.init(jax.random.key(0), images)["params"])
  value, grads = _loss_and_grads(plain, params, images)
  scanned = VisionTransformer(**kw, scan_layers=True, remat="full")
  value_s, grads_s = _loss_and_grads(scanned, layers.to_scanned(params), images)
  np.testing.assert_allclose(value_s, value, rtol=1e-6)
  _assert_same_gradients(grads, layers.to_per_layer(grads_s))


@pytest.mark.parametrize("kw,message", [
    (dict(remat="some"), "remat 'some' is not one of none, full, dots, dots_no_batch"),
    (dict(scan_layers=True, posemb_mode="every_layer"), "scan_layers needs posemb_mode 'stem'"),
])
def test_bad_memory_options_are_clear_errors(kw, message):
  with pytest.raises(ValueError, match=message):
    VisionTransformer(**TINY, **kw).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))


@pytest.mark.slow
def test_uint8_pixels_are_mapped_to_minus_one_one_by_the_model():
  model = VisionTransformer(num_classes=3, patch_size=4, hidden_size=16, num_layers=1,
                           num_heads=2, mlp_dim=16)
  pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  scaled = pixels.astype(np.float32) / 127.5 - 1.0  # the independent definition
  np.testing.assert_allclose(model.apply(params, pixels), model.apply(params, scaled),
                             rtol=1e-6, atol=1e-6)


def test_drop_path_rates_rise_linearly_from_0_to_the_last_block():
  np.testing.assert_allclose(droppath.rates(0.1, 5), np.linspace(0, 0.1, 5), atol=1e-12)
  assert droppath.rates(0.3, 1) == (0.0,)
  for name in ("ViT-B/16", "R50+ViT-B/16", "Mixer-B/16"):  # the hybrid builds the ViT
    assert registry.build(registry.section(name, drop_path=0.2), 10).drop_path == 0.2
    assert registry.build(registry.section(name), 10).drop_path == 0.0


@pytest.mark.slow
def test_drop_path_acts_in_training_only_reproducibly_and_adds_no_parameters():
  x = jax.random.normal(jax.random.key(4), (8, 16, 16, 3))
  plain = VisionTransformer(**TINY, pool="gap")
  dropping = VisionTransformer(**TINY, pool="gap", drop_path=0.5)
  params = _with_random_head(init(plain, (1, 16, 16, 3)))
  assert jax.tree.map(np.shape, init(dropping, (1, 16, 16, 3))) == jax.tree.map(np.shape, params)

  def train(model, seed):
    return model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(seed)})

  evaluated = plain.apply({"params": params}, x)
  np.testing.assert_array_equal(dropping.apply({"params": params}, x), evaluated)
  np.testing.assert_array_equal(train(dropping, 5), train(dropping, 5))
  assert not np.allclose(train(dropping, 5), train(dropping, 6))
  assert not np.allclose(train(dropping, 5), evaluated)
  # Rate 0 is the identity and draws nothing: training needs no dropout key. Equal but for
  # rounding: in training on a CPU the patch embedding multiplies the flattened patches.
  np.testing.assert_allclose(plain.apply({"params": params}, x, train=True), evaluated,
                             rtol=0, atol=1e-5 * float(np.abs(evaluated).max()))


@pytest.mark.slow
def test_scanned_and_unrolled_layers_drop_the_branches_of_the_right_layers():
  # A scanned layer draws its key by splitting the scan's, an unrolled one from its own name,
  # so the two layouts drop different examples for one key. What both must do: with
  # drop_path ~ 1 over 2 layers (rates 0 and 0.9999), block 0 is always kept and both branches
  # of block 1 are dropped for every example, so the model computes a 1-layer model of block 0.
  x = jax.random.normal(jax.random.key(1), (8, 16, 16, 3))
  params = _with_random_head(init(VisionTransformer(**TINY), (1, 16, 16, 3)))
  first = dict(params, Transformer={k: v for k, v in params["Transformer"].items()
                                    if k != "encoderblock_1"})
  truth = VisionTransformer(**dict(TINY, num_layers=1)).apply({"params": first}, x)
  key = {"dropout": jax.random.key(5)}
  for scan, remat in ((False, "none"), (True, "none"), (True, "full")):
    model = VisionTransformer(**TINY, drop_path=0.9999, scan_layers=scan, remat=remat)
    p = layers.to_scanned(params) if scan else params
    np.testing.assert_allclose(model.apply({"params": p}, x, train=True, rngs=key), truth,
                               rtol=1e-5, atol=1e-5)


def _encoder_output(model, params, x, **kwargs):
  _, state = model.apply({"params": params}, x, capture_intermediates=True, **kwargs)
  return state["intermediates"]["Transformer"]["encoder_norm"]["__call__"][0]


@pytest.mark.parametrize("overrides,train,tokens", [
    ({}, False, 1), ({}, True, 1), ({"dropout": 0.1}, False, 1),
    ({"all_tokens": True}, False, 5), ({"pool": "gap"}, False, 4),
    ({"scan_layers": True}, False, 5), ({"dropout": 0.1}, True, 5),
    ({"attention_dropout": 0.1, "attention": "plain"}, True, 5)])
def test_the_last_block_computes_the_class_token_alone_where_only_it_is_used(
    overrides, train, tokens):
  # 2 x 2 patches and a class token; dropout in training keeps every token so that its masks
  # are the full computation's.
  model = VisionTransformer(**{**TINY, **overrides})
  x = jnp.ones((2, 16, 16, 3))
  params = init(model, x.shape)
  out = _encoder_output(model, params, x, train=train, rngs={"dropout": jax.random.key(1)})
  assert out.shape == (2, tokens, 32)


def _slow(overrides):
  return pytest.param(overrides, marks=pytest.mark.slow)


@pytest.mark.parametrize("overrides", [
    {"attention": "heads_first"}, _slow({"posemb": "relative"}), _slow({"drop_path": 0.5}),
    _slow({"attention": "plain"}), _slow({"attention": "xla"}),
    _slow({"posemb_mode": "every_layer"}), _slow({"remat": "full"}),
    _slow({"representation_size": 16})])
def test_the_class_token_alone_gives_the_full_computations_logits_and_gradients(overrides):
  model = VisionTransformer(**{**TINY, **overrides})
  full = model.clone(all_tokens=True)
  x = jax.random.normal(jax.random.key(2), (3, 16, 24, 3))
  # Random parameters everywhere (the head starts at zero, which would hide every gradient),
  # and jitted functions: op by op, these small models spend seconds compiling each operation.
  rng = np.random.default_rng(7)
  params = jax.tree.map(lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape), a.dtype),
                        jax.eval_shape(model.init, jax.random.key(0), x)["params"])
  rngs = {"dropout": jax.random.key(3)}

  def loss(module, p):
    return jnp.sum(jnp.sin(module.apply({"params": p}, x, train=True, rngs=rngs)))

  np.testing.assert_allclose(jax.jit(model.apply)({"params": params}, x),
                             jax.jit(full.apply)({"params": params}, x), rtol=1e-5, atol=1e-5)
  grad = jax.jit(jax.grad(loss, 1), static_argnums=0)
  ours, theirs = grad(model, params), grad(full, params)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(theirs))
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5 * scale)
