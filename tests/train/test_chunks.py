"""Chunks: inference the same as one pass, sizes from the model's shapes; training's parts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.evaluate import fewshot
from vit_jax.models import registry
from vit_jax.models.vit import VisionTransformer
from vit_jax.train import chunks, sharding
from vit_jax.train.step import make_eval_step

TINY = dict(num_classes=10, patch_size=4, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64)


def test_chunks_take_interleaved_images_and_restore_the_order():
  images = jnp.arange(24.0).reshape(12, 2)
  seen = []

  def fn(part):
    seen.append(part.shape)
    return {"sum": part.sum(-1), "first": part[:, 0]}

  out = chunks.apply(fn, images, 3)
  assert seen == [(4, 2)]  # traced once, by lax.map, on one chunk
  np.testing.assert_array_equal(out["sum"], images.sum(-1))
  np.testing.assert_array_equal(out["first"], images[:, 0])
  # Chunk j holds images j, j + 3, j + 6, j + 9: one of each device's share of 3 (4 devices).
  centred = chunks.apply(lambda part: part - part.mean(0), images, 3)
  host = np.asarray(images)
  expected = np.empty_like(host)
  for j in range(3):
    expected[j::3] = host[j::3] - host[j::3].mean(0)
  np.testing.assert_allclose(centred, expected)
  with pytest.raises(ValueError, match="12 images cannot be split into 5 equal chunks"):
    chunks.apply(fn, images, 5)


@pytest.mark.parametrize("per_device,per_pass,expected", [
    (8, None, 1), (8, 8, 1), (8, 16, 1), (8, 4, 2), (8, 3, 4), (12, 5, 3), (7, 2, 7), (32, 8, 4),
    (10, 8, 2), (10, 4, 5), (7, 4, 1), (11, 4, 1),  # 7 or 11 would pass 1 image at a time: whole
])
def test_count_is_the_fewest_even_chunks_of_at_most_per_pass(per_device, per_pass, expected):
  assert chunks.count(per_device, per_pass) == expected


VIT_TI = registry.build(registry.section("ViT-Ti/16"), 1000)
VIT_S = registry.build(registry.section("ViT-S/16"), 1000)


@pytest.mark.parametrize("model,per_device,backend,expected", [
    (VIT_TI, 8, "cpu", 2), (VIT_TI, 32, "cpu", 4), (VIT_TI, 16, "cpu", 4), (VIT_TI, 12, "cpu", 3),
    (VIT_TI, 128, "cpu", 4), (VIT_TI, 4, "cpu", 1), (VIT_TI, 7, "cpu", 1), (VIT_TI, 9, "cpu", 1),
    (VIT_S, 8, "cpu", 2), (VIT_S, 32, "cpu", 4), (VIT_TI, 32, "gpu", 1), (VIT_TI, 32, "tpu", 1),
])
def test_train_chains_auto_on_a_cpu_parts_of_half_an_inference_pass(model, per_device, backend,
                                                                       expected):
  # ViT-Ti/16 passes 8 images (parts of at least 4), ViT-S/16 4 (parts of at least MIN_IMAGES).
  assert chunks.train_chains(0, model, (224, 224, 3), per_device, backend) == expected


def test_a_model_with_few_tokens_trains_its_whole_batch_and_a_setting_is_kept():
  tiny = VisionTransformer(**TINY)  # 4 patches of 8x8 images: an inference pass takes > 1000
  assert chunks.train_chains(0, tiny, (8, 8, 1), 128, "cpu") == 1
  assert chunks.train_chains(4, tiny, (8, 8, 1), 128, "cpu") == 4
  assert chunks.train_chains(8, VIT_TI, (224, 224, 3), 8, "gpu") == 8


def test_train_chains_refuses_a_negative_or_non_dividing_setting():
  with pytest.raises(ValueError, match="train_chains -1 is negative"):
    chunks.train_chains(-1, VIT_TI, (224, 224, 3), 8, "cpu")
  with pytest.raises(ValueError, match="train_chains 3 does not divide the 8 images per device"):
    chunks.train_chains(3, VIT_TI, (224, 224, 3), 8, "cpu")


def test_largest_activation_is_the_mlp_hidden_layer_per_image():
  # ViT-Ti/16 at 224: 14 x 14 patches + the class token, MLP width 768.
  ti = VisionTransformer(num_classes=1000, patch_size=16, hidden_size=192, num_layers=2,
                         num_heads=3, mlp_dim=768)
  assert chunks.largest_activation(ti, (224, 224, 3)) == 197 * 768
  scanned = VisionTransformer(num_classes=1000, patch_size=16, hidden_size=192, num_layers=2,
                              num_heads=3, mlp_dim=768, scan_layers=True)
  assert chunks.largest_activation(scanned, (224, 224, 3)) == 197 * 768
  assert chunks.images_per_pass(0, ti, (224, 224, 3), "cpu") == 1_250_000 // (197 * 768)
  # At 384: 577 tokens, 2 images would fill the cache, but passes keep at least 4 images.
  assert chunks.largest_activation(ti, (384, 384, 3)) == 577 * 768
  assert chunks.images_per_pass(0, ti, (384, 384, 3), "cpu") == chunks.MIN_IMAGES == 4
  assert chunks.images_per_pass(0, ti, (224, 224, 3), "gpu") is None
  assert chunks.images_per_pass(3, ti, (224, 224, 3), "gpu") == 3
  with pytest.raises(ValueError, match="infer_chunk -1 is negative"):
    chunks.images_per_pass(-1, ti, (224, 224, 3), "cpu")


def test_a_hybrids_resnet_feature_maps_do_not_count():
  # R50+ViT-B/16: the stem's 112 x 112 x 64 maps are larger than any token activation.
  hybrid = registry.build(registry.section("R50+ViT-B/16"), 1000)
  assert chunks.largest_activation(hybrid, (224, 224, 3)) == 197 * 3072


def _sharded_batch(n=32):
  rng = np.random.default_rng(0)
  host = {"image": rng.normal(size=(n, 8, 8, 1)).astype(np.float32),
          "label": rng.integers(0, 10, size=n).astype(np.int32),
          "mask": (np.arange(n) < n - 5).astype(np.float32)}
  mesh = sharding.make_mesh()
  return mesh, sharding.global_batch(host, mesh)


def test_eval_and_feature_steps_in_chunks_equal_one_pass_on_a_sharded_batch():
  model = VisionTransformer(**TINY)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
  mesh, batch = _sharded_batch()
  devices = mesh.size
  assert batch["image"].shape[0] // devices == 4  # 8 devices in the test session
  # Each result is waited for before the next call: independent multi-device calls may hang
  # jaxlib 0.10 on a CPU (multihost.one_at_a_time).
  whole = jax.block_until_ready(
      jax.jit(make_eval_step(model, loss="softmax_xent", devices=devices))(params, batch))
  parts = jax.jit(make_eval_step(model, loss="softmax_xent", images_per_pass=1,
                                 devices=devices))(params, batch)
  for key in whole:
    np.testing.assert_allclose(parts[key], whole[key], rtol=1e-6)
  feats_whole = jax.block_until_ready(jax.jit(fewshot.make_feature_step(model))(params, batch))
  feats_parts = jax.jit(fewshot.make_feature_step(model, 2, devices))(params, batch)
  np.testing.assert_allclose(feats_parts["features"], feats_whole["features"], rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_array_equal(feats_parts["label"], feats_whole["label"])
  # Chunks take images from every device's own share: the chunked pass moves no data.
  compiled = jax.jit(lambda p, x: chunks.sharded_apply(
      lambda part: model.apply({"params": p}, part), x, 2, devices)).lower(
          params, batch["image"]).compile().as_text()
  assert "while" in compiled  # the chunks' loop
  for collective in ("all-gather", "all-to-all", "collective-permute", "all-reduce"):
    assert collective not in compiled
