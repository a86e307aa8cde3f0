import io

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vit_jax.data import pipeline, vtab
from vit_jax.data.types import DatasetError, Feed

tfds = pytest.importorskip("tensorflow_datasets")


def config(name, tmp_path, download=False):
  return ml_collections.ConfigDict(dict(dataset=name, data_dir=str(tmp_path), manual_dir=None,
                                        download=download, train_split=None, eval_split=None))


FEED = Feed(batch_size=4, eval_batch_size=4, image_size=16, channels=3, augment="none", seed=0,
            process_index=0, process_count=1)


def test_19_tasks_in_vtabs_three_groups_with_their_classes():
  groups = {g: [n for n, t in vtab.TASKS.items() if t.group == g] for g in vtab.GROUPS}
  assert {g: len(n) for g, n in groups.items()} == {"natural": 7, "specialized": 4,
                                                    "structured": 8}
  assert sum(t.num_classes for t in vtab.TASKS.values()) == (
      102 + 100 + 47 + 102 + 37 + 397 + 10 + 2 + 10 + 45 + 5 + 8 + 6 + 6 + 4 + 16 + 16 + 18 + 9)
  for task in vtab.TASKS.values():
    assert task.train800 == "train[:800]"
    assert task.train800val200 == f"train[:800]+{task.val200}"


def test_derived_labels_follow_the_benchmarks_definitions():
  objects = lambda n: {"size": np.zeros(n)}  # noqa: E731
  assert [vtab.clevr_count({"objects": objects(n)}) for n in (3, 10)] == [0, 7]
  coords = lambda *depths: {"objects": {"pixel_coords": [[5, 5, d] for d in depths]}}  # noqa: E731
  # Bins (0, 8], (8, 8.5], ..., (10, 100]: the nearest object decides.
  assert [vtab.clevr_distance(coords(d, 50.0)) for d in (7.9, 8.0, 8.2, 9.7, 12.0)] == [
      0, 0, 1, 4, 5]
  car = lambda kind, z: {"objects": {"type": [kind], "location": [[0, 0, z]]}}  # noqa: E731
  assert [vtab.kitti_distance(car(0, z)) for z in (1.0, 10.0, 30.0)] == [0, 1, 2]
  assert vtab.kitti_distance(car(4, 1.0)) == 3  # no car, van or truck: the last class
  two = {"objects": {"type": [3, 2], "location": [[0, 0, 1.0], [0, 0, 15.0]]}}
  assert vtab.kitti_distance(two) == 1  # the pedestrian (type 3) at 1 m does not count
  location = vtab.TASKS["dsprites_location"].label
  orientation = vtab.TASKS["dsprites_orientation"].label
  assert [location({"label_x_position": x}) for x in (0, 1, 2, 31)] == [0, 0, 1, 15]
  assert [orientation({"label_orientation": o}) for o in (0, 2, 3, 39)] == [0, 0, 1, 15]
  assert vtab.TASKS["smallnorb_elevation"].label({"label_elevation": 8}) == 8


def test_dsprites_binary_pixels_become_0_and_255():
  buffer = io.BytesIO()
  Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8)).save(buffer, format="PNG")
  assert vtab.binary_to_255(buffer.getvalue()).tolist() == [[0, 255], [255, 0]]


@pytest.mark.parametrize("name", list(vtab.TASKS))
def test_a_task_that_is_not_prepared_is_one_line_naming_the_tfds_command(tmp_path, name):
  with pytest.raises(DatasetError) as error:
    pipeline.load(config(f"vtab:{name}", tmp_path), FEED)
  message = str(error.value)
  assert "\n" not in message and "is not prepared" in message
  assert f"tfds build {vtab.TASKS[name].tfds_name} --file_format=array_record" in message


def test_an_unknown_task_names_the_tasks(tmp_path):
  with pytest.raises(DatasetError, match="unknown VTAB-1k task 'clevr'; choose one of caltech"):
    pipeline.load(config("vtab:clevr", tmp_path), FEED)


@pytest.mark.slow
def test_a_mocked_task_reads_its_splits_classes_and_derived_labels(tmp_path):
  with tfds.testing.mock_data(num_examples=12):
    data = pipeline.load(config("vtab:dsprites_orientation", tmp_path, download=True), FEED)
    assert data.splits == ("train[:800]", "train[589824:590024]")
    assert data.num_classes == 16 and data.class_names is None
    batch = next(data.train_batches(0))
    assert batch["image"].shape == (4, 16, 16, 3) and set(batch["label"]) <= set(range(16))
