"""The 19 tasks of VTAB-1k (Zhai et al., 2019), read from tensorflow-datasets: `dataset=vtab:TASK`.

Each task names its tfds builder, the label (the dataset's `label`, or one derived from other
features as VTAB defines it: object counts, binned distances, binned positions), and VTAB-1k's
splits: `train800` (the first 800 training examples), `val200` (200 held-out examples, from the
task's own validation data), their union `train800val200`, and `test`. A run trains on train800
and evaluates on val200 unless its config names other splits (the transfer sweep's final runs
train on train800val200 and evaluate on test). The splits and label rules follow the benchmark's
reference code (google-research/task_adaptation); the builders are tfds' current versions.
A leaf module: it imports nothing of vit_jax.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

PREFIX = "vtab:"
GROUPS = ("natural", "specialized", "structured")


def _label(example: Mapping[str, Any]) -> int:
  return int(example["label"])


def _binned(value: float, thresholds: tuple[float, ...]) -> int:
  """The largest i with thresholds[i] < value: bins (t0, t1] -> 0, (t1, t2] -> 1, ..."""
  return int(np.flatnonzero(np.asarray(thresholds) < value).max())


def clevr_count(example: Mapping[str, Any]) -> int:
  """Number of objects in the scene minus 3 (scenes hold 3 to 10): 8 classes."""
  return len(np.asarray(example["objects"]["size"])) - 3


CLEVR_DISTANCE_BINS = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)


def clevr_distance(example: Mapping[str, Any]) -> int:
  """The nearest object's depth (pixel_coords' third value), binned: 6 classes."""
  depth = np.asarray(example["objects"]["pixel_coords"], np.float32).reshape(-1, 3)[:, 2]
  return _binned(float(depth.min()), CLEVR_DISTANCE_BINS)


KITTI_DISTANCE_BINS = (-100.0, 8.0, 20.0, 999.0)
KITTI_VEHICLES = 3  # object types 0, 1, 2: Car, Van, Truck
KITTI_NONE = 1000.0  # the distance of an image without a vehicle: the last class


def kitti_distance(example: Mapping[str, Any]) -> int:
  """The nearest car, van or truck's depth (location's third value), binned: 4 classes."""
  objects = example["objects"]
  kinds = np.asarray(objects["type"]).reshape(-1)
  depth = np.asarray(objects["location"], np.float32).reshape(-1, 3)[:, 2]
  nearest = min([*depth[kinds < KITTI_VEHICLES].tolist(), KITTI_NONE])
  return _binned(nearest, KITTI_DISTANCE_BINS)


def binned_attribute(feature: str, original: int, classes: int) -> Callable[[Mapping], int]:
  """A class label of `original` values reduced to `classes` equal bins (dSprites)."""
  width = original / classes

  def label(example: Mapping[str, Any]) -> int:
    return int(np.floor(float(example[feature]) / width))

  return label


def attribute(feature: str) -> Callable[[Mapping], int]:
  """Another class-label feature as the label (smallNORB's azimuth, elevation)."""

  def label(example: Mapping[str, Any]) -> int:
    return int(example[feature])

  return label


def binary_to_255(raw: bytes | np.ndarray) -> np.ndarray:
  """dSprites stores 0/1 pixels; VTAB scales them to 0/255."""
  from PIL import Image

  image = np.asarray(Image.open(io.BytesIO(raw))) if isinstance(raw, bytes) else np.asarray(raw)
  return (image.astype(np.uint8) * 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Task:
  """One VTAB-1k task."""

  tfds_name: str
  group: str
  num_classes: int
  val200: str  # 200 held-out examples
  test: str = "test"
  label: Callable[[Mapping[str, Any]], int] = _label
  label_features: tuple[str, ...] = ("label",)  # what the label is computed from
  image: Callable[[bytes | np.ndarray], Any] | None = None  # a fix-up of the stored image
  train800: str = "train[:800]"

  @property
  def train800val200(self) -> str:
    return f"{self.train800}+{self.val200}"

  def splits(self) -> dict[str, str]:
    """VTAB-1k's named splits as tfds split strings."""
    return {"train800": self.train800, "val200": self.val200,
            "train800val200": self.train800val200, "test": self.test}


_DSPRITES = dict(tfds_name="dsprites", group="structured", num_classes=16,
                 val200="train[589824:590024]", test="train[663552:]", image=binary_to_255)
_SMALLNORB = dict(tfds_name="smallnorb", group="structured", val200="test[:200]",
                  test="test[50%:]")
_CLEVR = dict(tfds_name="clevr", group="structured", val200="train[63000:63200]",
              test="validation")

TASKS: dict[str, Task] = {
    # Natural.
    "caltech101": Task("caltech101", "natural", 102, "train[2754:2954]"),
    "cifar100": Task("cifar100", "natural", 100, "train[45000:45200]"),
    "dtd": Task("dtd", "natural", 47, "validation[:200]"),
    "oxford_flowers102": Task("oxford_flowers102", "natural", 102, "validation[:200]"),
    "oxford_iiit_pet": Task("oxford_iiit_pet", "natural", 37, "train[2944:3144]"),
    "sun397": Task("sun397/tfds", "natural", 397, "validation[:200]"),
    "svhn": Task("svhn_cropped", "natural", 10, "train[65931:66131]"),
    # Specialized.
    "patch_camelyon": Task("patch_camelyon", "specialized", 2, "validation[:200]"),
    "eurosat": Task("eurosat/rgb", "specialized", 10, "train[16200:16400]", test="train[21600:]"),
    "resisc45": Task("resisc45", "specialized", 45, "train[18900:19100]", test="train[25200:]"),
    "diabetic_retinopathy": Task("diabetic_retinopathy_detection/btgraham-300", "specialized", 5,
                                 "validation[:200]"),
    # Structured.
    "clevr_count": Task(**_CLEVR, num_classes=8, label=clevr_count, label_features=("objects",)),
    "clevr_distance": Task(**_CLEVR, num_classes=6, label=clevr_distance,
                           label_features=("objects",)),
    "dmlab": Task("dmlab", "structured", 6, "validation[:200]"),
    "kitti_distance": Task("kitti", "structured", 4, "validation[:200]", label=kitti_distance,
                           label_features=("objects",)),
    "dsprites_location": Task(**_DSPRITES, label=binned_attribute("label_x_position", 32, 16),
                              label_features=("label_x_position",)),
    "dsprites_orientation": Task(**_DSPRITES,
                                 label=binned_attribute("label_orientation", 40, 16),
                                 label_features=("label_orientation",)),
    "smallnorb_azimuth": Task(**_SMALLNORB, num_classes=18, label=attribute("label_azimuth"),
                              label_features=("label_azimuth",)),
    "smallnorb_elevation": Task(**_SMALLNORB, num_classes=9, label=attribute("label_elevation"),
                                label_features=("label_elevation",)),
}


def task(dataset: str) -> Task:
  """The task of `dataset` = "vtab:NAME"; ValueError naming the tasks for an unknown one."""
  name = dataset[len(PREFIX):]
  if name not in TASKS:
    raise ValueError(f"unknown VTAB-1k task '{name}'; choose one of {', '.join(TASKS)}")
  return TASKS[name]


def group_of(name: str) -> str:
  """natural, specialized or structured."""
  return TASKS[name].group
