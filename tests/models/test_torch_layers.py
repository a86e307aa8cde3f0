"""torch_layers.dense: nn.Dense's function, parameters and gradients, on the rows of its input."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import torch_layers


def _plain_dense(features, name):
  return nn.Dense(features, kernel_init=torch_layers.TRUNC, name=name)


class Direct(nn.Module):
  """The reference Mlp with nn.Dense layers on the (batch, tokens, features) array as it is."""

  mlp_dim: int

  @nn.compact
  def __call__(self, x, train):
    h = nn.gelu(_plain_dense(self.mlp_dim, "fc1")(x), approximate=False)
    return _plain_dense(x.shape[-1], "fc2")(h)


def _inputs(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


@pytest.mark.parametrize("shape", [(3, 5, 8), (2, 3, 4, 8), (8,)])
def test_dense_is_nn_dense_on_every_shape(shape):
  layer, plain = torch_layers.dense(6, "proj", jnp.float32, jnp.float32), _plain_dense(6, "proj")
  x = _inputs(shape)
  params = layer.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, plain.init(jax.random.key(0), x)) == \
      jax.tree.map(jnp.shape, params)
  y = layer.apply(params, x)
  assert y.shape == (*shape[:-1], 6)
  np.testing.assert_allclose(y, plain.apply(params, x), rtol=1e-6, atol=1e-6)


def test_mlp_outputs_and_gradients_match_the_direct_layers():
  x = _inputs((2, 197, 16))
  ct = _inputs((2, 197, 16), seed=1)
  mlp, direct = torch_layers.Mlp(32), Direct(32)
  params = mlp.init(jax.random.key(0), x, False)["params"]
  assert jax.tree.map(jnp.shape, params) == \
      jax.tree.map(jnp.shape, direct.init(jax.random.key(0), x, False)["params"])

  def loss(module):
    return lambda p, x: jnp.sum(module.apply({"params": p}, x, False) * ct)

  for grad_ours, grad_ref in zip(
      jax.tree.leaves(jax.grad(loss(mlp), argnums=(0, 1))(params, x)),
      jax.tree.leaves(jax.grad(loss(direct), argnums=(0, 1))(params, x)), strict=True):
    scale = float(jnp.max(jnp.abs(grad_ref)))
    np.testing.assert_allclose(grad_ours, grad_ref, rtol=0, atol=1e-5 * scale)
  np.testing.assert_allclose(mlp.apply({"params": params}, x, False),
                             direct.apply({"params": params}, x, False), rtol=1e-5, atol=1e-6)


def _layout_copies(module, x):
  """The transposes and copies in the compiled gradient of `module` (on this backend)."""
  params = module.init(jax.random.key(0), x, False)["params"]
  grad = jax.jit(jax.grad(lambda p: jnp.sum(module.apply({"params": p}, x, False) ** 2)))
  return re.findall(r"= \S+ (?:copy|transpose)\(", grad.lower(params).compile().as_text())


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's layouts")
def test_mlp_gradient_needs_no_layout_copies_on_cpu():
  """Over (batch, tokens, features) XLA:CPU transposes the activations and their gradients for
  the weight gradients; over rows it does not. The training steps of TNT-S and T2T-ViT-14 ran
  7-11% faster for it (docs/performance.md)."""
  x = _inputs((4, 197, 64))
  assert _layout_copies(Direct(256), x)  # the layout this guards against still costs copies
  assert _layout_copies(torch_layers.Mlp(256), x) == []
