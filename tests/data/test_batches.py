import hashlib
import itertools
import logging

import numpy as np
import pytest

from vit_jax.data import batches
from vit_jax.data.arrays import ArrayExamples, ArraySource
from vit_jax.data.types import DatasetError, Feed


def arrays(n, size=8):
  images = (np.arange(n)[:, None, None, None] % 256 * np.ones((1, size, size, 1))).astype(np.uint8)
  return images, np.arange(n, dtype=np.int32)


def feed(batch=4, eval_batch=64, augment="none", process=(0, 1), **kw):
  return Feed(batch_size=batch, eval_batch_size=eval_batch, image_size=8, channels=1,
              augment=augment, seed=3, process_index=process[0], process_count=process[1], **kw)


def source(n_train=12, n_test=1001, **kw):
  return ArraySource(arrays(n_train), arrays(n_test), feed(**kw))


def digest(batch):
  h = hashlib.sha256()
  for key in ("image", "label", "mask"):
    h.update(np.ascontiguousarray(batch[key]).tobytes())
  return h.hexdigest()


def test_each_epoch_visits_every_example_once():
  src = source(n_train=12, batch=4)
  labels = [b["label"] for b in itertools.islice(src.train_batches(0), 6)]
  first, second = np.concatenate(labels[:3]), np.concatenate(labels[3:])
  assert sorted(first) == list(range(12)) and sorted(second) == list(range(12))
  assert not np.array_equal(first, second)  # a new permutation each epoch


def test_restart_continues_the_same_batches():
  uninterrupted = list(itertools.islice(source(n_train=10, augment="shift").train_batches(0), 7))
  resumed = list(itertools.islice(source(n_train=10, augment="shift").train_batches(4), 3))
  assert [digest(b) for b in uninterrupted[4:]] == [digest(b) for b in resumed]


@pytest.mark.parametrize("count", [2, 4])
def test_processes_split_every_global_batch(count):
  whole = next(source(batch=8, augment="shift").train_batches(2))
  parts = [next(source(batch=8, augment="shift", process=(p, count)).train_batches(2))
           for p in range(count)]
  for key in ("label", "image", "mask"):
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


@pytest.mark.parametrize("count", [1, 2])
def test_eval_covers_each_example_once_with_padding(count):
  per_process = [list(source(n_test=1001, eval_batch=64, process=(p, count)).eval_batches())
                 for p in range(count)]
  assert all(len(b) == 16 for b in per_process)  # ceil(1001 / 64) on every process
  labels = np.concatenate([b["label"] for bs in per_process for b in bs])
  mask = np.concatenate([b["mask"] for bs in per_process for b in bs])
  assert mask.sum() == 1001
  assert sorted(labels[mask == 1].tolist()) == list(range(1001))


def test_batches_are_uint8_at_the_model_resolution():
  images = np.zeros((2, 5, 5, 1), np.uint8)
  images[1] = 255
  f = Feed(batch_size=2, eval_batch_size=2, image_size=16, channels=3, augment="none", seed=0)
  batch = next(ArraySource((images, np.zeros(2, np.int32)), (images, np.zeros(2, np.int32)),
                           f).eval_batches())
  assert batch["image"].shape == (2, 16, 16, 3) and batch["image"].dtype == np.uint8
  assert batch["image"][0].max() == 0 and batch["image"][1].min() == 255


def test_unknown_augment():
  with pytest.raises(DatasetError, match="inception_crop_flip"):
    source(augment="mixup")


class Flaky(ArrayExamples):
  """Examples whose listed indices cannot be read."""

  def __init__(self, images, labels, bad):
    super().__init__(images, labels, "flaky")
    self.bad = set(bad)

  def read(self, index):
    if index in self.bad:
      raise OSError("Input/output error")
    return super().read(index)


def test_an_unreadable_example_is_masked_and_leaves_the_others(caplog):
  f = feed(batch=8, augment="shift")
  clean = batches.IndexedSource(ArrayExamples(*arrays(20)), ArrayExamples(*arrays(5)), f, 20,
                                ("train", "test"))
  bad_index = int(clean.train_indices(1)[3])
  flaky = batches.IndexedSource(Flaky(*arrays(20), [bad_index]), ArrayExamples(*arrays(5)), f,
                                20, ("train", "test"))
  with caplog.at_level(logging.WARNING, logger=batches.LOGGER):
    want, got = [list(itertools.islice(s.train_batches(0), 3)) for s in (clean, flaky)]
  assert got[1]["mask"][3] == 0 and got[1]["mask"].sum() == 7
  keep = np.arange(8) != 3
  for key in ("image", "label"):
    np.testing.assert_array_equal(got[1][key][keep], want[1][key][keep])
  assert digest(got[0]) == digest(want[0]) and digest(got[2]) == digest(want[2])
  assert f"flaky[{bad_index}]" in caplog.text


def test_an_unreadable_example_stops_the_run_when_asked():
  f = feed(batch=8, bad_images="stop")
  src = batches.IndexedSource(Flaky(*arrays(20), range(20)), ArrayExamples(*arrays(5)), f, 20,
                              ("train", "test"))
  with pytest.raises(DatasetError, match=r"cannot read image flaky\[\d+\].*bad_images=skip"):
    next(src.train_batches(0))


def test_an_empty_split_is_refused():
  with pytest.raises(DatasetError, match="split 'test' is empty"):
    ArraySource(arrays(4), (np.zeros((0, 8, 8, 1), np.uint8), np.zeros(0, np.int32)), feed())
