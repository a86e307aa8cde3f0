import hashlib
import itertools
import logging

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vit_jax.data import batches, bundled, folder, pipeline, preprocess
from vit_jax.data.types import DatasetError, Feed


def write_digits(root, per_class=6, classes=4, split_names=("train", "test")):
  """Real digits as files: JPEG (upper-case extension) and PNG, in three sizes."""
  for split in split_names:
    images, labels = bundled.load_split("train" if split == "train" else "test")
    for digit in range(classes):
      folder = root / split / f"digit_{digit}"
      folder.mkdir(parents=True)
      for k, i in enumerate(np.flatnonzero(labels == digit)[:per_class]):
        image = Image.fromarray(images[i, ..., 0]).resize((28 + 8 * (k % 3),) * 2)
        if k % 2:
          image.save(folder / f"{i}.JPG", quality=95)
        else:
          image.convert("RGB").save(folder / f"{i}.png")
  (root / "train" / "README.txt").write_text("not an image, not a class\n")
  (root / "train" / "digit_0" / "notes.txt").write_text("ignored\n")


def config(root, **kw):
  c = ml_collections.ConfigDict(dict(dataset=f"folder:{root}", data_dir=None, manual_dir=None,
                                     download=False, train_split=None, eval_split=None))
  c.update(kw)
  return c


def feed(batch=8, eval_batch=6, process=(0, 1), augment="inception_crop_flip", **kw):
  return Feed(batch_size=batch, eval_batch_size=eval_batch, image_size=16, channels=3,
              augment=augment, seed=1, process_index=process[0], process_count=process[1], **kw)


def load(root, **kw):
  return pipeline.load(config(root), feed(**kw))


def digest(batch):
  return hashlib.sha256(b"".join(np.ascontiguousarray(batch[k]).tobytes()
                                 for k in ("image", "label", "mask"))).hexdigest()


def test_batches_have_the_model_shape_dtype_and_range(tmp_path):
  write_digits(tmp_path)
  data = load(tmp_path)
  assert (data.num_train, data.num_eval, data.num_classes) == (24, 24, 4)
  assert data.class_names == ("digit_0", "digit_1", "digit_2", "digit_3")
  assert data.splits == ("train", "test")
  batch = next(data.train_batches(0))
  assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.uint8
  scaled = preprocess.to_model_range(batch["image"])
  assert scaled.min() >= -1 and scaled.max() <= 1 and scaled.min() < scaled.max()
  assert batch["mask"].tolist() == [1.0] * 8 and set(batch["label"]) <= {0, 1, 2, 3}


@pytest.mark.parametrize("count", [1, 2])
def test_eval_covers_every_file_once(tmp_path, count):
  write_digits(tmp_path, per_class=5)  # 20 files, batches of 6: the last one padded
  seen = []
  for p in range(count):
    for batch in load(tmp_path, process=(p, count)).eval_batches():
      assert batch["image"].shape == (6 // count, 16, 16, 3)
      seen += batch["label"][batch["mask"] == 1].tolist()
  assert sorted(seen) == sorted([0, 1, 2, 3] * 5)


@pytest.mark.parametrize("count", [1, 2])
def test_restart_at_step_100_sees_the_uninterrupted_batches(tmp_path, count):
  write_digits(tmp_path, per_class=3)
  whole = [digest(b) for b in itertools.islice(load(tmp_path).train_batches(0), 120)][100:]
  parts = [itertools.islice(load(tmp_path, process=(p, count)).train_batches(100), 20)
           for p in range(count)]
  resumed = [digest({k: np.concatenate([b[k] for b in group]) for k in ("image", "label", "mask")})
             for group in zip(*parts, strict=True)]
  assert resumed == whole


def test_a_corrupt_jpeg_is_skipped_named_and_masked(tmp_path, caplog):
  write_digits(tmp_path, per_class=2)
  bad = tmp_path / "train" / "digit_1" / "broken.jpg"
  bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 300)
  data = load(tmp_path, batch=9)  # one epoch per batch: every batch holds the broken file
  with caplog.at_level(logging.WARNING, logger=batches.LOGGER):
    batch = next(data.train_batches(0))
  assert batch["mask"].sum() == 8
  assert f"skipped unreadable image {bad}" in caplog.text
  stopping = pipeline.load(config(tmp_path), feed(batch=9, bad_images="stop"))
  with pytest.raises(DatasetError, match=f"cannot read image {bad}"):
    next(stopping.train_batches(0))


def test_val_is_the_evaluation_split_when_there_is_no_test(tmp_path):
  write_digits(tmp_path, split_names=("train", "val"))
  assert load(tmp_path).splits == ("train", "val")


def test_an_evaluation_split_may_lack_classes(tmp_path):
  write_digits(tmp_path)
  for f in (tmp_path / "test" / "digit_2").iterdir():
    f.unlink()
  (tmp_path / "test" / "digit_2").rmdir()
  data = load(tmp_path)
  labels = np.concatenate([b["label"][b["mask"] == 1] for b in data.eval_batches()])
  assert sorted(set(labels.tolist())) == [0, 1, 3]  # labels follow the training classes


@pytest.mark.parametrize("damage, message", [
    ("no root", "does not exist"),
    ("no train", "has no split 'train'"),
    ("no test", "has no evaluation split"),
    ("test class train lacks", "classes the training split lacks: digit_9"),
    ("empty class", "has no image files"),
    ("no classes", "has no class folders"),
])
def test_layout_problems_are_one_clear_error(tmp_path, damage, message):
  root = tmp_path / "data"
  write_digits(root, per_class=1)
  if damage == "no root":
    root = tmp_path / "elsewhere"
  elif damage == "no train":
    (root / "train").rename(root / "training")
  elif damage == "no test":
    (root / "test").rename(root / "holdout")
  elif damage == "test class train lacks":
    (root / "test" / "digit_3").rename(root / "test" / "digit_9")
  elif damage == "empty class":
    for f in (root / "train" / "digit_1").iterdir():
      f.unlink()
  elif damage == "no classes":
    for d in (root / "test").iterdir():
      for f in d.iterdir():
        f.unlink()
      d.rmdir()
  before = sorted(p for p in tmp_path.rglob("*"))
  with pytest.raises(DatasetError, match=message):
    load(root)
  assert sorted(p for p in tmp_path.rglob("*")) == before


def test_percentage_slices_hold_out_a_stratified_disjoint_minival(tmp_path):
  write_digits(tmp_path, per_class=10)
  c = config(tmp_path, train_split="train[:80%]", eval_split="train[80%:]")
  data = pipeline.load(c, feed())
  assert data.splits == ("train[:80%]", "train[80%:]")
  assert (data.num_train, data.num_eval) == (32, 8)
  held = [folder.read_split(str(tmp_path), s)[0] for s in ("train[:80%]", "train[80%:]")]
  whole = folder.read_split(str(tmp_path), "train")[0]
  assert not set(held[0].paths) & set(held[1].paths)
  assert sorted(held[0].paths + held[1].paths) == sorted(whole.paths)
  assert np.bincount(held[1].labels).tolist() == [2, 2, 2, 2]  # two of each class's ten
  # Not simply the first files of each class: the order is shuffled, and fixed.
  assert held[1].paths != [p for c in range(4) for p in
                           [q for q, lab in zip(whole.paths, whole.labels, strict=True)
                                             if lab == c][8:]]
  assert held[1].paths == folder.read_split(str(tmp_path), "train[80%:]")[0].paths


@pytest.mark.parametrize("split, message", [
    ("train[:800]", "percentage slice"),
    ("train[90%:10%]", "percentage slice"),
    ("train[:1%]", "keeps none of the"),
])
def test_bad_folder_slices_are_one_clear_error(tmp_path, split, message):
  write_digits(tmp_path, per_class=3)
  with pytest.raises(DatasetError, match=message):
    pipeline.load(config(tmp_path, train_split=split), feed())
