import json
import os
import shutil
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from vit_jax.io import layers, npz, pretrained
from vit_jax.models.vit import VisionTransformer
from vit_jax.train.checkpoint import Checkpointer

SIZE = dict(num_classes=3, patch_size=4, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32)


def init(image, **kwargs):
  model = VisionTransformer(**SIZE, **kwargs)
  return jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, *image, 1)))["params"])


def assert_same(loaded, original):
  a, b = flatten_dict(loaded, sep="/"), flatten_dict(jax.device_get(original), sep="/")
  assert sorted(a) == sorted(b)
  for key in a:
    assert isinstance(a[key], np.ndarray), key
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def refused(path, match):
  with pytest.raises(pretrained.PretrainedError, match=match) as info:
    pretrained.load(str(path))
  assert "\n" not in str(info.value) and str(path) in str(info.value)
  return str(info.value)


@pytest.mark.parametrize("image,grid,kwargs", [
    ((8, 8), (2, 2), dict(posemb="learn1d", pool="token")),  # class row: 1 + 4 rows
    ((12, 12), (3, 3), dict(posemb="learn1d", pool="gap")),  # 9 rows
    ((4, 4), (1, 1), dict(posemb="learn1d", pool="token")),  # 2 rows
    ((4, 4), (1, 1), dict(posemb="learn1d", pool="map")),  # 1 row
    ((8, 8), (2, 2), dict(posemb="learn1d", posemb_mode="every_layer", pool="token")),
    ((8, 12), (2, 3), dict(posemb="learn2d", pool="token")),
    ((8, 12), (2, 3), dict(posemb="learn2d", posemb_mode="every_layer", pool="gap")),
    ((8, 12), (2, 3), dict(posemb="relative", pool="token")),
    ((12, 8), (3, 2), dict(posemb="relative", pool="gap")),
    ((8, 12), None, dict(posemb="sincos2d", pool="token")),
    ((8, 12), None, dict(posemb="none", pool="gap")),
])
def test_npz_round_trip_gives_the_parameters_and_grid(tmp_path, image, grid, kwargs):
  params = init(image, **kwargs)
  path = str(tmp_path / "p.npz")
  npz.save(path, params)
  loaded = pretrained.load(path)
  assert loaded.grid == grid and loaded.source == path
  assert_same(loaded.params, params)


@pytest.mark.slow
def test_scanned_parameters_come_back_per_layer(tmp_path):
  params = init((8, 8), posemb="relative", scan_layers=True)
  assert "encoderblock" in params["Transformer"]
  npz.save(str(tmp_path / "p.npz"), params)
  loaded = pretrained.load(str(tmp_path / "p.npz"))
  assert loaded.grid == (2, 2)
  assert_same(loaded.params, layers.to_per_layer(params))


@pytest.mark.parametrize("image,pool,rows", [((8, 12), "token", 6), ((8, 16), "gap", 8),
                                             ((8, 16), "token", 8)])
def test_a_learn1d_table_of_no_square_grid_is_refused(tmp_path, image, pool, rows):
  # (2, 4) with a class token has 9 rows: the class token, not the count, says which is which.
  npz.save(str(tmp_path / "p.npz"), init(image, posemb="learn1d", pool=pool))
  refused(tmp_path / "p.npz", f"pos_embedding .* has {rows} patch rows.*no square grid; give the "
          "run's workdir")


def test_disagreeing_tables_are_refused(tmp_path):
  flat = flatten_dict(init((8, 8), posemb="learn1d", posemb_mode="every_layer", pool="gap"),
                      sep="/")
  flat["Transformer/posembed_layer_1/pos_embedding"] = np.zeros((1, 9, 16), np.float32)
  np.savez(tmp_path / "p.npz", **flat)
  refused(tmp_path / "p.npz", "the position tables disagree on the grid")


def test_missing_path(tmp_path):
  refused(tmp_path / "nowhere", "does not exist; give a training run's workdir, an "
          "original-format .npz file or a timm .safetensors file")


def test_random_bytes(tmp_path):
  (tmp_path / "x.npz").write_bytes(np.random.default_rng(0).bytes(512))
  refused(tmp_path / "x.npz", r"is not an .npz archive \(truncated or another format\)")


def test_truncated_npz(tmp_path):
  npz.save(str(tmp_path / "p.npz"), init((8, 8)))
  data = (tmp_path / "p.npz").read_bytes()
  (tmp_path / "cut.npz").write_bytes(data[:len(data) // 2])
  refused(tmp_path / "cut.npz", "is not an .npz archive")


def test_pickled_npz(tmp_path):
  np.savez(tmp_path / "evil.npz", x=np.array([{"a": 1}], dtype=object))
  refused(tmp_path / "evil.npz", "holds pickled object arrays, which are never loaded")


def test_empty_npz(tmp_path):
  np.savez(tmp_path / "empty.npz")
  refused(tmp_path / "empty.npz", "holds no arrays")


def test_zip_member_that_is_no_array(tmp_path):
  with zipfile.ZipFile(tmp_path / "odd.npz", "w") as z:
    z.writestr("cls.txt", "hello")
  refused(tmp_path / "odd.npz", "member cls.txt is no .npy array")


def make_run(workdir, params, image_size=8):
  workdir.mkdir(exist_ok=True)
  (workdir / "config.json").write_text(json.dumps({"image_size": image_size,
                                                   "model": {"name": "ViT-B/16", "patch_size": 4}}))
  saver = Checkpointer(str(workdir), 1, 1)
  saver.save(3, {"step": np.int32(3), "params": params, "opt_state": {}}, force=True)
  saver.close()


def test_run_workdir_gives_its_newest_parameters_and_config_grid(tmp_path):
  params = init((12, 12), posemb="learn2d", pool="gap")
  make_run(tmp_path / "run", params, image_size=12)
  loaded = pretrained.load(str(tmp_path / "run"))
  assert loaded.grid == (3, 3) and loaded.source == str(tmp_path / "run")
  assert_same(loaded.params, params)


def test_workdir_without_config(tmp_path):
  refused(tmp_path, "has no config.json, so it is no training run's workdir")


def test_workdir_without_checkpoints_is_left_untouched(tmp_path):
  (tmp_path / "config.json").write_text(
      json.dumps({"image_size": 8, "model": {"name": "ViT-B/16", "patch_size": 4}}))
  refused(tmp_path, "has no checkpoint in checkpoints/; let that run save one")
  assert sorted(os.listdir(tmp_path)) == ["config.json"]


def test_unreadable_checkpoint(tmp_path):
  make_run(tmp_path / "run", init((8, 8)))
  step = tmp_path / "run" / "checkpoints" / "3"
  for entry in step.iterdir():
    if entry.is_dir():
      shutil.rmtree(entry)
    else:
      entry.unlink()
  refused(tmp_path / "run", "its checkpoint cannot be read")


def test_config_without_grid(tmp_path):
  make_run(tmp_path / "run", init((8, 8)))
  (tmp_path / "run" / "config.json").write_text("{}")
  refused(tmp_path / "run", "config.json lacks image_size or the model.s size fields")


OTHER_FAMILIES = {
    "ResNet+ViT-custom": dict(patch_size=1, hidden_size=32, num_layers=1, num_heads=2,
                              mlp_dim=32, resnet_layers=(1, 1), resnet_width=32),
    "Mixer-custom": dict(patch_size=4, hidden_size=16, num_layers=2, tokens_mlp_dim=8,
                         channels_mlp_dim=32, scan_layers=True),
}


@pytest.mark.parametrize("name,norm_shape", [
    pytest.param("Mixer-custom", "flat", marks=pytest.mark.slow),
    pytest.param("ResNet+ViT-custom", "flat", marks=pytest.mark.slow),
    pytest.param("ResNet+ViT-custom", "1x1x1xC", marks=pytest.mark.slow),
])
def test_hybrid_and_mixer_npz_round_trip_with_identical_logits(tmp_path, name, norm_shape):
  from vit_jax.models import registry

  model = registry.section(name, **OTHER_FAMILIES[name])
  module = registry.build(model, 5)
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  params = module.init(jax.random.key(0), images)["params"]
  rng = np.random.default_rng(0)  # every parameter random, the zero-initialised ones included
  params = jax.tree.map(lambda a: rng.normal(0, 0.2, a.shape).astype(np.float32), params)
  expected = module.apply({"params": params}, images)
  path = tmp_path / "p.npz"
  npz.save(str(path), params)
  if norm_shape == "1x1x1xC":  # GroupNorm parameters as some original hybrid files store them
    with np.load(path) as f:
      arrays = {k: f[k].reshape(1, 1, 1, -1) if "/gn" in f"/{k}" else f[k] for k in f.files}
    assert arrays["gn_root/scale"].shape == (1, 1, 1, 32)
    np.savez(path, **arrays)
  with np.load(path) as f:
    keys = set(f.files)
  if name.startswith("Mixer"):
    assert {"stem/kernel", "MixerBlock_1/token_mixing/Dense_0/kernel",
            "pre_head_layer_norm/scale", "head/bias"} <= keys  # per layer, though scanned
  else:
    assert {"conv_root/kernel", "gn_root/bias", "block2/unit1/conv_proj/kernel",
            "block2/unit1/gn3/scale", "embedding/kernel", "cls"} <= keys
  loaded = pretrained.load(str(path))
  assert loaded.grid == ((8, 8) if name.startswith("Mixer") else (4, 4))
  got = module.apply({"params": layers.to_scanned(loaded.params) if model["scan_layers"]
                      else loaded.params}, images)
  np.testing.assert_array_equal(got, expected)
