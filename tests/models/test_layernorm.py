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
