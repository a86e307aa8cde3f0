import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vit_jax.models.vit import VisionTransformer
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


@pytest.mark.slow
def test_weight_decay_is_decoupled_and_hits_only_kernels():
  model = VisionTransformer(num_classes=3, patch_size=4, hidden_size=8, num_layers=1,
                            num_heads=2, mlp_dim=8)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
  params = jax.tree.map(jnp.ones_like, params)
  tx = make_optimizer(config(weight_decay=0.5), lambda _: 0.1)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  decayed = set()
  for path, u in jax.tree_util.tree_leaves_with_path(updates):
    name = "/".join(k.key for k in path)
    if np.any(u != 0):
      np.testing.assert_allclose(u, -0.1 * 0.5 * np.ones(u.shape), rtol=1e-6)  # lr * wd * w
      decayed.add(name)
  attention = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1"
  assert f"{attention}/query/kernel" in decayed and "embedding/kernel" in decayed
  assert "head/kernel" in decayed
  # Rank >= 2 but not weights: the (heads, head_dim) biases, class token and position table.
  for kept in (f"{attention}/query/bias", "cls", "Transformer/posembed_input/pos_embedding",
               "Transformer/encoder_norm/scale", "head/bias"):
    assert kept not in decayed


def test_unknown_decay():
  with pytest.raises(ValueError, match="cosine"):
    make_schedule(1.0, 0, 10, "step")


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_bfloat16_moments_store_only_the_first_moment_in_bfloat16(optimizer):
  params = {"w": jnp.ones((4, 4)), "b": jnp.ones((4,))}
  tx = make_optimizer(config(optimizer=optimizer, moment_dtype="bfloat16"), lambda _: 0.1)
  state = tx.init(params)
  dtypes = {str(a.dtype) for a in jax.tree.leaves(state) if a.ndim}
  assert "bfloat16" in dtypes
  if optimizer == "adam":  # nu, the second moment, stays float32
    assert "float32" in dtypes
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(updates))


def test_unknown_moment_dtype():
  with pytest.raises(ValueError, match="unknown moment_dtype 'int8'"):
    make_optimizer(config(moment_dtype="int8"), lambda _: 0.1)
