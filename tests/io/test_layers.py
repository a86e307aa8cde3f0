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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_optimizer_states_that_mirror_the_parameters_convert_too():
  _, per_layer = params()
  # Adam moments only for kernels: elsewhere the state holds MaskedNode placeholders, and
  # layer 1's LayerNorm has no arrays at all.
  # (chosen by name, as the trainer's weight-decay mask: rank changes when layers are stacked).
  def kernels(p):
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", p)

  tx = optax.masked(optax.scale_by_adam(), kernels)
  grads = jax.tree.map(lambda a: jax.numpy.full_like(a, 0.5), per_layer)
  _, expected = tx.update(grads, tx.init(per_layer), per_layer)
  scanned = layers.to_scanned(per_layer)
  _, state = tx.update(layers.to_scanned(grads), tx.init(scanned), scanned)
  converted = layers.to_per_layer(state)
  assert jax.tree.structure(converted) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(converted), jax.tree.leaves(expected), strict=True):
    np.testing.assert_array_equal(a, b)


def test_layers_with_a_gap_in_their_numbering_are_refused():
  _, per_layer = params()
  del per_layer["Transformer"]["encoderblock_1"]
  with pytest.raises(ValueError, match=r"encoderblock layers \[0, 2\] are not numbered 0..1"):
    layers.to_scanned(per_layer)


def test_a_layer_subtree_without_arrays_is_split_like_the_others():
  _, per_layer = params()
  frozen = {"Transformer": {"encoderblock": optax.MaskedNode()}, "head": np.zeros((3, 2))}
  state = {"params": layers.to_scanned(per_layer), "frozen": frozen}
  converted = layers.to_per_layer(state)
  assert sorted(converted["frozen"]["Transformer"]) == [f"encoderblock_{i}" for i in range(3)]
