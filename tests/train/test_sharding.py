import re

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vit_jax.models.vit import VisionTransformer
from vit_jax.train import sharding

TINY = dict(num_classes=10, patch_size=4, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64)


@pytest.mark.parametrize("data,fsdp,devices,shape", [
    (-1, 1, 8, (8, 1)), (-1, 4, 8, (2, 4)), (2, -1, 8, (2, 4)), (1, 8, 8, (1, 8)),
    (4, 2, 8, (4, 2)), (-1, 1, 1, (1, 1)),
])
def test_mesh_shape_fills_the_free_axis(data, fsdp, devices, shape):
  assert sharding.mesh_shape(data, fsdp, devices) == shape


@pytest.mark.parametrize("data,fsdp,message", [
    (3, 1, "mesh data=3 x fsdp=1 = 3 devices does not match the 8 devices"),
    (-1, 3, "mesh.fsdp=3 does not divide the 8 devices"),
    (-1, -1, "only one of mesh.data and mesh.fsdp can be -1"),
    (0, 1, "mesh.data must be positive or -1, got 0"),
])
def test_mesh_that_does_not_fit_the_devices_is_refused(data, fsdp, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    sharding.mesh_shape(data, fsdp, 8)


def test_make_mesh_names_both_axes():
  mesh = sharding.make_mesh(2, -1)
  assert mesh.axis_names == ("data", "fsdp") and dict(mesh.shape) == {"data": 2, "fsdp": 4}


@pytest.mark.parametrize("path,shape,expected", [
    ("Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel", (768, 3072), P(None, "fsdp")),
    ("Transformer/encoderblock_0/MlpBlock_3/Dense_1/kernel", (3072, 768), P("fsdp")),
    # (D, H, D/H): the largest divisible dimension is the width.
    ("Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel", (768, 12, 64),
     P("fsdp")),
    ("embedding/kernel", (16, 16, 3, 768), P(None, None, None, "fsdp")),
    ("Transformer/posembed_input/pos_embedding", (1, 197, 768), P(None, None, "fsdp")),
    ("opt_state/1/0/mu/head/kernel", (768, 1000), P(None, "fsdp")),  # 1000 = 8 x 125
    ("Transformer/encoderblock_0/MlpBlock_3/Dense_0/bias", (3072,), P()),  # vectors stay whole
    ("Transformer/encoder_norm/scale", (768,), P()),
    ("opt_state/1/0/count", (), P()),
    ("head/kernel", (100, 10), P()),  # below the minimum size
    ("odd/kernel", (1001, 999), P()),  # no dimension divisible by 8
])
def test_rule_table_splits_the_largest_divisible_dimension_of_big_tensors(path, shape, expected):
  assert sharding.spec_for(path, shape, fsdp_size=8, min_size=2**14) == expected


def test_without_fsdp_everything_is_replicated():
  assert sharding.spec_for("a/kernel", (4096, 4096), fsdp_size=1, min_size=0) == P()


def test_state_shardings_split_kernels_and_keep_one_copy_per_fsdp_group():
  mesh = sharding.make_mesh(2, 4)
  model = VisionTransformer(**TINY)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 8, 8, 1)))["params"])
  shardings = sharding.state_shardings(params, mesh, min_size=1000)
  dense = shardings["Transformer"]["encoderblock_0"]["MlpBlock_3"]["Dense_0"]
  assert dense["kernel"].spec == P(None, "fsdp") and dense["bias"].spec == P()
  placed = jax.device_put(np.ones((32, 64), np.float32), dense["kernel"])
  assert {s.data.shape for s in placed.addressable_shards} == {(32, 16)}


def test_path_str_joins_dict_keys_attributes_and_indices():
  tree = {"a": [{"b": 1}], "c": (2,)}
  paths = [sharding.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  assert paths == ["a/0/b", "c/0"]
