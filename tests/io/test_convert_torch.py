"""The PyTorch checkpoint converter: wrappers, prefixes, refusals; skipped without PyTorch."""

import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from vit_jax.io import convert_torch


def test_without_pytorch_it_says_how_to_install_it(tmp_path, monkeypatch, capsys):
  src = tmp_path / "model.pth"
  src.write_bytes(b"not used")
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
  assert convert_torch.main([str(src), str(tmp_path / "out.safetensors")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "pip install torch" in err
  assert not (tmp_path / "out.safetensors").exists()


@pytest.fixture
def torch():
  return pytest.importorskip("torch")


def tensors(torch):
  gen = torch.Generator().manual_seed(0)
  return {"blocks.0.attn.qkv.weight": torch.randn(6, 2, generator=gen),
          "cls_token": torch.randn(1, 1, 2, generator=gen).half(),
          "head.bias": torch.randn(3, generator=gen)}


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module_prefix"])
def test_the_tensors_are_written_under_their_names(torch, tmp_path, wrap):
  state = tensors(torch)
  saved = {"plain": state, "state_dict": {"state_dict": state, "epoch": 3},
           "model": {"model": state},
           "module_prefix": {f"module.{k}": v for k, v in state.items()}}[wrap]
  torch.save(saved, tmp_path / "in.pth")
  out = tmp_path / "out.safetensors"
  assert convert_torch.main([str(tmp_path / "in.pth"), str(out)]) == 0
  got = load_file(str(out))
  assert sorted(got) == sorted(state)
  for key, value in state.items():
    assert got[key].dtype == np.float32  # half precision is widened
    np.testing.assert_array_equal(got[key], value.float().numpy())


def test_ema_weights_are_taken_when_asked(torch, tmp_path, capsys):
  state = tensors(torch)
  ema = {k: v + 1 for k, v in state.items()}
  torch.save({"state_dict": state, "state_dict_ema": ema}, tmp_path / "in.pth")
  out = tmp_path / "out.safetensors"
  assert convert_torch.main([str(tmp_path / "in.pth"), str(out), "--use_ema"]) == 0
  np.testing.assert_array_equal(load_file(str(out))["head.bias"], ema["head.bias"].numpy())
  torch.save({"state_dict": state}, tmp_path / "plain.pth")
  capsys.readouterr()
  assert convert_torch.main([str(tmp_path / "plain.pth"), str(tmp_path / "b.safetensors"),
                             "--use_ema"]) == 2
  assert "no state_dict_ema" in capsys.readouterr().err


def test_bad_inputs_are_one_line_errors_and_nothing_is_overwritten(torch, tmp_path, capsys):
  out = tmp_path / "out.safetensors"
  out.write_bytes(b"keep me")
  torch.save(tensors(torch), tmp_path / "in.pth")
  (tmp_path / "junk.pth").write_bytes(b"\x00garbage")
  cases = [
      ([str(tmp_path / "in.pth"), str(out)], "exists; choose another output or pass --overwrite"),
      ([str(tmp_path / "missing.pth"), str(tmp_path / "a.safetensors")], "does not exist"),
      ([str(tmp_path / "in.pth"), str(tmp_path / "a.npz")], "does not end in .safetensors"),
      ([str(tmp_path / "junk.pth"), str(tmp_path / "a.safetensors")], "cannot be read"),
  ]
  for argv, expected in cases:
    assert convert_torch.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and err.count("\n") == 0, err
  assert out.read_bytes() == b"keep me"
  assert not (tmp_path / "a.safetensors").exists()
  assert convert_torch.main([str(tmp_path / "in.pth"), str(out), "--overwrite"]) == 0
  assert sorted(load_file(str(out))) == sorted(tensors(torch))
