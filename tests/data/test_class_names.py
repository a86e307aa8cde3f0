import pytest

from vit_jax.data import class_names

pytest.importorskip("tensorflow_datasets")


def test_imagenet_names_are_in_label_order():
  names = class_names.imagenet_names()
  assert len(names) == 1000 and len(set(names)) > 990
  # Well-known ImageNet-1k indices.
  assert (names[0], names[1], names[207], names[281], names[409]) == (
      "tench", "goldfish", "golden retriever", "tabby", "analog clock")


def test_synsets_become_readable_and_other_names_stay():
  synsets = list(class_names._imagenet()[0])
  assert synsets[0] == "n01440764"
  assert class_names.readable(synsets, 1000)[207] == "golden retriever (n02099601)"
  assert class_names.readable(None, 1000)[1] == "goldfish"
  own = [f"c{i}" for i in range(1000)]
  assert class_names.readable(own, 1000) == own
  assert class_names.readable(None, 10) is None
  assert class_names.readable(["a", "b"], 2) == ["a", "b"]
