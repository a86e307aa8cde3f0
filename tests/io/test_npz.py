import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from vit_jax.io import layers, npz
from vit_jax.models.vit import PRESETS, VisionTransformer
from vit_jax.train.checkpoint import Checkpointer

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(num_classes=10, patch_size=4, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64,
            representation_size=16)


def params():
  model = VisionTransformer(**TINY)
  return model.init(jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))["params"]


def test_keys_are_the_original_names_and_shapes(tmp_path):
  npz.save(str(tmp_path / "p.npz"), params())
  with np.load(tmp_path / "p.npz", allow_pickle=False) as f:
    shapes = {k: f[k].shape for k in f.files}
  assert shapes["embedding/kernel"] == (4, 4, 3, 32) and shapes["cls"] == (1, 1, 32)
  assert shapes["Transformer/posembed_input/pos_embedding"] == (1, 5, 32)  # 4 patches + class
  block = "Transformer/encoderblock_1/MultiHeadDotProductAttention_1"
  assert shapes[f"{block}/query/kernel"] == (32, 4, 8) and shapes[f"{block}/out/kernel"] == (
      4, 8, 32)
  assert shapes["Transformer/encoderblock_0/MlpBlock_3/Dense_1/kernel"] == (64, 32)
  assert shapes["pre_logits/kernel"] == (32, 16) and shapes["head/kernel"] == (16, 10)


def test_round_trip_is_exact_and_scanned_parameters_are_written_per_layer(tmp_path):
  original = params()
  npz.save(str(tmp_path / "scanned.npz"), layers.to_scanned(original))
  loaded = npz.load(str(tmp_path / "scanned.npz"))
  assert jax.tree.structure(loaded) == jax.tree.structure(jax.device_get(original))
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(original), strict=True):
    np.testing.assert_array_equal(a, b)


def test_pickled_objects_are_refused(tmp_path):
  np.savez(tmp_path / "evil.npz", x=np.array([{"a": 1}], dtype=object))
  with pytest.raises(ValueError, match="holds pickled objects, which are never loaded"):
    npz.load(str(tmp_path / "evil.npz"))


@pytest.mark.slow
def test_export_command_writes_a_checkpoints_parameters(tmp_path):
  original = params()
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "config.json").write_text("{}")
  ckpt = Checkpointer(str(tmp_path / "run"), 1, 3)
  ckpt.save(7, {"step": np.int32(7), "params": original, "opt_state": {}}, force=True)
  ckpt.close()
  out = tmp_path / "exported.npz"
  cmd = [sys.executable, "-m", "vit_jax.io.npz", "--workdir", str(tmp_path / "run"), "--out",
         str(out)]
  result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert "of step 7" in result.stdout
  loaded = npz.load(str(out))
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(original), strict=True):
    np.testing.assert_array_equal(a, b)
  again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert again.returncode != 0 and "exists; choose another --out" in again.stderr



@pytest.mark.slow
def test_a_b16_round_trip_gives_identical_parameters_and_logits(tmp_path):
  model = VisionTransformer(num_classes=1000, **PRESETS["ViT-B/16"])
  params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 224, 224, 3), np.float32))["params"]
  params = jax.device_get(params)
  params["head"]["kernel"] = np.random.default_rng(0).normal(
      scale=0.02, size=params["head"]["kernel"].shape).astype(np.float32)  # not the zero init
  assert sum(p.size for p in jax.tree.leaves(params)) == 86_567_656  # the paper's count
  npz.save(str(tmp_path / "b16.npz"), params)
  loaded = npz.load(str(tmp_path / "b16.npz"))
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  images = np.random.default_rng(1).uniform(-1, 1, size=(2, 224, 224, 3)).astype(np.float32)
  apply = jax.jit(model.apply)
  want = apply({"params": params}, images)
  assert np.abs(want).max() > 0
  np.testing.assert_array_equal(apply({"params": loaded}, images), want)
