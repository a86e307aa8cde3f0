import errno
import json
import math
import os

import jax
import numpy as np
import pytest

from configs import quickstart
from vit_jax import configuration
from vit_jax.data.arrays import ArraySource
from vit_jax.data.types import Feed
from vit_jax.models import registry
from vit_jax.train import loop, sharding
from vit_jax.train.checkpoint import Checkpointer, CheckpointSaveError
from vit_jax.train.preemption import StopRequest


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
  model = registry.build(config.model, config.num_classes)
  params = model.init(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))["params"]
  step = ckpt.latest_step()
  restored = ckpt.restore()
  ckpt.close()
  assert jax.tree.structure(restored["params"]) == jax.tree.structure(params)
  return step, restored["params"]


@pytest.mark.slow
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


@pytest.mark.slow
def test_finished_run_is_not_trained_again(tmp_path):
  config = tiny_config(total_steps=3)
  data = dataset(config)
  loop.train(config, data, str(tmp_path))
  assert loop.train(config, data, str(tmp_path)) == {}


def losses(workdir):
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r["train/loss"] for r in rows]


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_replicated_run_resumes_on_an_fsdp_mesh_as_the_uninterrupted_run(tmp_path):
  config = tiny_config()
  data = dataset(config)
  loop.train(config, data, str(tmp_path / "a"))
  with pytest.raises(Killed):
    loop.train(config, stop_after(data, 4), str(tmp_path / "b"))
  resharded = tiny_config()
  resharded.mesh.update(data=2, fsdp=4, fsdp_min_size=0)  # every kernel and moment split 4 ways
  loop.train(resharded, data, str(tmp_path / "b"))
  np.testing.assert_allclose(losses(tmp_path / "b"), losses(tmp_path / "a"), rtol=1e-5,
                             atol=1e-6)
  (step_a, a), (step_b, b) = final_params(tmp_path / "a", config), final_params(tmp_path / "b",
                                                                                 config)
  assert step_a == step_b == 6
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5)  # as the FSDP test above


@pytest.mark.slow
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


def with_batches(data, change):
  """The same dataset with `change(batch_index, batch)` applied to each training batch."""

  def batches(start):
    for i, b in enumerate(data.train_batches(start), start):
      yield change(i, b)

  return data.__class__(data.num_classes, data.num_train, data.num_eval, batches,
                        data.eval_batches)


def nan_at(index):
  def change(i, b):
    return {**b, "image": b["image"] * np.float32("nan")} if i == index else b

  return change


def restore(workdir, step):
  checkpoints = Checkpointer(str(workdir), 1, 3)
  state = checkpoints.restore(None, step)
  checkpoints.close()
  return state


@pytest.mark.slow
def test_a_stop_request_saves_the_current_step_and_the_resumed_run_is_identical(tmp_path):
  config = tiny_config()
  config.checkpoint_every = 100  # only the stop and the end save
  data = dataset(config)
  loop.train(config, data, str(tmp_path / "a"))

  stop = StopRequest()

  def request_during_step_3(i, b):
    if i == 2:  # batch 2 feeds step 3
      stop.request("SIGTERM")
    return b

  with pytest.raises(loop.Interrupted) as stopped:
    loop.train(config, with_batches(data, request_during_step_3), str(tmp_path / "b"), stop)
  assert (stopped.value.step, stopped.value.saved) == (3, True)
  assert Checkpointer(str(tmp_path / "b"), 1, 3).all_steps() == [3]
  loop.train(config, data, str(tmp_path / "b"), StopRequest())
  for x, y in zip(jax.tree.leaves(final_params(tmp_path / "a", config)),
                  jax.tree.leaves(final_params(tmp_path / "b", config)), strict=True):
    np.testing.assert_array_equal(x, y)


def test_a_stop_requested_before_training_saves_nothing(tmp_path):
  config = tiny_config()
  stop = StopRequest()
  stop.request("SIGINT")
  with pytest.raises(loop.Interrupted) as stopped:
    loop.train(config, dataset(config), str(tmp_path), stop)
  assert (stopped.value.step, stopped.value.saved) == (0, False)
  assert Checkpointer(str(tmp_path), 1, 3).all_steps() == []


@pytest.mark.slow
def test_a_nan_batch_stops_the_run_naming_the_step_and_keeps_the_last_checkpoint(tmp_path):
  config = tiny_config()
  config.checkpoint_every = 3
  data = with_batches(dataset(config), nan_at(3))  # batch 3 feeds step 4
  with pytest.raises(loop.NonFiniteError, match=r"^step 4 has a non-finite loss nan"):
    loop.train(config, data, str(tmp_path))
  assert Checkpointer(str(tmp_path), 1, 3).all_steps() == [3]
  restored = restore(tmp_path, 3)
  assert int(restored["step"]) == 3
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored["params"]))
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3]  # nothing of the bad step is logged


@pytest.mark.slow
def test_skip_mode_skips_the_nan_update_and_counts_it(tmp_path, caplog):
  config = tiny_config()
  config.nonfinite, config.keep_checkpoints = "skip", 10
  data = with_batches(dataset(config), nan_at(3))
  with caplog.at_level("WARNING"):
    loop.train(config, data, str(tmp_path))
  assert "step 4: non-finite loss nan and gradient norm nan; update skipped (1 skipped)" in (
      caplog.text)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["train/skipped"] for r in rows] == [0, 0, 0, 1, 0, 0]
  after_3, after_4 = (restore(tmp_path, step) for step in (3, 4))
  assert int(after_4["step"]) == 4
  for x, y in zip(jax.tree.leaves(after_3["params"]), jax.tree.leaves(after_4["params"]),
                  strict=True):
    np.testing.assert_array_equal(x, y)  # the skipped update changed nothing


@pytest.mark.slow
def test_three_skipped_steps_advance_optaxs_counts_with_the_step(tmp_path):
  config = tiny_config()
  config.nonfinite = "skip"
  data = with_batches(dataset(config), lambda i, b: nan_at(i)(i, b) if i in (1, 2, 3) else b)
  loop.train(config, data, str(tmp_path))
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["train/skipped"] for r in rows] == [0, 1, 1, 1, 0, 0]
  final = restore(tmp_path, 6)
  counts = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(final["opt_state"])[0]
            if jax.tree_util.keystr(path, simple=True, separator="/").endswith("count")]
  # Adam's bias correction and the schedule's count: 6 steps taken, 3 of them skipped.
  assert len(counts) == 2 and all(int(c) == int(final["step"]) == 6 for c in counts)


@pytest.mark.slow
def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
  config = tiny_config()
  data = dataset(config)
  loop.train(config, data, str(tmp_path / "a"))
  with pytest.raises(Killed):
    loop.train(config, stop_after(data, 5), str(tmp_path / "b"))
  newest = tmp_path / "b" / "checkpoints" / "5"
  biggest = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
  with caplog.at_level("WARNING"):
    loop.train(config, data, str(tmp_path / "b"))
  assert "Checkpoint 5 cannot be read" in caplog.text
  assert (tmp_path / "b" / "damaged_checkpoints" / "5").is_dir()
  for x, y in zip(jax.tree.leaves(final_params(tmp_path / "a", config)),
                  jax.tree.leaves(final_params(tmp_path / "b", config)), strict=True):
    np.testing.assert_array_equal(x, y)


def fail_writing(monkeypatch, steps):
  """Makes Orbax's background write of checkpoint `steps` fail as on a full disk.

  The failure is raised where Orbax completes a write (renaming it to its step), in its
  background thread, as a real failed write would be.
  """
  from orbax.checkpoint._src.path import async_path

  rename = async_path.rename

  async def failing_rename(src, dst):
    if os.path.basename(str(dst)) in {str(s) for s in steps}:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
    return await rename(src, dst)

  monkeypatch.setattr(async_path, "rename", failing_rename)


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_stops_the_run_naming_the_last_good_one(
    tmp_path, monkeypatch):
  config = tiny_config()
  config.checkpoint_every = 2
  fail_writing(monkeypatch, [4])
  with pytest.raises(CheckpointSaveError) as failed:
    loop.train(config, dataset(config), str(tmp_path))
  assert str(failed.value) == (
      f"could not write the checkpoint of step 4 to {tmp_path}/checkpoints/4: No space left on "
      "device; the newest complete checkpoint is step 2; fix the cause and run the same command "
      "to resume from it")
  # Found before the next save at the latest: step 6 was never written, not even in part.
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2",
                                                                        "4.orbax-checkpoint-tmp"]
  assert Checkpointer(str(tmp_path), 1, 3).all_steps() == [2]
  assert int(restore(tmp_path, 2)["step"]) == 2

  monkeypatch.undo()  # space again: the same run resumes from step 2 and finishes
  loop.train(config, dataset(config), str(tmp_path))
  assert Checkpointer(str(tmp_path), 1, 3).latest_step() == 6
