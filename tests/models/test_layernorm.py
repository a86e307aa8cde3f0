"""LayerNorm: flax's parameters and forward pass, its own backward pass on the CPU."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import layernorm
from vit_jax.models.layernorm import LayerNorm


def normal(shape, seed, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * 2 + 0.5, dtype)


def perturbed(params):
  """Parameters away from the initial ones (scale 1, bias 0), so that every term counts."""
  leaves, tree = jax.tree.flatten(params)
  return tree.unflatten([p + 0.3 * normal(p.shape, 10 + i, p.dtype)
                         for i, p in enumerate(leaves)])


def gradients(module, params, x, weights):
  loss = lambda p, x: jnp.sum(module.apply(p, x).astype(jnp.float32) * weights)  # noqa: E731
  return jax.grad(loss, argnums=(0, 1))(params, x)


CASES = [((4, 197, 24), jnp.float32, None), ((7, 33), jnp.float32, None),
         ((2, 5, 16), jnp.float32, jnp.bfloat16), ((2, 5, 16), jnp.bfloat16, None)]


@pytest.mark.parametrize("shape, dtype, module_dtype", CASES)
def test_parameters_and_forward_pass_are_flaxs(shape, dtype, module_dtype):
  x = normal(shape, 0, dtype)
  ours = LayerNorm(epsilon=1e-6, dtype=module_dtype)
  flax = nn.LayerNorm(epsilon=1e-6, dtype=module_dtype)
  params = ours.init(jax.random.key(0), x)
  reference = flax.init(jax.random.key(0), x)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == jax.tree.map(
      lambda a: (a.shape, a.dtype), reference)
  np.testing.assert_array_equal(params["params"]["scale"], reference["params"]["scale"])
  np.testing.assert_array_equal(params["params"]["bias"], reference["params"]["bias"])
  params = perturbed(params)
  got, want = ours.apply(params, x), flax.apply(params, x)
  assert got.dtype == want.dtype
  np.testing.assert_array_equal(got, want)  # the same operations in the same order


@pytest.mark.parametrize("shape, dtype, module_dtype", CASES)
def test_gradients_are_those_jax_derives_for_flaxs(shape, dtype, module_dtype):
  x = normal(shape, 1, dtype)
  weights = normal(shape, 2)
  ours = LayerNorm(epsilon=1e-5, dtype=module_dtype)
  params = perturbed(ours.init(jax.random.key(0), x))
  got = gradients(ours, params, x, weights)
  want = gradients(nn.LayerNorm(epsilon=1e-5, dtype=module_dtype), params, x, weights)
  # float32 rounding; bfloat16 inputs' gradients are rounded to bfloat16 (8 bits)
  tolerance = 1e-6 if dtype == jnp.float32 else 1e-2
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    assert g.dtype == w.dtype and g.shape == w.shape
    g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
    assert np.abs(g - w).max() <= tolerance * np.abs(w).max()


def test_the_gradient_is_the_derivative_of_the_function():
  # Against central differences in float64 of the normalisation written out, not of flax's.
  x = np.random.default_rng(3).normal(size=(3, 8)) * 2 + 0.5
  scale = np.random.default_rng(4).normal(size=8)
  weights = np.random.default_rng(5).normal(size=(3, 8))

  def loss(x):
    y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-3) * scale
    return np.sum(y * weights)

  numeric = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    step = np.zeros_like(x)
    step[i] = 1e-6
    numeric[i] = (loss(x + step) - loss(x - step)) / 2e-6
  dx = jax.grad(lambda x: jnp.sum(layernorm.layer_norm(
      x, jnp.asarray(scale, jnp.float32), jnp.zeros(8), 1e-3) * weights))(
          jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(dx, numeric, atol=1e-4 * np.abs(numeric).max())


def uses_custom_vjp(module, x):
  params = module.init(jax.random.key(0), x)
  return "custom_vjp_call" in str(jax.make_jaxpr(module.apply)(params, x))


def test_the_cpu_backend_takes_the_custom_backward_pass_other_options_and_backends_flaxs(
    monkeypatch):
  x = normal((2, 3, 8), 0)
  assert uses_custom_vjp(LayerNorm(), x)
  assert not uses_custom_vjp(LayerNorm(reduction_axes=(-2, -1)), x)
  assert not uses_custom_vjp(LayerNorm(use_bias=False), x)
  assert not uses_custom_vjp(LayerNorm(use_fast_variance=False), x)
  monkeypatch.setattr(layernorm.jax, "default_backend", lambda: "gpu")
  assert not uses_custom_vjp(LayerNorm(), x)


def test_a_vits_layernorms_all_take_it():
  from vit_jax.models.vit import VisionTransformer

  model = VisionTransformer(num_classes=5, patch_size=4, hidden_size=16, num_layers=2,
                            num_heads=2, mlp_dim=32)
  images = normal((1, 8, 8, 3), 0)
  params = model.init(jax.random.key(0), images)
  # Two per block and the encoder's final norm.
  assert str(jax.make_jaxpr(model.apply)(params, images)).count("custom_vjp_call") == 5


FAMILIES = [
    ("ViT-custom", 16, dict(patch_size=4, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32)),
    ("Mixer-custom", 16, dict(patch_size=4, hidden_size=16, num_layers=2, tokens_mlp_dim=8,
                              channels_mlp_dim=32)),
    ("ResNet+ViT-custom", 16, dict(patch_size=1, hidden_size=16, num_layers=1, num_heads=2,
                                   mlp_dim=32, resnet_layers=(1,), resnet_width=32)),
    ("TNT-custom", 28, dict(patch_size=7, inner_dim=8, hidden_size=16, num_layers=2,
                            inner_heads=2, num_heads=4, inner_mlp_dim=16, mlp_dim=32,
                            inner_stride=2)),
    ("T2T-ViT-custom", 32, dict(hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32,
                                token_dim=8, t2t_layer="transformer")),
]


@pytest.mark.parametrize("name, size, sizes", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_every_familys_training_gradients_are_unchanged(name, size, sizes, monkeypatch):
  from vit_jax.models import registry

  model = registry.build(registry.section(name, **sizes), 10)
  images = normal((2, size, size, 3), 0)
  labels = jax.nn.one_hot(jnp.arange(2), 10)
  params = perturbed(jax.jit(model.init)(jax.random.key(0), images)["params"])

  def loss(params):
    logits = model.apply({"params": params}, images, train=True, rngs={"dropout":
                                                                       jax.random.key(1)})
    return -jnp.sum(jax.nn.log_softmax(logits) * labels), logits

  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  assert "custom_vjp_call" in str(jax.make_jaxpr(loss)(params))
  monkeypatch.setattr(LayerNorm, "_custom_backward", lambda self, x, mask: False)
  (_, want_logits), want = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  np.testing.assert_array_equal(logits, want_logits)
  largest = max(np.abs(w).max() for w in jax.tree.leaves(want))
  for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
    # Within 1e-5 of the leaf's largest value. Leaves whose gradients are small next to the
    # model's largest carry its rounding: a bias that a softmax or a LayerNorm cancels (the keys',
    # the Mixer's token-mixing output) is zero but for it, and the hybrid's first queries and keys
    # (under 1e-3 of the largest here) are as far from float64's with either form. Those within
    # 1e-5 of the model's largest gradient.
    scale = np.abs(w).max() if np.abs(w).max() > 1e-2 * largest else largest
    assert np.abs(g - w).max() <= 1e-5 * scale
