import jax
import numpy as np
import optax
import pytest

from vit_jax.io import layers
from vit_jax.models.vit import VisionTransformer

TINY = dict(num_classes=10, patch_size=4, hidden_size=32, num_layers=3, num_heads=4, mlp_dim=64)


def params(**kw):
  model = VisionTransformer(**TINY, **kw)
  return model, model.init(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))["params"]


def test_stacking_gives_the_scanned_models_structure_and_the_same_outputs():
  plain, per_layer = params()
  scanned_model, scanned_init = params(scan_layers=True)
  scanned = layers.to_scanned(per_layer)
  assert jax.tree.structure(scanned) == jax.tree.structure(scanned_init)
  assert scanned["Transformer"]["encoderblock"]["MlpBlock_3"]["Dense_0"]["kernel"].shape == (
      3, 32, 64)
  images = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
  np.testing.assert_allclose(scanned_model.apply({"params": scanned}, images),
                             plain.apply({"params": per_layer}, images), atol=1e-6)


def test_round_trip_is_exact_and_layer_i_is_slice_i():
  _, per_layer = params()
  scanned = layers.to_scanned(per_layer)
  back = layers.to_per_layer(scanned)
  assert jax.tree.structure(back) == jax.tree.structure(per_layer)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(per_layer), strict=True):
    np.testing.assert_array_equal(a, b)
  q = per_layer["Transformer"]["encoderblock_2"]["MultiHeadDotProductAttention_1"]["query"]
  stacked = scanned["Transformer"]["encoderblock"]["MultiHeadDotProductAttention_1"]["query"]
  np.testing.assert_array_equal(stacked["kernel"][2], q["kernel"])


def test_optimizer_states_that_mirror_the_parameters_convert_too():
  _, per_layer = params()
  tx = optax.adamw(1e-3, mask=lambda p: jax.tree.map(lambda a: a.ndim > 1, p))
  scanned_state = tx.init(layers.to_scanned(per_layer))
  assert jax.tree.structure(layers.to_per_layer(scanned_state)) == jax.tree.structure(
      tx.init(per_layer))


def test_layers_with_a_gap_in_their_numbering_are_refused():
  _, per_layer = params()
  del per_layer["Transformer"]["encoderblock_1"]
  with pytest.raises(ValueError, match=r"encoder layers \[0, 2\] are not numbered 0..1"):
    layers.to_scanned(per_layer)
