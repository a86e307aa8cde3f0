"""Checks shared by the model families' tests."""

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

  # One jitted program per model (outputs and gradients together): op by op, these small
  # models spend seconds compiling each operation.
  def run(module):
    def loss(p):
      out, state = module.apply({"params": p}, images, train=train, rngs=rngs,
                                capture_intermediates=True, mutable=["intermediates"])
      return jnp.sum(jnp.sin(out)), (out, state["intermediates"][norm]["__call__"][0])
    (_, (out, seen)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return out, seen, grads

  (ours, seen, ours_grads), (theirs, all_seen, their_grads) = run(model), run(full)
  assert (seen.shape[1], all_seen.shape[1]) == (1, tokens)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(ours_grads), jax.tree.leaves(their_grads), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.fixture
def class_token_alone():
  """`_class_token_alone`, for a family's tests."""
  return _class_token_alone
