"""The PyTorch state-dict naming rule of T2T-ViT and TNT, both ways."""

import numpy as np
import pytest
from flax import traverse_util

from vit_jax.io import torch_state


def state():
  rng = np.random.default_rng(0)
  return {
      "tokens_to_token.attention1.kqv.weight": rng.normal(size=(6, 4)),
      "tokens_to_token.attention1.kqv.bias": rng.normal(size=(6,)),
      "tokens_to_token.attention1.w": rng.normal(size=(3, 2)),
      "pixel_embed.proj.weight": rng.normal(size=(5, 3, 7, 2)),
      "blocks.10.norm1.weight": rng.normal(size=(4,)),
      "blocks.10.norm1.bias": rng.normal(size=(4,)),
      "blocks.2.attn.qkv.weight": rng.normal(size=(12, 4)),
      "cls_token": rng.normal(size=(1, 1, 4)),
      "pixel_pos": rng.normal(size=(1, 3, 2, 2)),
  }


def test_each_kind_of_tensor_gets_the_flax_name_and_layout():
  s = state()
  params = torch_state.to_flax(s)
  att = params["tokens_to_token"]["attention1"]
  np.testing.assert_array_equal(att["kqv"]["kernel"], s["tokens_to_token.attention1.kqv.weight"].T)
  np.testing.assert_array_equal(att["kqv"]["bias"], s["tokens_to_token.attention1.kqv.bias"])
  np.testing.assert_array_equal(att["w"], s["tokens_to_token.attention1.w"])  # kept as is
  conv = params["pixel_embed"]["proj"]["kernel"]
  assert conv.shape == (7, 2, 3, 5)  # (kh, kw, in, out)
  np.testing.assert_array_equal(conv[6, 1, 2, 4], s["pixel_embed.proj.weight"][4, 2, 6, 1])
  np.testing.assert_array_equal(params["blocks_10"]["norm1"]["scale"], s["blocks.10.norm1.weight"])
  assert params["blocks_2"]["attn"]["qkv"]["kernel"].shape == (4, 12)
  assert params["cls_token"].shape == (1, 1, 4) and params["pixel_pos"].shape == (1, 3, 2, 2)


def test_from_flax_inverts_to_flax():
  s = state()
  back = torch_state.from_flax(torch_state.to_flax(s))
  assert sorted(back) == sorted(s)
  for key, value in s.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_a_weight_of_another_rank_is_named():
  with pytest.raises(ValueError, match="conv1d.weight of shape"):
    torch_state.to_flax({"conv1d.weight": np.zeros((2, 3, 4))})


def test_the_family_of_a_state_dict_and_its_ignored_tensors():
  assert torch_state.family_of_state({"tokens_to_token.project.weight": 0}) == "T2T-ViT"
  assert torch_state.family_of_state({"pixel_embed.proj.weight": 0, "outer_tokens": 0}) == "TNT"
  assert torch_state.family_of_state({"patch_embed.proj.weight": 0}) is None
  assert torch_state.without_ignored({"outer_tokens": 0, "norm.weight": 1}, "TNT") == {
      "norm.weight": 1}


def authors_tnt_state():
  """A one-block TNT state dict under the names and shapes of the TNT authors' module
  (tnt_pytorch/tnt.py): 8x8 images, 4x4 patches, inner stride 2 (2x2 words of width 6), width 8."""
  shapes = {"patch_embed.proj.weight": (6, 3, 7, 7), "patch_embed.proj.bias": (6,),
            "proj_norm1.weight": (24,), "proj_norm1.bias": (24,), "proj.weight": (8, 24),
            "proj.bias": (8,), "proj_norm2.weight": (8,), "proj_norm2.bias": (8,),
            "cls_token": (1, 1, 8), "outer_tokens": (1, 4, 8), "outer_pos": (1, 5, 8),
            "inner_pos": (1, 4, 6), "norm.weight": (8,), "norm.bias": (8,),
            "head.weight": (5, 8), "head.bias": (5,)}
  block = {"inner_norm1": 6, "inner_norm2": 6, "proj_norm1": 24, "proj_norm2": 8,
           "outer_norm1": 8, "outer_norm2": 8}
  for name, width in block.items():
    shapes |= {f"blocks.0.{name}.weight": (width,), f"blocks.0.{name}.bias": (width,)}
  for attn, width in (("inner_attn", 6), ("outer_attn", 8)):
    shapes |= {f"blocks.0.{attn}.qk.weight": (2 * width, width),
               f"blocks.0.{attn}.v.weight": (width, width),
               f"blocks.0.{attn}.proj.weight": (width, width),
               f"blocks.0.{attn}.proj.bias": (width,)}
  for mlp, width in (("inner_mlp", 6), ("outer_mlp", 8)):
    shapes |= {f"blocks.0.{mlp}.fc1.weight": (4 * width, width),
               f"blocks.0.{mlp}.fc1.bias": (4 * width,),
               f"blocks.0.{mlp}.fc2.weight": (width, 4 * width),
               f"blocks.0.{mlp}.fc2.bias": (width,)}
  shapes["blocks.0.proj.weight"] = (8, 24)  # inner-to-outer, no bias
  rng = np.random.default_rng(0)
  return {key: rng.normal(size=shape) for key, shape in shapes.items()}


def shapes(tree):
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}


def test_the_tnt_authors_names_become_the_models_parameters():
  import jax
  import jax.numpy as jnp

  from vit_jax.models import tnt

  state = authors_tnt_state()
  renamed = torch_state.from_tnt_authors(state)
  assert torch_state.family_of_state(renamed) == "TNT"
  params = torch_state.to_flax(torch_state.without_ignored(renamed, "TNT"))
  model = tnt.TNT(num_classes=5, patch_size=4, inner_dim=6, hidden_size=8, num_layers=1,
                  inner_heads=2, num_heads=2, inner_mlp_dim=24, mlp_dim=32, inner_stride=2)
  want = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
  assert shapes(params) == shapes(want)
  # inner_pos (1, h*w, c) row-major over the 2x2 words -> pixel_pos (1, c, h, w).
  for word, (row, col) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
    np.testing.assert_array_equal(params["pixel_pos"][0, :, row, col], state["inner_pos"][0, word])
  np.testing.assert_array_equal(params["patch_pos"], state["outer_pos"])
  np.testing.assert_array_equal(params["blocks_0"]["attn_out"]["qk"]["kernel"],
                                state["blocks.0.outer_attn.qk.weight"].T)
  other = state | {"inner_pos": np.zeros((1, 5, 6))}
  with pytest.raises(ValueError, match=r"inner_pos of shape \(1, 5, 6\)"):
    torch_state.from_tnt_authors(other)
  timm_like = {"pixel_embed.proj.weight": 0, "patch_pos": 1}
  assert torch_state.from_tnt_authors(timm_like) == timm_like
