import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from vit_jax.io import big_vision, pretrained
from vit_jax.models.vit import VisionTransformer

SIZE = dict(patch_size=4, hidden_size=16, num_layers=3, num_heads=2, mlp_dim=32, num_classes=5)
OURS = {v: k for k, v in big_vision.BLOCK.items()}  # our block part -> big_vision's


def model_and_params(pool, seed=0):
  """A small ViT whose every tensor holds distinct random values."""
  model = VisionTransformer(**SIZE, pool=pool, representation_size=8)
  shapes = jax.eval_shape(model.init, jax.random.key(seed), jnp.zeros((1, 12, 12, 3)))["params"]
  rng = np.random.default_rng(seed + 1)  # NumPy: JAX compiles its draws for every shape
  return model, jax.tree.map(lambda x: 0.2 * rng.standard_normal(x.shape, np.float32), shapes)


def write_big_vision(path, params, scanned):
  """Our parameters written in big_vision's documented layout (the inverse of the loader)."""
  flat = traverse_util.flatten_dict(params, sep="/")
  out, blocks = {}, {}
  for key, value in flat.items():
    parts = key.split("/")
    if key == "Transformer/posembed_input/pos_embedding":
      # big_vision adds no position embedding to the class token: it stores patch rows only, and
      # the class token's row must be zero for the models to agree.
      value = value[:, 1:] if "cls" in params else value
      out["params/pos_embedding"] = value
    elif len(parts) > 2 and parts[0] == "Transformer" and parts[1].startswith("encoderblock_"):
      layer = int(parts[1].split("_")[1])
      blocks.setdefault("/".join([OURS[parts[2]], *parts[3:]]), {})[layer] = value
    else:
      out[f"params/{key}"] = value
  for rest, layers in blocks.items():
    if scanned:
      out[f"params/Transformer/encoderblock/{rest}"] = np.stack([layers[i]
                                                                   for i in sorted(layers)])
    else:
      for i, value in layers.items():
        out[f"params/Transformer/encoderblock_{i}/{rest}"] = value
  np.savez(path, **out)


@pytest.mark.slow
@pytest.mark.parametrize("pool, scanned", [("token", True), ("gap", True), ("token", False)])
def test_a_big_vision_file_gives_the_logits_of_the_model_it_came_from(tmp_path, pool, scanned):
  model, params = model_and_params(pool)
  if pool == "token":  # big_vision's class token has no position row: make ours zero too
    table = params["Transformer"]["posembed_input"]["pos_embedding"]
    params["Transformer"]["posembed_input"]["pos_embedding"] = np.concatenate(
        [np.zeros_like(table[:, :1]), table[:, 1:]], axis=1)
  x = np.random.default_rng(0).normal(size=(2, 12, 12, 3)).astype(np.float32)
  want = model.apply({"params": params}, x)
  write_big_vision(tmp_path / "bv.npz", params, scanned)
  loaded = pretrained.load(str(tmp_path / "bv.npz"))
  assert loaded.grid == (3, 3)
  np.testing.assert_array_equal(model.apply({"params": loaded.params}, x), want)


def test_an_unknown_big_vision_key_is_named(tmp_path):
  np.savez(tmp_path / "bv.npz", **{
      "params/embedding/kernel": np.zeros((4, 4, 3, 16)),
      "params/Transformer/encoderblock/Fancy_0/scale": np.zeros((2, 16))})
  with pytest.raises(pretrained.PretrainedError, match="big_vision layout.*'Fancy_0'"):
    pretrained.load(str(tmp_path / "bv.npz"))
