"""The hybrid and the Mixer through the train step: FSDP on 8 devices, accumulation, bf16, remat."""

import jax
import ml_collections
import numpy as np
import pytest

from vit_jax.models import registry
from vit_jax.train import sharding
from vit_jax.train.optim import make_optimizer, make_schedule
from vit_jax.train.step import init_state, make_train_step

SIZES = {
    "ResNet+ViT-custom": dict(patch_size=1, hidden_size=32, num_layers=2, num_heads=2, mlp_dim=32,
                              resnet_layers=(1,), resnet_width=32),
    "Mixer-custom": dict(patch_size=4, hidden_size=32, num_layers=2, tokens_mlp_dim=16,
                         channels_mlp_dim=64),
}
IMAGE = (16, 16, 1)


def train(name, accum_steps, steps=2, fsdp=4, **options):
  model = registry.build(registry.section(name, **SIZES[name], **options), 10)
  cfg = ml_collections.ConfigDict(dict(optimizer="sgd", grad_clip_norm=0.0, momentum=0.9,
                                       weight_decay=0.0, adam_b1=0.9, adam_b2=0.999))
  schedule = make_schedule(0.5, 0, 100, "constant")
  tx = make_optimizer(cfg, schedule)
  mesh = sharding.make_mesh(data=-1, fsdp=fsdp)
  init = lambda: init_state(model, tx, IMAGE, seed=0)  # noqa: E731
  shardings = sharding.state_shardings(jax.eval_shape(init), mesh, min_size=256)
  state = jax.jit(init, out_shardings=shardings)()
  step = jax.jit(make_train_step(model, tx, schedule, loss="softmax_xent",
                                 accum_steps=accum_steps, seed=0),
                 in_shardings=(shardings, sharding.batch_sharded(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)))
  rng = np.random.default_rng(0)
  batch = sharding.global_batch({"image": rng.normal(size=(32, *IMAGE)).astype(np.float32),
                                 "label": rng.integers(0, 10, 32).astype(np.int32),
                                 "mask": np.ones(32, np.float32)}, mesh)
  losses = []
  for _ in range(steps):
    state, metrics = step(state, batch)
    losses.append(float(metrics["train/loss"]))
  return state, losses


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SIZES))
def test_fsdp_with_accumulated_micro_batches_equals_the_full_batch(name):
  full, full_losses = train(name, accum_steps=1)
  accum, accum_losses = train(name, accum_steps=4)
  np.testing.assert_allclose(full_losses, accum_losses, rtol=1e-5)
  split = [leaf for leaf in jax.tree.leaves(full.params)
           if not leaf.sharding.is_fully_replicated]
  assert split  # FSDP really split some of the tensors over the 4 fsdp devices
  for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(accum.params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name,options", [
    ("ResNet+ViT-custom", dict(dtype="bfloat16", remat="full", scan_layers=True)),
    ("Mixer-custom", dict(dtype="bfloat16", remat="dots", scan_layers=True)),
])
def test_bfloat16_remat_and_scan_train(name, options):
  state, losses = train(name, accum_steps=2, steps=3, fsdp=2, **options)
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]
  scanned = "MixerBlock" if name.startswith("Mixer") else "encoderblock"
  tree = state.params if name.startswith("Mixer") else state.params["Transformer"]
  assert jax.tree.leaves(tree[scanned])[0].shape[0] == 2  # one stacked axis over the 2 layers
