"""The PyTorch state-dict naming rule of T2T-ViT and TNT, both ways."""

import numpy as np
import pytest

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
