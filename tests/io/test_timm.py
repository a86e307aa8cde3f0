"""timm ViT `.safetensors` files as `init_from`: layout, numerics against timm's forward, errors.

The truth here is independent of vit_jax.io.timm: a hand-written writer of timm's layout and a
NumPy forward pass of timm's VisionTransformer (timm/models/vision_transformer.py) computed
straight from the state dict.
"""

import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import safetensors.numpy
from flax import traverse_util

from configs import quickstart
from vit_jax import configuration
from vit_jax.io import pretrained
from vit_jax.models.vit import VisionTransformer
from vit_jax.train import loop

ROOT = Path(__file__).resolve().parents[2]
SIZE = dict(patch_size=4, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32, num_classes=5)
IMAGE = (2, 12, 12, 3)  # a 3x3 patch grid
BLOCK = "Transformer/encoderblock_{}"
ATTENTION = "MultiHeadDotProductAttention_1"


def our_model(pool, representation_size=0, **kwargs):
  """A tiny ViT with exact GELU (what a timm file implies) and distinct random parameters."""
  model = VisionTransformer(**SIZE, pool=pool, representation_size=representation_size,
                            gelu="exact", **kwargs)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *IMAGE[1:])))["params"]
  rng = np.random.default_rng(1)
  return model, jax.tree.map(lambda s: (0.2 * rng.normal(size=s.shape)).astype(np.float32),
                             shapes)


def write_timm(path, params):
  """Our parameters in timm's layout: Linear (out, in), conv (D, C, p, p), fused qkv."""
  f = traverse_util.flatten_dict(params, sep="/")
  width = f["embedding/kernel"].shape[-1]
  state = {"patch_embed.proj.weight": f["embedding/kernel"].transpose(3, 2, 0, 1),
           "patch_embed.proj.bias": f["embedding/bias"],
           "pos_embed": f["Transformer/posembed_input/pos_embedding"],
           "norm.weight": f["Transformer/encoder_norm/scale"],
           "norm.bias": f["Transformer/encoder_norm/bias"],
           "head.weight": f["head/kernel"].T, "head.bias": f["head/bias"]}
  if "cls" in f:
    state["cls_token"] = f["cls"]
  if "pre_logits/kernel" in f:
    state["pre_logits.fc.weight"] = f["pre_logits/kernel"].T
    state["pre_logits.fc.bias"] = f["pre_logits/bias"]
  for i in range(SIZE["num_layers"]):
    ours, theirs = BLOCK.format(i), f"blocks.{i}"
    for norm, name in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
      state[f"{theirs}.{norm}.weight"] = f[f"{ours}/{name}/scale"]
      state[f"{theirs}.{norm}.bias"] = f[f"{ours}/{name}/bias"]
    qkv = [f"{ours}/{ATTENTION}/{n}" for n in ("query", "key", "value")]
    # Kernel (D, H, D/H) -> rows h * D/H + j of a (D, D) weight, as timm's _load_weights does.
    state[f"{theirs}.attn.qkv.weight"] = np.concatenate(
        [f[f"{q}/kernel"].reshape(width, width).T for q in qkv])
    state[f"{theirs}.attn.qkv.bias"] = np.concatenate([f[f"{q}/bias"].reshape(-1) for q in qkv])
    state[f"{theirs}.attn.proj.weight"] = f[f"{ours}/{ATTENTION}/out/kernel"].reshape(
        width, width).T
    state[f"{theirs}.attn.proj.bias"] = f[f"{ours}/{ATTENTION}/out/bias"]
    for fc, dense in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
      state[f"{theirs}.mlp.{fc}.weight"] = f[f"{ours}/MlpBlock_3/{dense}/kernel"].T
      state[f"{theirs}.mlp.{fc}.bias"] = f[f"{ours}/MlpBlock_3/{dense}/bias"]
  state = {k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}
  safetensors.numpy.save_file(state, str(path))
  return state


def images(seed=0):
  return np.random.default_rng(seed).normal(size=IMAGE).astype(np.float32)


def loaded_params(path):
  source = pretrained.load(str(path))
  return source, source.with_heads(SIZE["num_heads"]).params


@pytest.mark.parametrize("pool", ["token", "gap"])
def test_a_timm_file_gives_the_parameters_and_logits_of_the_model_it_came_from(tmp_path, pool):
  model, params = our_model(pool)
  write_timm(tmp_path / "vit.safetensors", params)
  source, loaded = loaded_params(tmp_path / "vit.safetensors")
  assert source.grid == (3, 3) and source.gelu == "exact" and not source.heads_recorded
  want, got = traverse_util.flatten_dict(params), traverse_util.flatten_dict(loaded)
  assert sorted(got) == sorted(want)
  for key, value in want.items():
    assert got[key].dtype == np.float32, key
    np.testing.assert_array_equal(got[key], value, err_msg="/".join(key))
  x = images()
  np.testing.assert_array_equal(model.apply({"params": loaded}, x),
                                model.apply({"params": params}, x))


def layer_norm(x, weight, bias):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * weight + bias


def erf_gelu(x):
  return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def timm_forward(state, x, num_heads):
  """timm's VisionTransformer.forward in float64 NumPy, from its state dict; x is (B, H, W, C)."""
  s = {k: v.astype(np.float64) for k, v in state.items()}
  conv = s["patch_embed.proj.weight"]
  width, channels, p, _ = conv.shape
  b, h, w, _ = x.shape
  # The strided convolution: each patch flattened in the kernel's (C, p, p) order.
  patches = x.reshape(b, h // p, p, w // p, p, channels).transpose(0, 1, 3, 5, 2, 4)
  x = patches.reshape(b, -1, channels * p * p) @ conv.reshape(width, -1).T
  x = x + s["patch_embed.proj.bias"]
  cls = np.broadcast_to(s["cls_token"], (b, 1, width)) if "cls_token" in s else None
  if cls is not None and s["pos_embed"].shape[1] == x.shape[1]:  # no_embed_class
    x = np.concatenate([cls, x + s["pos_embed"]], axis=1)
  else:
    x = (x if cls is None else np.concatenate([cls, x], axis=1)) + s["pos_embed"]
  n, head_dim = x.shape[1], width // num_heads
  for i in range(sum(k.endswith("attn.qkv.weight") for k in s)):
    blk = {k.removeprefix(f"blocks.{i}."): v for k, v in s.items() if k.startswith(f"blocks.{i}.")}
    y = layer_norm(x, blk["norm1.weight"], blk["norm1.bias"])
    qkv = (y @ blk["attn.qkv.weight"].T + blk["attn.qkv.bias"]).reshape(
        b, n, 3, num_heads, head_dim).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv
    logits = q @ k.swapaxes(-1, -2) * head_dim ** -0.5
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    y = (weights @ v).transpose(0, 2, 1, 3).reshape(b, n, width)
    x = x + y @ blk["attn.proj.weight"].T + blk["attn.proj.bias"]
    y = layer_norm(x, blk["norm2.weight"], blk["norm2.bias"])
    y = erf_gelu(y @ blk["mlp.fc1.weight"].T + blk["mlp.fc1.bias"])
    x = x + y @ blk["mlp.fc2.weight"].T + blk["mlp.fc2.bias"]
  x = layer_norm(x, s["norm.weight"], s["norm.bias"])
  x = x[:, 0] if cls is not None else x.mean(1)  # global_pool 'token' or 'avg'
  if "pre_logits.fc.weight" in s:
    x = np.tanh(x @ s["pre_logits.fc.weight"].T + s["pre_logits.fc.bias"])
  return x @ s["head.weight"].T + s["head.bias"]


def random_timm_state(pool, representation_size=0, no_embed_class=False, seed=3):
  """A state dict in timm's layout with random values, not derived from any model of ours."""
  rng = np.random.default_rng(seed)
  d, m, p, k = SIZE["hidden_size"], SIZE["mlp_dim"], SIZE["patch_size"], SIZE["num_classes"]
  rows = 9 + (pool == "token" and not no_embed_class)
  shapes = {"patch_embed.proj.weight": (d, 3, p, p), "patch_embed.proj.bias": (d,),
            "pos_embed": (1, rows, d), "norm.weight": (d,), "norm.bias": (d,),
            "head.weight": (k, representation_size or d), "head.bias": (k,)}
  if pool == "token":
    shapes["cls_token"] = (1, 1, d)
  if representation_size:
    shapes.update({"pre_logits.fc.weight": (representation_size, d),
                   "pre_logits.fc.bias": (representation_size,)})
  for i in range(SIZE["num_layers"]):
    shapes.update({f"blocks.{i}.{name}": shape for name, shape in (
        ("norm1.weight", (d,)), ("norm1.bias", (d,)), ("attn.qkv.weight", (3 * d, d)),
        ("attn.qkv.bias", (3 * d,)), ("attn.proj.weight", (d, d)), ("attn.proj.bias", (d,)),
        ("norm2.weight", (d,)), ("norm2.bias", (d,)), ("mlp.fc1.weight", (m, d)),
        ("mlp.fc1.bias", (m,)), ("mlp.fc2.weight", (d, m)), ("mlp.fc2.bias", (d,)))})
  state = {}
  for key, shape in shapes.items():
    scale = 0.5 if key.endswith((".proj.weight", "qkv.weight", "fc1.weight")) else 0.2
    state[key] = (scale * rng.normal(size=shape)).astype(np.float32)
    if "norm" in key and key.endswith("weight"):
      state[key] += 1.0
  return state


@pytest.mark.parametrize("pool, representation_size, no_embed_class", [
    ("token", 0, False), ("gap", 0, False), ("token", 8, False), ("token", 0, True)])
def test_our_logits_match_a_numpy_forward_pass_of_timms_vit(tmp_path, pool, representation_size,
                                                            no_embed_class):
  state = random_timm_state(pool, representation_size, no_embed_class)
  safetensors.numpy.save_file(state, str(tmp_path / "vit.safetensors"))
  _, params = loaded_params(tmp_path / "vit.safetensors")
  model = VisionTransformer(**SIZE, pool=pool, representation_size=representation_size,
                            gelu="exact")
  x = images(1)
  want = timm_forward(state, x.astype(np.float64), SIZE["num_heads"])
  assert np.abs(want).max() > 0.5  # logits far from zero: the comparison means something
  np.testing.assert_allclose(model.apply({"params": params}, x), want, atol=1e-4, rtol=1e-4)


def test_a_timm_vit_itself_gives_our_logits(tmp_path):
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  safetensors_torch = pytest.importorskip("safetensors.torch")
  theirs = timm.models.vision_transformer.VisionTransformer(
      img_size=IMAGE[1], patch_size=SIZE["patch_size"], embed_dim=SIZE["hidden_size"],
      depth=SIZE["num_layers"], num_heads=SIZE["num_heads"],
      mlp_ratio=SIZE["mlp_dim"] / SIZE["hidden_size"], num_classes=SIZE["num_classes"]).eval()
  with torch.no_grad():
    for tensor in theirs.parameters():
      tensor.normal_(0, 0.2)
  safetensors_torch.save_file(theirs.state_dict(), str(tmp_path / "vit.safetensors"))
  _, params = loaded_params(tmp_path / "vit.safetensors")
  x = images(2)
  with torch.no_grad():
    want = theirs(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  model = VisionTransformer(**SIZE, gelu="exact")
  np.testing.assert_allclose(model.apply({"params": params}, x), want, atol=1e-4, rtol=1e-4)


def refused(path, *patterns):
  with pytest.raises(pretrained.PretrainedError) as info:
    pretrained.load(str(path))
  message = str(info.value)
  assert "\n" not in message and str(path) in message, message
  for pattern in patterns:
    assert pattern in message, message
  return message


def test_a_file_of_another_architecture_names_missing_and_unexpected_keys(tmp_path):
  resnet = {name: np.zeros(shape, np.float32) for name, shape in (
      ("conv1.weight", (8, 3, 7, 7)), ("bn1.weight", (8,)), ("bn1.bias", (8,)),
      ("layer1.0.conv1.weight", (8, 8, 3, 3)), ("layer1.0.bn1.weight", (8,)),
      ("fc.weight", (5, 8)), ("fc.bias", (5,)))}
  safetensors.numpy.save_file(resnet, str(tmp_path / "resnet.safetensors"))
  refused(tmp_path / "resnet.safetensors", "not a timm VisionTransformer",
          "missing patch_embed.proj.weight, patch_embed.proj.bias, blocks.0.norm1.weight",
          "unexpected bn1.bias, bn1.weight, conv1.weight, fc.bias (and 3 more)")


def test_unsupported_timm_options_are_named(tmp_path):
  state = random_timm_state("gap")
  state["fc_norm.weight"], state["fc_norm.bias"] = state.pop("norm.weight"), state.pop("norm.bias")
  state["blocks.0.ls1.gamma"] = np.ones(SIZE["hidden_size"], np.float32)
  safetensors.numpy.save_file(state, str(tmp_path / "avg.safetensors"))
  refused(tmp_path / "avg.safetensors", "missing norm.weight, norm.bias",
          "unexpected blocks.0.ls1.gamma, fc_norm.bias, fc_norm.weight",
          "a LayerNorm after pooling (fc_norm), layer scale: not part of this ViT")


def test_a_wrong_shape_is_named(tmp_path):
  state = random_timm_state("token")
  state["blocks.1.mlp.fc2.weight"] = state["blocks.1.mlp.fc2.weight"][:, :-1].copy()
  safetensors.numpy.save_file(state, str(tmp_path / "vit.safetensors"))
  refused(tmp_path / "vit.safetensors", "disagree with width 16",
          "blocks.1.mlp.fc2.weight (16, 31) (expected (16, 32))")


def test_a_file_that_is_not_safetensors_or_not_there_is_refused(tmp_path):
  with open(tmp_path / "params.safetensors", "wb") as f:
    np.savez(f, x=np.zeros(3))  # an .npz under the wrong name
  refused(tmp_path / "params.safetensors", "is not a readable .safetensors file",
          "give a .safetensors file of a timm ViT")
  (tmp_path / "empty.safetensors").write_bytes(b"")
  refused(tmp_path / "empty.safetensors", "is not a readable .safetensors file")
  refused(tmp_path / "nowhere.safetensors",
          "does not exist; give a .safetensors file of a timm ViT")


def test_heads_that_do_not_divide_the_width_are_refused(tmp_path):
  safetensors.numpy.save_file(random_timm_state("token"), str(tmp_path / "vit.safetensors"))
  with pytest.raises(ValueError, match="attention width 16 of the timm file does not split into "
                                       "3 heads"):
    pretrained.load(str(tmp_path / "vit.safetensors")).with_heads(3)


@pytest.mark.slow
def test_the_command_line_refuses_a_file_of_another_architecture(tmp_path):
  bad = tmp_path / "resnet.safetensors"
  safetensors.numpy.save_file({"conv1.weight": np.zeros((8, 1, 7, 7), np.float32)}, str(bad))
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "vit_jax.main", "--config", "configs/quickstart.py", "--workdir",
       str(workdir), f"--config.init_from={bad}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "PYTHONUNBUFFERED": "1"})
  assert result.returncode == 2, result.stderr
  lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and "missing patch_embed.proj.weight" in lines[0], result.stderr
  assert "unexpected conv1.weight" in lines[0]
  assert not workdir.exists()


@pytest.mark.parametrize("gelu, warned", [("tanh", True), ("exact", False)])
def test_starting_from_a_timm_file_warns_unless_gelu_is_exact(tmp_path, caplog, gelu, warned):
  model, params = our_model("token")
  write_timm(tmp_path / "vit.safetensors", params)
  config = ml_collections.ConfigDict({
      "image_size": IMAGE[1], "posemb_resample": "bilinear",
      "model": {"name": "ViT-B/16", "patch_size": SIZE["patch_size"],
                "num_heads": SIZE["num_heads"], "gelu": gelu}})
  with caplog.at_level(logging.INFO, logger="vit_jax"):
    started = loop.initial_params(config, pretrained.load(str(tmp_path / "vit.safetensors")),
                                  jax.tree.map(np.zeros_like, params))
  for a, b in zip(jax.tree.leaves(started), jax.tree.leaves(params), strict=True):
    np.testing.assert_array_equal(a, b)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert warnings == ([f"{tmp_path}/vit.safetensors was trained with the exact GELU but "
                       "model.gelu is tanh; set --config.model.gelu=exact to compute what it was "
                       "trained to"] if warned else [])


def test_a_timm_file_is_checked_against_the_model_like_any_source(tmp_path):
  path = str(tmp_path / "vit.safetensors")
  safetensors.numpy.save_file(random_timm_state("gap"), path)
  c = quickstart.get_config()
  c.image_size, c.image_channels = IMAGE[1], IMAGE[3]
  c.model.update(pool="gap", **{k: v for k, v in SIZE.items() if k != "num_classes"})
  c = configuration.resolve_data(configuration.resolve_model(c), num_train=4000,
                                 num_classes=SIZE["num_classes"])
  source = pretrained.load(path)
  loop.check_initial_params(c, source)
  for key, value, message in (
      ("num_layers", 3, "no parameter Transformer/encoderblock_2/LayerNorm_0/bias"),
      ("mlp_dim", 64, "MlpBlock_3/Dense_0/bias has shape (32,) in the checkpoint but (64,)")):
    changed = c.copy_and_resolve_references()
    changed.model[key] = value
    with pytest.raises(ValueError, match=re.escape(message)):
      loop.check_initial_params(changed, source)
