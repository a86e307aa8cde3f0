import json
import math

import jax
import numpy as np
import pytest

from configs import quickstart
from vit_jax import configuration
from vit_jax.data.pipeline import ArraySource, Feed
from vit_jax.train import loop, sharding
from vit_jax.train.checkpoint import Checkpointer


def tiny_config(total_steps=6):
  c = quickstart.get_config()
  c.image_size, c.batch_size, c.total_steps = 8, 16, total_steps
  c.warmup_steps, c.log_every, c.eval_every, c.checkpoint_every = 2, 1, 3, 1
  c.model.update(patch_size=4, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=16,
                 dropout=0.1)
  return configuration.resolve_data(configuration.resolve_model(c), num_train=40, num_classes=10)


def dataset(config):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(40, 8, 8, 1)).astype(np.uint8)
  labels = rng.integers(0, 10, size=40).astype(np.int32)
  feed = Feed(batch_size=config.batch_size, eval_batch_size=config.batch_size, image_size=8,
              channels=1, augment=config.augment, seed=config.seed)
  return ArraySource((images, labels), (images[:20], labels[:20]), feed).dataset(10)


class Killed(Exception):
  pass


def stop_after(data, n):
  """The same dataset, but the training stream dies after `n` batches."""

  def batches(start):
    for i, b in enumerate(data.train_batches(start)):
      if i == n:
        raise Killed
      yield b

  return data.__class__(data.num_classes, data.num_train, data.num_eval, batches,
                        data.eval_batches)


def final_params(workdir, config):
  ckpt = Checkpointer(str(workdir), 1, 3)
  model = loop.model_from_config(config.model, config.num_classes)
  params = model.init(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))["params"]
  step = ckpt.latest_step()
  restored = ckpt.restore()
  ckpt.close()
  assert jax.tree.structure(restored["params"]) == jax.tree.structure(params)
  return step, restored["params"]


def test_resumed_run_equals_uninterrupted_run(tmp_path):
  config = tiny_config()
  data = dataset(config)
  last = loop.train(config, data, str(tmp_path / "a"))
  assert "eval/accuracy" in last

  with pytest.raises(Killed):
    loop.train(config, stop_after(data, 4), str(tmp_path / "b"))
  assert Checkpointer(str(tmp_path / "b"), 1, 3).latest_step() == 4
  loop.train(config, data, str(tmp_path / "b"))

  step_a, a = final_params(tmp_path / "a", config)
  step_b, b = final_params(tmp_path / "b", config)
  assert step_a == step_b == 6
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
  rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().split("\n")
          if line]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert {"train/loss", "train/lr"} <= set(rows[0])
  # Throughput is unknown only on the first (compiling) step of each process: steps 1 and 5.
  assert [r["step"] for r in rows if "train/img_per_sec" not in r] == [1, 5]
  assert {"eval/accuracy", "eval/loss"} <= set(rows[-1])
  # The lr logged at step s is the one its update used: warm-up over 2 steps, then cosine decay
  # over the remaining 4.
  assert config.decay == "cosine"
  lrs = [r["train/lr"] for r in rows]
  lr, c = config.lr, math.cos(math.pi / 4)
  np.testing.assert_allclose(lrs, [0.0, lr / 2, lr, lr * (1 + c) / 2, lr / 2, lr * (1 - c) / 2],
                             rtol=1e-6)


def test_finished_run_is_not_trained_again(tmp_path):
  config = tiny_config(total_steps=3)
  data = dataset(config)
  loop.train(config, data, str(tmp_path))
  assert loop.train(config, data, str(tmp_path)) == {}


def losses(workdir):
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r["train/loss"] for r in rows]


def test_fsdp_sharded_run_matches_the_replicated_run(tmp_path):
  config = tiny_config(total_steps=5)
  data = dataset(config)
  loop.train(config, data, str(tmp_path / "replicated"))
  sharded = tiny_config(total_steps=5)
  sharded.mesh.update(data=2, fsdp=4, fsdp_min_size=0)
  # The state of this run: every kernel and Adam moment split 4 ways, biases whole.
  where = loop.Placement(sharded, loop.components(sharded)[3])
  specs = {sharding.path_str(p): s.spec for p, s in
           jax.tree_util.tree_flatten_with_path(where.state)[0]}
  kernels = [k for k in specs if k.endswith("kernel")]
  assert len(kernels) > 10 and all("fsdp" in specs[k] for k in kernels)
  assert all(specs[k] == jax.sharding.PartitionSpec() for k in specs if k.endswith("bias"))
  loop.train(sharded, data, str(tmp_path / "fsdp"))
  np.testing.assert_allclose(losses(tmp_path / "fsdp"), losses(tmp_path / "replicated"),
                             rtol=1e-5, atol=1e-6)
  assert len(losses(tmp_path / "fsdp")) == 5
  _, a = final_params(tmp_path / "replicated", config)
  _, b = final_params(tmp_path / "fsdp", config)
  # Adam turns float32 noise in near-zero gradients into lr-sized steps, hence the atol.
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5)


def test_scanned_run_saves_per_layer_checkpoints_and_matches_the_plain_run(tmp_path):
  # SGD keeps the update proportional to the gradient, so summation-order noise stays small
  # (Adam would blow up the noise of the near-zero gradients of the first steps).
  config = tiny_config()
  config.update(optimizer="sgd", lr=0.5)
  config.model.update(num_layers=2, dropout=0.0)
  data = dataset(config)
  loop.train(config, data, str(tmp_path / "plain"))
  scanned = tiny_config()
  scanned.update(optimizer="sgd", lr=0.5)
  scanned.model.update(num_layers=2, dropout=0.0, scan_layers=True, remat="full")
  # Scanned to step 3, unscanned to step 4, scanned again to the end.
  with pytest.raises(Killed):
    loop.train(scanned, stop_after(data, 3), str(tmp_path / "mixed"))
  step, params = final_params(tmp_path / "mixed", config)  # checks the per-layer structure
  assert step == 3 and "encoderblock_1" in params["Transformer"]
  with pytest.raises(Killed):
    loop.train(config, stop_after(data, 1), str(tmp_path / "mixed"))
  loop.train(scanned, data, str(tmp_path / "mixed"))
  np.testing.assert_allclose(losses(tmp_path / "mixed"), losses(tmp_path / "plain"), rtol=1e-5)
  _, a = final_params(tmp_path / "plain", config)
  _, b = final_params(tmp_path / "mixed", config)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6)
