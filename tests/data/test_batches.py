import itertools

import ml_collections
import numpy as np
import pytest

from vit_jax.data import pipeline, preprocess
from vit_jax.data.arrays import ArraySource
from vit_jax.data.types import DatasetError, Feed, default_splits


def arrays(n, size=8):
  images = (np.arange(n)[:, None, None, None] % 256 * np.ones((1, size, size, 1))).astype(np.uint8)
  return images, np.arange(n, dtype=np.int32)


def source(n_train=12, n_test=1001, batch=4, eval_batch=64, augment="none", process=(0, 1)):
  feed = Feed(batch_size=batch, eval_batch_size=eval_batch, image_size=8, channels=1,
              augment=augment, seed=3, process_index=process[0], process_count=process[1])
  return ArraySource(arrays(n_train), arrays(n_test), feed)


def test_each_epoch_visits_every_example_once():
  src = source(n_train=12, batch=4)
  labels = [b["label"] for b in itertools.islice(src.train_batches(0), 6)]
  first, second = np.concatenate(labels[:3]), np.concatenate(labels[3:])
  assert sorted(first) == list(range(12)) and sorted(second) == list(range(12))
  assert not np.array_equal(first, second)  # a new permutation each epoch


def test_restart_continues_the_same_batches():
  src = source(n_train=10, batch=4, augment="shift")
  uninterrupted = list(itertools.islice(src.train_batches(0), 7))
  resumed = list(itertools.islice(source(n_train=10, batch=4, augment="shift").train_batches(4), 3))
  for a, b in zip(uninterrupted[4:], resumed, strict=True):
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_array_equal(a["image"], b["image"])


def test_processes_split_every_global_batch():
  whole = next(source(batch=4, augment="shift").train_batches(2))
  parts = [next(source(batch=4, augment="shift", process=(p, 2)).train_batches(2))
           for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), whole["label"])
  np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole["image"])


def test_eval_covers_each_example_once_with_padding():
  batches = list(source(n_test=1001, eval_batch=64).eval_batches())
  assert len(batches) == 16  # ceil(1001 / 64)
  assert all(b["label"].shape == (64,) for b in batches)
  labels = np.concatenate([b["label"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 1001
  assert sorted(labels[mask == 1].tolist()) == list(range(1001))


def test_images_are_scaled_to_minus_one_one_and_resized():
  feed = Feed(batch_size=2, eval_batch_size=2, image_size=16, channels=3, augment="none", seed=0)
  images = np.zeros((2, 8, 8, 1), np.uint8)
  images[1] = 255
  batch = next(ArraySource((images, np.zeros(2, np.int32)), (images, np.zeros(2, np.int32)),
                           feed).eval_batches())
  assert batch["image"].shape == (2, 16, 16, 3)
  assert batch["image"][0].max() == -1.0 and batch["image"][1].min() == 1.0


def test_unknown_augment():
  with pytest.raises(DatasetError, match="inception_crop_flip"):
    source(augment="mixup")


@pytest.mark.parametrize("augment", ["flip", "shift", "inception_crop", "inception_crop_flip"])
def test_augmentations_keep_shape_and_change_pixels(augment):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(16, 12, 12, 3)).astype(np.uint8)
  out = preprocess.numpy_augment(images, augment, np.random.default_rng(1))
  assert out.shape == images.shape and out.dtype == np.uint8
  assert not np.array_equal(out, images)


def tfds_config(**kw):
  c = ml_collections.ConfigDict(dict(dataset="mnist", data_dir=None, manual_dir=None,
                                     download=False, train_split=None, eval_split=None))
  c.update(kw)
  return c


def test_dataset_missing_offline_names_it_and_the_fix(tmp_path):
  feed = Feed(batch_size=8, eval_batch_size=8, image_size=28, channels=1, augment="none", seed=0)
  for name in ("imagenet21k", "mnist"):
    with pytest.raises(DatasetError, match=rf"'{name}'.*data_dir.*manual_dir"):
      pipeline.load(tfds_config(dataset=name, data_dir=str(tmp_path)), feed)
  assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_tfds_dataset_through_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  feed = Feed(batch_size=8, eval_batch_size=6, image_size=16, channels=3, augment="flip", seed=0)
  with tfds.testing.mock_data(num_examples=20):
    data = pipeline.load(tfds_config(data_dir=str(tmp_path), download=True), feed)
    batch = next(data.train_batches(0))
    evals = list(data.eval_batches())
  assert data.num_classes == 10 and data.splits == ("train", "test")
  assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.float32
  assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  assert batch["label"].shape == (8,)
  assert sum(b["mask"].sum() for b in evals) == data.num_eval
  assert all(b["image"].shape == (6, 16, 16, 3) for b in evals)


def test_default_splits():
  assert default_splits("imagenet21k", ["full"]) == ("full[51200:]", "full[:51200]")
  assert default_splits("imagenet2012", ["train", "validation"]) == ("train", "validation")
  assert default_splits("cifar10", ["train", "test"]) == ("train", "test")
