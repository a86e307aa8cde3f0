import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.data.arrays import ArraySource
from vit_jax.data.types import Feed
from vit_jax.evaluate.classification import evaluate
from vit_jax.train import multihost, sharding
from vit_jax.train.step import make_eval_step


class ConstantModel(nn.Module):
  """Zero logits for 10 classes: argmax is class 0 and every loss is log(10)."""

  @nn.compact
  def __call__(self, images, train=False):
    return jnp.zeros((images.shape[0], 10)) + 0.0 * self.param("w", nn.initializers.zeros, ())


@pytest.mark.parametrize("devices", [1, 8])
def test_each_of_1001_examples_counts_once_with_batch_64(devices):
  n = 1001
  labels = (np.arange(n) % 10).astype(np.int32)
  images = np.zeros((n, 4, 4, 1), np.uint8)
  feed = Feed(batch_size=64, eval_batch_size=64, image_size=4, channels=1, augment="none", seed=0)
  src = ArraySource((images[:64], labels[:64]), (images, labels), feed)
  mesh = sharding.make_mesh(devices=jax.devices()[:devices])
  model = ConstantModel()
  params = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))["params"]
  # Waited for one call at a time on several CPU devices, as the trainer does (multihost).
  step = multihost.one_at_a_time(jax.jit(
      make_eval_step(model, loss="softmax_xent"),
      in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh))), devices)
  result = evaluate(step, params, src.eval_batches(),
                    lambda b: sharding.global_batch(b, mesh))
  assert result["count"] == n
  # 101 of the 1001 labels are 0; padding (label 0) or dropping would change this fraction.
  assert result["accuracy"] == pytest.approx(101 / 1001, abs=1e-7)
  assert result["loss"] == pytest.approx(math.log(10), rel=1e-6)
