import json
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from vit_jax.io import posemb_resize, pretrained
from vit_jax.models.vit import VisionTransformer
from vit_jax.train import checkpoint, loop

SIZE = dict(patch_size=4, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32)


def init(kind, pool, image, num_classes=3, seed=0):
  """Parameters of a small ViT; every tensor is random (zero-initialised ones too), by `seed`."""
  model = VisionTransformer(num_classes=num_classes, **SIZE, posemb=kind, pool=pool)
  params = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, *image, 1)))["params"]
  rng = np.random.default_rng(seed + 1000)  # NumPy: JAX compiles its draws for every shape
  return jax.tree.map(lambda x: np.asarray(x) + rng.standard_normal(x.shape, np.float32), params)


@pytest.mark.parametrize("method", posemb_resize.METHODS)
def test_resampling_to_the_same_grid_is_the_identity(method):
  rng = np.random.default_rng(0)
  table = rng.normal(size=(1, 1 + 2 * 3, 8)).astype(np.float32)
  np.testing.assert_allclose(posemb_resize.resize_learn1d(table, (2, 3), (2, 3), method), table,
                             atol=1e-6)
  rel = rng.normal(size=(3, 5, 4)).astype(np.float32)
  np.testing.assert_allclose(posemb_resize.resize_relative(rel, (2, 3), method), rel, atol=1e-6)
  row = rng.normal(size=(2, 4)).astype(np.float32)
  np.testing.assert_allclose(posemb_resize.resize_axis_table(row, 2, method), row, atol=1e-6)


def test_learn1d_resampled_on_its_grid_with_the_class_row_untouched():
  rng = np.random.default_rng(0)
  table = rng.normal(size=(1, 1 + 2 * 3, 8)).astype(np.float32)
  out = posemb_resize.resize_learn1d(table, (2, 3), (4, 5))
  assert out.shape == (1, 1 + 4 * 5, 8)
  np.testing.assert_array_equal(out[:, 0], table[:, 0])
  # A constant grid stays constant; a grid varying only along columns stays so.
  ramp = np.tile(np.arange(3, dtype=np.float32)[None, :, None], (2, 1, 8)).reshape(1, 6, 8)
  grid = posemb_resize.resize_learn1d(ramp, (2, 3), (4, 5)).reshape(4, 5, 8)
  np.testing.assert_allclose(grid, np.broadcast_to(grid[:1], grid.shape), atol=1e-6)
  assert np.all(np.diff(grid[0, :, 0]) >= 0)
  bicubic = posemb_resize.resize_learn1d(table, (2, 3), (4, 5), "bicubic")
  assert not np.allclose(bicubic, out)


def test_relative_table_has_the_new_offset_grid():
  rel = np.random.default_rng(0).normal(size=(3, 5, 4))
  assert posemb_resize.resize_relative(rel, (4, 6)).shape == (7, 11, 4)


def test_unknown_method_is_named():
  with pytest.raises(ValueError, match="unknown resampling method 'nearest'"):
    posemb_resize.resample(np.zeros((2, 2)), (3, 3), "nearest")


RESAMPLED = {"pos_embedding", "row_embedding", "col_embedding", "rel_embedding"}


@pytest.mark.slow
@pytest.mark.parametrize("kind,pool", [("learn1d", "token"), ("learn2d", "gap"),
                                       ("relative", "token"), ("sincos2d", "token")])
def test_every_adapted_tensor_comes_from_the_source_or_is_fresh(kind, pool):
  source = init(kind, pool, (8, 12), seed=1)
  target = init(kind, pool, (16, 16), num_classes=7, seed=2)
  adapted, fresh = posemb_resize.adapt_params(source, target, (2, 3), (4, 4))
  assert jax.tree.map(np.shape, adapted) == jax.tree.map(np.shape, target)
  assert fresh == ["head/bias", "head/kernel"]
  src, tgt = flatten_dict(source, sep="/"), flatten_dict(target, sep="/")
  for path, value in flatten_dict(adapted, sep="/").items():
    name = path.rsplit("/", 1)[-1]
    if path in fresh:  # another number of classes: the target's own initial head
      np.testing.assert_array_equal(value, tgt[path])
    elif name in RESAMPLED:  # resampled from the source's table (tested for itself above)
      assert not np.allclose(value, tgt[path]), path
      assert np.abs(value).max() <= np.abs(src[path]).max() + 1e-5, path
    else:  # carried over unchanged, and distinct from what the target started with
      np.testing.assert_array_equal(value, src[path])
      assert not np.array_equal(value, tgt[path]), path
  model = VisionTransformer(num_classes=7, **SIZE, posemb=kind, pool=pool)
  assert model.apply({"params": adapted}, jnp.ones((2, 16, 16, 1))).shape == (2, 7)


@pytest.mark.slow
def test_resampled_tables_are_the_sources_resampled():
  source = init("learn1d", "token", (8, 12), seed=1)
  target = init("learn1d", "token", (16, 16), seed=2)
  adapted, _ = posemb_resize.adapt_params(source, target, (2, 3), (4, 4), "bicubic")
  table = source["Transformer"]["posembed_input"]["pos_embedding"]
  np.testing.assert_allclose(adapted["Transformer"]["posembed_input"]["pos_embedding"],
                             posemb_resize.resize_learn1d(table, (2, 3), (4, 4), "bicubic"))


def test_another_architecture_is_refused_by_name():
  with pytest.raises(ValueError, match="no parameter Transformer/posembed_input/col_embedding"):
    posemb_resize.adapt_params(init("learn1d", "gap", (8, 8)), init("learn2d", "gap", (8, 8)),
                               (2, 2), (2, 2))


@pytest.mark.slow
def test_init_from_a_run_resamples_its_checkpoint(tmp_path):
  source = init("learn1d", "token", (8, 8), seed=1)
  config = {"image_size": 8, "model": {"name": "ViT-B/16", "patch_size": 4}}
  (tmp_path / "config.json").write_text(json.dumps(config))
  saver = checkpoint.Checkpointer(str(tmp_path), 1, 1)
  saver.save(5, {"step": np.int32(5), "params": source, "opt_state": {}}, force=True)
  saver.close()
  new = ml_collections.ConfigDict({"init_from": str(tmp_path), "image_size": 12,
                                   "posemb_resample": "bicubic",
                                   "model": {"name": "ViT-B/16", "patch_size": 4}})
  params = loop.initial_params(new, pretrained.load(str(tmp_path)),
                               init("learn1d", "token", (12, 12), seed=2))
  want = posemb_resize.resize_learn1d(source["Transformer"]["posembed_input"]["pos_embedding"],
                                      (2, 2), (3, 3), "bicubic")
  np.testing.assert_allclose(params["Transformer"]["posembed_input"]["pos_embedding"], want)
  np.testing.assert_array_equal(params["head"]["kernel"], source["head"]["kernel"])
  np.testing.assert_array_equal(params["Transformer"]["encoderblock_1"]["MlpBlock_3"]["Dense_0"]
                                ["kernel"], source["Transformer"]["encoderblock_1"]["MlpBlock_3"]
                                ["Dense_0"]["kernel"])


def test_reset_head_starts_a_zero_head_and_unused_source_layers_are_logged(caplog):
  source = pretrained.Pretrained(init("learn1d", "token", (8, 8), seed=1), (2, 2), "src.npz")
  source.params["pre_logits"] = {"kernel": np.ones((16, 16), np.float32),
                                 "bias": np.zeros(16, np.float32)}
  target = init("learn1d", "token", (8, 8), seed=2)
  target["head"] = jax.tree.map(np.zeros_like, target["head"])  # the model's zero init
  for reset in (False, True):
    config = ml_collections.ConfigDict({"image_size": 8, "posemb_resample": "bilinear",
                                        "reset_head": reset,
                                        "model": {"name": "ViT-B/16", "patch_size": 4}})
    with caplog.at_level(logging.INFO, logger="vit_jax"):
      params = loop.initial_params(config, source, target)
    want = target["head"] if reset else source.params["head"]
    for name in ("kernel", "bias"):
      np.testing.assert_array_equal(params["head"][name], want[name])
    np.testing.assert_array_equal(params["cls"], source.params["cls"])
  assert "new head/bias, head/kernel" in caplog.text
  assert "not used from the source: pre_logits/bias, pre_logits/kernel" in caplog.text


@pytest.mark.slow
def test_a_hybrid_is_resampled_on_its_feature_grid():
  from vit_jax.models import registry

  model = registry.section("ResNet+ViT-custom", patch_size=1, hidden_size=32, num_layers=1,
                           num_heads=2, mlp_dim=32, resnet_layers=(1, 1), resnet_width=32)
  module = registry.build(model, 3)

  def params(size, seed):
    p = module.init(jax.random.key(seed), jnp.zeros((1, size, size, 1)))["params"]
    noise = jax.random.key(seed + 100)
    return jax.device_get(jax.tree.map(lambda a: a + jax.random.normal(noise, a.shape), p))

  source = pretrained.Pretrained(params(32, 1), (4, 4), "hybrid.npz")  # stride 8: 32 px -> 4x4
  config = ml_collections.ConfigDict({"image_size": 64, "posemb_resample": "bilinear",
                                      "reset_head": False, "model": model})
  started = loop.initial_params(config, source, params(64, 2))
  table = source.params["Transformer"]["posembed_input"]["pos_embedding"]
  np.testing.assert_allclose(started["Transformer"]["posembed_input"]["pos_embedding"],
                             posemb_resize.resize_learn1d(table, (4, 4), (8, 8)), rtol=1e-6)
  for path in (("conv_root", "kernel"), ("block2", "unit1", "gn_proj", "scale"),
               ("embedding", "kernel")):
    got, want = started, source.params
    for key in path:
      got, want = got[key], want[key]
    np.testing.assert_array_equal(got, want)  # the stem and the embedding carry over unchanged


def test_tables_of_the_pytorch_born_families_at_a_new_grid():
  """TNT's learned `patch_pos` is resampled like learn1d; T2T-ViT's fixed sinusoid table (a
  parameter, for bit-exact loading) is the new model's own, and kept at the same grid."""
  rng = np.random.default_rng(0)
  source = {"patch_pos": rng.normal(size=(1, 1 + 16, 6)), "pos_embed": rng.normal(size=(1, 17, 6)),
            "cls_token": rng.normal(size=(1, 1, 6))}
  target = {"patch_pos": np.zeros((1, 1 + 36, 6)), "pos_embed": np.full((1, 37, 6), 7.0),
            "cls_token": np.zeros((1, 1, 6))}
  out, fresh = posemb_resize.adapt_params(source, target, (4, 4), (6, 6))
  assert fresh == []
  np.testing.assert_array_equal(out["patch_pos"], posemb_resize.resize_learn1d(
      source["patch_pos"], (4, 4), (6, 6)))
  np.testing.assert_array_equal(out["pos_embed"], target["pos_embed"])
  same, _ = posemb_resize.adapt_params(source, {k: np.zeros_like(v) for k, v in source.items()},
                                       (4, 4), (4, 4))
  np.testing.assert_array_equal(same["pos_embed"], source["pos_embed"])
  assert pretrained.infer_grid("f", source) == (4, 4)  # class-token row after cls_token
