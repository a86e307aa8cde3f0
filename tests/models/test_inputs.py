"""The patch embedding against flax's strided convolution, whose parameters it keeps."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import inputs


def _conv(features, p):
  return nn.Conv(features, (p, p), strides=(p, p), padding="VALID")


@pytest.mark.parametrize("p,size", [(1, 5), (4, 8)])
def test_parameters_are_the_convolutions_names_shapes_and_initial_values(p, size):
  x = jnp.ones((2, size, size, 3))
  ours = inputs.PatchEmbedding(6, p).init(jax.random.key(3), x)["params"]
  conv = _conv(6, p).init(jax.random.key(3), x)["params"]
  assert jax.tree.structure(ours) == jax.tree.structure(conv)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(conv), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("p,size", [(1, 5), (4, 8), (2, 6)])
def test_output_and_gradients_are_the_convolutions(p, size):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, size, size, 8)), jnp.float32)
  params = {"kernel": jnp.asarray(rng.normal(size=(p, p, 8, 12)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=12), jnp.float32)}

  def loss(module):
    return lambda params, x: jnp.sum(jnp.sin(module.apply({"params": params}, x)))

  want = jax.value_and_grad(loss(_conv(12, p)), argnums=(0, 1))(params, x)
  got = jax.value_and_grad(loss(inputs.PatchEmbedding(12, p)), argnums=(0, 1))(params, x)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(w))))
  out = inputs.PatchEmbedding(12, p).apply({"params": params}, x)
  assert out.shape == (2, size // p, size // p, 12)
  if p > 1:  # the same convolution: the same values, bit for bit
    np.testing.assert_array_equal(out, _conv(12, p).apply({"params": params}, x))


def test_bfloat16_compute_keeps_float32_parameters():
  x = jnp.ones((1, 4, 4, 3))
  module = inputs.PatchEmbedding(5, 1, dtype=jnp.bfloat16)
  params = module.init(jax.random.key(0), x)["params"]
  assert params["kernel"].dtype == jnp.float32
  assert module.apply({"params": params}, x).dtype == jnp.bfloat16
