import hashlib
import itertools

import ml_collections
import numpy as np
import pytest

from vit_jax.data import pipeline, preprocess
from vit_jax.data.presets import PRESETS, default_splits
from vit_jax.data.types import DatasetError, Feed

tfds = pytest.importorskip("tensorflow_datasets")


def config(name, tmp_path, **kw):
  c = ml_collections.ConfigDict(dict(dataset=name, data_dir=str(tmp_path), manual_dir=None,
                                     download=False, train_split=None, eval_split=None))
  c.update(kw)
  return c


def feed(batch=8, eval_batch=6, process=(0, 1), augment="inception_crop_flip"):
  return Feed(batch_size=batch, eval_batch_size=eval_batch, image_size=16, channels=3,
              augment=augment, seed=0, process_index=process[0], process_count=process[1])


def mocked(name, tmp_path, examples=20, **kw):
  """`name` through tfds.testing.mock_data (random images; imagenet2012's of random sizes)."""
  c = config(name, tmp_path, download=True, manual_dir=str(tmp_path))

  def load(**feed_kw):
    return pipeline.load(c, feed(**feed_kw))

  return tfds.testing.mock_data(num_examples=examples, **kw), load


def digest(batch):
  return hashlib.sha256(b"".join(np.ascontiguousarray(batch[k]).tobytes()
                                 for k in ("image", "label", "mask"))).hexdigest()


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("imagenet2012", 1000)])
def test_mocked_datasets_give_model_shaped_batches_and_cover_eval_once(tmp_path, name, classes):
  mock, load = mocked(name, tmp_path)
  with mock:
    data = load()
    batch = next(data.train_batches(0))
    assert data.num_classes == classes and data.splits == (PRESETS[name].train_split,
                                                           PRESETS[name].eval_split)
    assert len(data.class_names) == classes
    assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.uint8
    scaled = preprocess.to_model_range(batch["image"])
    assert -1 <= scaled.min() < scaled.max() <= 1
    for count in (1, 2):
      seen = 0
      for p in range(count):
        for b in load(process=(p, count)).eval_batches():
          assert b["image"].shape == (6 // count, 16, 16, 3)
          seen += b["mask"].sum()
      assert seen == data.num_eval


def test_mocked_restart_at_step_100_on_another_process_count(tmp_path):
  mock, load = mocked("imagenet2012", tmp_path, examples=12)
  with mock:
    whole = [digest(b) for b in itertools.islice(load().train_batches(0), 120)][100:]
    parts = [itertools.islice(load(process=(p, 2)).train_batches(100), 20) for p in range(2)]
    resumed = [digest({k: np.concatenate([b[k] for b in pair]) for k in ("image", "label",
                                                                           "mask")})
               for pair in zip(*parts, strict=True)]
  assert resumed == whole


def test_dataset_missing_offline_names_it_and_the_fix(tmp_path):
  for name in ("imagenet21k", "mnist"):
    with pytest.raises(DatasetError, match=rf"'{name}'.*array_record.*data_dir.*manual_dir"):
      pipeline.load(config(name, tmp_path), feed())
  assert list(tmp_path.iterdir()) == []


def tiny_builder(data_dir, file_format):
  """A real dataset of 30 images of varying sizes, prepared without any download."""

  class TinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3)),
          "label": tfds.features.ClassLabel(names=["a", "b", "c"])}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(20), "test": self._generate_examples(10)}

    def _generate_examples(self, n):
      rng = np.random.default_rng(n)
      for i in range(n):
        yield i, {"image": rng.integers(0, 255, (12 + i, 20, 3), dtype=np.uint8), "label": i % 3}

  builder = TinyImages(data_dir=str(data_dir), file_format=file_format)
  builder.download_and_prepare()
  return builder


@pytest.mark.slow
def test_a_prepared_array_record_dataset_is_read_by_index(tmp_path, monkeypatch):
  builder = tiny_builder(tmp_path, "array_record")
  monkeypatch.setattr(tfds, "builder", lambda *a, **kw: builder)
  data = pipeline.load(config("tiny_images", tmp_path), feed())
  assert (data.num_train, data.num_eval, data.class_names) == (20, 10, ("a", "b", "c"))
  assert next(data.train_batches(5))["image"].shape == (8, 16, 16, 3)
  labels = np.concatenate([b["label"][b["mask"] == 1] for b in data.eval_batches()])
  assert sorted(labels.tolist()) == sorted(i % 3 for i in range(10))  # tfds orders by key hash


@pytest.mark.slow
def test_a_tfrecord_dataset_is_refused_with_the_conversion_command(tmp_path, monkeypatch):
  builder = tiny_builder(tmp_path, "tfrecord")
  monkeypatch.setattr(tfds, "builder", lambda *a, **kw: builder)
  with pytest.raises(DatasetError, match=r"prepared as TFRecord.*tfds convert_format "
                                         r"--dataset_version_dir .*tiny_images/1.0.0 "
                                         r"--out_file_format array_record"):
    pipeline.load(config("tiny_images", tmp_path), feed())


def test_presets_hold_out_a_minival_of_the_training_split():
  assert default_splits("cifar10", ["train", "test"]) == ("train[:98%]", "train[98%:]")
  assert default_splits("imagenet21k", ["full"]) == ("full[51200:]", "full[:51200]")
  assert default_splits("oxford_flowers102", []) == ("train", "validation")
  assert default_splits("mnist", ["train", "test"]) == ("train", "test")
  assert default_splits("other", ["train", "validation"]) == ("train", "validation")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "oxford_iiit_pet", "oxford_flowers102",
                                  "imagenet2012"])
def test_preset_class_counts_match_the_dataset_metadata(name):
  with tfds.testing.mock_data(num_examples=1):
    features = tfds.builder(name).info.features
  assert features["label"].num_classes == PRESETS[name].num_classes
