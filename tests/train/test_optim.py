import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vit_jax.train.optim import make_optimizer, make_schedule


def test_warmup_then_linear_decay():
  s = make_schedule(1e-3, warmup_steps=10, total_steps=110, decay="linear")
  assert float(s(0)) == 0.0
  assert float(s(5)) == pytest.approx(5e-4)
  assert float(s(10)) == pytest.approx(1e-3)
  assert float(s(60)) == pytest.approx(5e-4)
  assert float(s(110)) == pytest.approx(0.0, abs=1e-12)


def test_warmup_then_cosine_decay():
  s = make_schedule(2.0, warmup_steps=4, total_steps=104, decay="cosine")
  assert float(s(2)) == pytest.approx(1.0)
  assert float(s(54)) == pytest.approx(1.0)  # halfway through the decay: cos(pi/2)
  assert float(s(104)) == pytest.approx(0.0, abs=1e-6)


def config(**kw):
  c = ml_collections.ConfigDict(dict(optimizer="adam", grad_clip_norm=0.0, adam_b1=0.9,
                                     adam_b2=0.999, weight_decay=0.0, momentum=0.9))
  c.update(kw)
  return c


def test_clipping_bounds_the_global_norm():
  params = {"w": jnp.zeros((3, 3))}
  tx = make_optimizer(config(optimizer="sgd", momentum=0.0, grad_clip_norm=1.0), lambda _: 1.0)
  grads = {"w": jnp.full((3, 3), 10.0)}
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(jnp.linalg.norm(updates["w"])) == pytest.approx(1.0, rel=1e-5)


def test_weight_decay_skips_biases_and_is_decoupled():
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  tx = make_optimizer(config(weight_decay=0.5), lambda _: 0.1)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
  np.testing.assert_array_equal(updates["bias"], np.zeros(2))


def test_unknown_decay():
  with pytest.raises(ValueError, match="cosine"):
    make_schedule(1.0, 0, 10, "step")
