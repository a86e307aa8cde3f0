import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.train.checkpoint import Checkpointer
from vit_jax.train.step import TrainState


def state(value):
  return TrainState(step=jnp.asarray(value, jnp.int32),
                    params={"w": jnp.full((3, 2), float(value)), "b": jnp.arange(2.0) + value},
                    opt_state=(jnp.asarray(value * 2.0),))


def abstract(s):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), s)


def test_save_restore_round_trip_and_retention(tmp_path):
  ckpt = Checkpointer(str(tmp_path), every=2, keep=2)
  assert ckpt.latest_step() is None
  saved = [s for s in range(1, 8) if ckpt.save(s, state(s))]
  ckpt.close()
  assert saved == [2, 4, 6]
  ckpt = Checkpointer(str(tmp_path), every=2, keep=2)
  assert ckpt.latest_step() == 6
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [4, 6]
  restored = ckpt.restore(abstract(state(0)))
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state(6)), strict=True):
    np.testing.assert_array_equal(a, b)
  older = ckpt.restore(abstract(state(0)), step=4)
  assert int(older.step) == 4
  ckpt.close()


def test_forced_save_off_the_interval(tmp_path):
  ckpt = Checkpointer(str(tmp_path), every=100, keep=3)
  assert ckpt.save(7, state(7), force=True)
  ckpt.close()
  assert Checkpointer(str(tmp_path), every=100, keep=3).latest_step() == 7


def test_when_no_checkpoint_reads_nothing_is_moved_and_the_error_says_so(tmp_path):
  import logging

  from vit_jax.train.checkpoint import CheckpointError

  saver = Checkpointer(str(tmp_path), 1, 5)
  for step in (1, 2):
    saver.save(step, {"w": np.full((4,), float(step), np.float32)}, force=True)
  saver.close()
  for meta in (tmp_path / "checkpoints").glob("*/default/_METADATA"):
    meta.write_text("{")  # torn JSON
  checkpoints = Checkpointer(str(tmp_path), 1, 5)
  abstract = {"w": jax.ShapeDtypeStruct((4,), np.float32)}
  with pytest.raises(CheckpointError, match=r"none of the checkpoints in .* \(2, 1\) can be read"):
    checkpoints.restore_readable(abstract, logging.getLogger("test"))
  checkpoints.close()
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]
  assert not (tmp_path / "damaged_checkpoints").exists()
