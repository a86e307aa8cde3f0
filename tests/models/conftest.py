"""Checks shared by the model families' tests."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest


def _class_token_alone(model, params, images, *, train, tokens, norm="norm"):
  """Asserts that `model` (whose last block computes the class token alone) gives the logits
  and gradients of `model.clone(all_tokens=True)`, and that its final norm saw 1 token where
  the full computation saw `tokens`."""
  full = model.clone(all_tokens=True)
  rngs = {"dropout": jax.random.key(5)}

  # Jitted: op by op, these small models spend seconds compiling each operation.
  @functools.partial(jax.jit, static_argnums=0)
  def run(module, p):
    out, state = module.apply({"params": p}, images, train=train, rngs=rngs,
                              capture_intermediates=True, mutable=["intermediates"])
    return out, state["intermediates"][norm]["__call__"][0]

  (ours, seen), (theirs, all_seen) = run(model, params), run(full, params)
  assert (seen.shape[1], all_seen.shape[1]) == (1, tokens)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)

  def grad(module):
    return jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(run(module, p)[0]))))(params)

  for a, b in zip(jax.tree.leaves(grad(model)), jax.tree.leaves(grad(full)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.fixture
def class_token_alone():
  """`_class_token_alone`, for a family's tests."""
  return _class_token_alone
