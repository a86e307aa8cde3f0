"""TNT: exact parameter counts, the pixel embedding, attention, block and model against NumPy."""

import math

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.io import torch_state
from vit_jax.models import tnt

# 14x14 images: 2x2 patches of 7x7 pixels, each 4x4 inner tokens (stride 2) of width 4.
TINY = dict(num_classes=5, patch_size=7, inner_dim=4, hidden_size=8, num_layers=2, inner_heads=2,
            num_heads=2, inner_mlp_dim=8, mlp_dim=16, inner_stride=2)
EPS = 1e-5
_erf = np.vectorize(math.erf)


def section(name, **overrides):
  return {"name": name, **tnt.PRESETS.get(name, {}), **tnt.DEFAULTS, **overrides}


def random_params(module, *args, seed=0, scale=0.5):
  """Parameters of `module` (called on `args`) drawn in NumPy, float64; shapes from eval_shape."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: rng.normal(0, scale, a.shape), shapes)


def images_of(seed, shape=(2, 14, 14, 3)):
  return np.random.default_rng(seed).uniform(-1, 1, shape)


@jax.jit
def tiny_outputs(params, images):
  """The outputs of the TINY model and each of its submodules (one compile for several tests)."""
  _, state = tnt.TNT(**TINY).apply({"params": params}, images.astype(jnp.float32),
                                   capture_intermediates=True, mutable=["intermediates"])
  return state["intermediates"]


def np_layernorm(x, p):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(x.var(-1, keepdims=True) + EPS) * p["scale"] + p["bias"]


def np_linear(x, p):
  return x @ p["kernel"] + (p["bias"] if "bias" in p else 0.0)


def np_mlp(x, p):
  h = np_linear(x, p["fc1"])
  return np_linear(0.5 * h * (1 + _erf(h / np.sqrt(2))), p["fc2"])


def np_attention(x, p, heads):
  """Per head: softmax(q_h k_h^T / sqrt(hd)) v_h, with q, k the two halves of `qk`."""
  width = x.shape[-1]
  hd = width // heads
  qk, v = x @ p["qk"]["kernel"], x @ p["v"]["kernel"]
  outs = []
  for h in range(heads):
    q, k = qk[..., h * hd:(h + 1) * hd], qk[..., width + h * hd:width + (h + 1) * hd]
    logits = q @ np.swapaxes(k, -1, -2) / np.sqrt(hd)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    outs.append(w / w.sum(-1, keepdims=True) @ v[..., h * hd:(h + 1) * hd])
  return np_linear(np.concatenate(outs, -1), p["proj"])


def np_flatten_pixel_major(inner, batch):
  """(B*N, m, c) -> (B, N, m*c) with feature k*c + ch holding inner token k's channel ch."""
  bn, m, c = inner.shape
  out = np.zeros((batch, bn // batch, m * c))
  for i in range(bn):
    for k in range(m):
      out[i // (bn // batch), i % (bn // batch), k * c:(k + 1) * c] = inner[i, k]
  return out


def np_block(inner, outer, p, inner_heads, heads):
  inner = inner + np_attention(np_layernorm(inner, p["norm_in"]), p["attn_in"], inner_heads)
  inner = inner + np_mlp(np_layernorm(inner, p["norm_mlp_in"]), p["mlp_in"])
  flat = np_flatten_pixel_major(inner, outer.shape[0])
  update = np_layernorm(np_layernorm(flat, p["norm1_proj"]) @ p["proj"]["kernel"], p["norm2_proj"])
  outer = np.concatenate([outer[:, :1], outer[:, 1:] + update], axis=1)
  outer = outer + np_attention(np_layernorm(outer, p["norm_out"]), p["attn_out"], heads)
  return inner, outer + np_mlp(np_layernorm(outer, p["norm_mlp"]), p["mlp"])


def np_pixel_embed(images, p, patch, stride):
  """Each patch convolved on its own: taps outside the patch read zeros (its padding)."""
  kernel, bias = p["kernel"], p["bias"]
  b, h, w, _ = images.shape
  side = -(-patch // stride)
  out = []
  for n in range(b):
    for i in range(h // patch):
      for j in range(w // patch):
        tokens = np.zeros((side, side, kernel.shape[-1]))
        for u in range(side):
          for v in range(side):
            acc = bias.copy()
            for ky in range(7):
              for kx in range(7):
                r, c = u * stride + ky - 3, v * stride + kx - 3
                if 0 <= r < patch and 0 <= c < patch:
                  acc = acc + images[n, i * patch + r, j * patch + c] @ kernel[ky, kx]
            tokens[u, v] = acc
        out.append(tokens)
  return np.stack(out)


def test_parameter_counts_are_the_published_ones():
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  for name, count in (("TNT-S", 23_768_584), ("TNT-B", 65_428_680)):
    module = tnt.build(section(name), 1000)
    shapes = jax.eval_shape(module.init, jax.random.key(0), images)["params"]
    assert sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes)) == count, name


def test_parameter_names_are_timms_state_dict_keys():
  params = random_params(tnt.TNT(**{**TINY, "num_layers": 1}), jnp.zeros((1, 14, 14, 3)))
  shapes = {k: v.shape for k, v in torch_state.from_flax(params).items()}
  # timm's TNT(img_size=14, patch_size=7, embed_dim=8, inner_dim=4, depth=1, num_heads_inner=2,
  # num_heads_outer=2, first_stride=2, num_classes=5): its state dict, written out.
  block = {"norm_in": 4, "norm_mlp_in": 4, "norm1_proj": 64, "norm2_proj": 8, "norm_out": 8,
           "norm_mlp": 8}
  want = {f"blocks.0.{n}.{t}": (w,) for n, w in block.items() for t in ("weight", "bias")}
  for attn, w in (("attn_in", 4), ("attn_out", 8)):
    want |= {f"blocks.0.{attn}.qk.weight": (2 * w, w), f"blocks.0.{attn}.v.weight": (w, w),
             f"blocks.0.{attn}.proj.weight": (w, w), f"blocks.0.{attn}.proj.bias": (w,)}
  for mlp, w, hidden in (("mlp_in", 4, 8), ("mlp", 8, 16)):
    want |= {f"blocks.0.{mlp}.fc1.weight": (hidden, w), f"blocks.0.{mlp}.fc1.bias": (hidden,),
             f"blocks.0.{mlp}.fc2.weight": (w, hidden), f"blocks.0.{mlp}.fc2.bias": (w,)}
  want |= {"blocks.0.proj.weight": (8, 64), "pixel_embed.proj.weight": (4, 3, 7, 7),
           "pixel_embed.proj.bias": (4,), "norm1_proj.weight": (64,), "norm1_proj.bias": (64,),
           "proj.weight": (8, 64), "proj.bias": (8,), "norm2_proj.weight": (8,),
           "norm2_proj.bias": (8,), "cls_token": (1, 1, 8), "patch_pos": (1, 5, 8),
           "pixel_pos": (1, 4, 4, 4), "norm.weight": (8,), "norm.bias": (8,),
           "head.weight": (5, 8), "head.bias": (5,)}
  assert shapes == want


def test_initialisation_is_timms_with_a_zero_head():
  model = tnt.TNT(**{**TINY, "num_layers": 1, "hidden_size": 32, "head_bias_init": -2.0})
  key = jax.random.key(0, impl="rbg")  # compiles faster than threefry; the initialisers are tested
  params = jax.device_get(jax.jit(model.init)(key, jnp.zeros((1, 14, 14, 3)))["params"])
  state = torch_state.from_flax(params)
  assert not np.any(state["head.weight"]) and np.all(state["head.bias"] == -2.0)
  # timm: trunc_normal(std .02) for Linear weights, the class token and both position tables;
  # zero Linear biases; LayerNorms at identity; PyTorch's default Conv2d init for the pixel conv.
  normal = [v for k, v in state.items() if k.endswith("cls_token") or k.endswith("_pos") or (
      k.endswith(".weight") and v.ndim == 2 and not k.startswith("head"))]
  assert np.std(np.concatenate([v.ravel() for v in normal])) == pytest.approx(0.02, rel=0.05)
  linear_biases = [k for k in state if k.endswith(".bias") and k[:-5] + ".weight" in state
                   and state[k[:-5] + ".weight"].ndim == 2 and not k.startswith("head")]
  assert len(linear_biases) == 7 and not any(np.any(state[k]) for k in linear_biases)
  norms = [k[:-7] for k, v in state.items() if k.endswith(".weight") and v.ndim == 1]
  assert len(norms) == 9 and all(np.all(state[f"{k}.weight"] == 1) for k in norms)
  assert not any(np.any(state[f"{k}.bias"]) for k in norms)
  bound = 1 / np.sqrt(3 * 7 * 7)
  for name in ("pixel_embed.proj.weight", "pixel_embed.proj.bias"):
    assert np.abs(state[name]).max() <= bound and np.abs(state[name]).max() > bound / 2


def test_pixel_embedding_convolves_each_patch_with_zeros_beyond_its_border():
  images = images_of(1)
  params = random_params(tnt.TNT(**TINY), jnp.zeros((1, 14, 14, 3)))
  got = tiny_outputs(params, images)["pixel_embed"]["__call__"][0]  # (B*N, 4, 4, c)
  want = np_pixel_embed(images, params["pixel_embed"]["proj"], 7, 2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # A convolution over the whole image agrees on the first patch where its taps stay inside the
  # image's padding or the patch, and reads the neighbouring patches elsewhere.
  conv = params["pixel_embed"]["proj"]
  whole = np.asarray(jax.lax.conv_general_dilated(
      images, conv["kernel"], (2, 2), ((3, 3), (3, 3)),
      dimension_numbers=("NHWC", "HWIO", "NHWC")))[0, :4, :4] + conv["bias"]
  np.testing.assert_allclose(whole[0, 0], want[0, 0, 0], rtol=1e-5, atol=1e-5)
  assert not np.allclose(whole[3, 3], want[0, 3, 3], atol=1e-2)


def test_inner_attention_has_separate_qk_and_v_and_matches_the_definition():
  attn = tnt.Attention(num_heads=2)
  x = np.random.default_rng(2).normal(size=(3, 16, 4))
  params = random_params(attn, jnp.zeros((1, 16, 4)), False)
  assert set(params["qk"]) == {"kernel"} and set(params["v"]) == {"kernel"}  # no biases
  assert params["qk"]["kernel"].shape == (4, 8) and set(params["proj"]) == {"kernel", "bias"}
  got = attn.apply({"params": params}, jnp.asarray(x, jnp.float32), False)
  np.testing.assert_allclose(got, np_attention(x, params, 2), rtol=1e-5, atol=1e-5)


def test_stem_projects_inner_tokens_flattened_pixel_major():
  images = images_of(3)
  params = random_params(tnt.TNT(**TINY), jnp.zeros((1, 14, 14, 3)), seed=4)
  got = tiny_outputs(params, images)["norm2_proj"]["__call__"][0]  # (B, N, d), no class token
  inner = np_pixel_embed(images, params["pixel_embed"]["proj"], 7, 2)
  inner = (inner + params["pixel_pos"].transpose(0, 2, 3, 1)).reshape(8, 16, 4)
  stem = lambda flat: np_layernorm(np_linear(np_layernorm(flat, params["norm1_proj"]),  # noqa: E731
                                             params["proj"]), params["norm2_proj"])
  np.testing.assert_allclose(got, stem(np_flatten_pixel_major(inner, 2)), rtol=1e-4, atol=1e-4)
  channel_major = inner.transpose(0, 2, 1).reshape(2, 4, 64)
  assert not np.allclose(got, stem(channel_major), atol=1e-2)


def test_block_matches_the_definition():
  block = tnt.Block(inner_heads=2, num_heads=2, inner_mlp_dim=8, mlp_dim=16)
  rng = np.random.default_rng(5)
  inner, outer = rng.normal(size=(8, 16, 4)), rng.normal(size=(2, 5, 8))
  params = random_params(block, jnp.zeros((8, 16, 4)), jnp.zeros((2, 5, 8)), False, seed=6)
  assert set(params["proj"]) == {"kernel"}  # the inner-to-outer projection has no bias
  got_inner, got_outer = jax.jit(block.apply, static_argnums=3)(
      {"params": params}, jnp.asarray(inner, jnp.float32), jnp.asarray(outer, jnp.float32), False)
  want_inner, want_outer = np_block(inner, outer, params, 2, 2)
  np.testing.assert_allclose(got_inner, want_inner, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got_outer, want_outer, rtol=1e-4, atol=1e-4)


def test_whole_model_matches_the_definition():
  images = images_of(7)
  params = random_params(tnt.TNT(**TINY), jnp.zeros((1, 14, 14, 3)), seed=8)
  got = tiny_outputs(params, images)["__call__"][0]
  inner = np_pixel_embed(images, params["pixel_embed"]["proj"], 7, 2)
  inner = (inner + params["pixel_pos"].transpose(0, 2, 3, 1)).reshape(8, 16, 4)
  outer = np_layernorm(np_linear(np_layernorm(np_flatten_pixel_major(inner, 2),
                                              params["norm1_proj"]), params["proj"]),
                       params["norm2_proj"])
  outer = np.concatenate([np.broadcast_to(params["cls_token"], (2, 1, 8)), outer], 1)
  outer = outer + params["patch_pos"]
  for i in range(2):
    inner, outer = np_block(inner, outer, params[f"blocks_{i}"], 2, 2)
  want = np_linear(np_layernorm(outer, params["norm"])[:, 0], params["head"])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_config_problems_name_a_fix():
  values = {"image_size": 30, "model.patch_size": 7, "model.inner_dim": 6,
            "model.inner_heads": 4, "model.hidden_size": 8, "model.num_heads": 2,
            "model.inner_stride": 0, "model.remat": "some"}
  assert tnt.check_config(values, "cpu") == [
      "image_size 30 is not divisible by model.patch_size 7; use a multiple of 7 such as 28",
      "model.inner_dim 6 is not divisible by model.inner_heads 4; use a multiple of 4 such as 8",
      "model.inner_stride 0 must be at least 1 (4 in the paper)",
      "model.remat 'some' is not one of none, full, dots, dots_no_batch"]
  good = {"image_size": 28, "model.patch_size": 7, "model.inner_dim": 8, "model.inner_heads": 4,
          "model.hidden_size": 8, "model.num_heads": 2, "model.inner_stride": 2,
          "model.remat": "full"}
  assert tnt.check_config(good, "cpu") == []
  assert tnt.check_config({}, "cpu") == []  # checks whose keys are missing are skipped


def test_a_small_variant_for_28px_digits_builds_and_runs():
  custom = dict(patch_size=7, inner_dim=8, hidden_size=16, num_layers=1, inner_heads=2,
                num_heads=2, inner_mlp_dim=16, mlp_dim=32)
  images = jnp.asarray(np.random.default_rng(9).integers(0, 256, (2, 28, 28, 1)), jnp.uint8)
  for stride, side in ((4, 2), (2, 4)):  # 2x2 or 4x4 inner tokens of each 7x7 patch
    model = tnt.build(section("TNT-custom", inner_stride=stride, **custom), 10)
    params = random_params(model, images, seed=10)
    assert params["pixel_pos"].shape == (1, 8, side, side)
    assert params["patch_pos"].shape == (1, 17, 16)
    assert params["norm1_proj"]["scale"].shape == (side * side * 8,)
  logits = jax.jit(model.apply)({"params": params}, images)  # the 4x4 one runs
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits)) and not np.allclose(logits[0], logits[1])


def test_drop_path_changes_training_outputs_reproducibly_and_never_evaluation():
  model = tnt.TNT(**{**TINY, "drop_path": 0.5})
  images = jnp.asarray(images_of(11, (4, 14, 14, 3)), jnp.float32)
  params = random_params(model, images, seed=11)
  apply = jax.jit(model.apply, static_argnames="train")

  def run(train, seed):
    key = jax.random.key(seed, impl="rbg")  # compiles faster than threefry
    return np.asarray(apply({"params": params}, images, train=train, rngs={"dropout": key}))

  evaluation = run(False, 2)
  np.testing.assert_array_equal(run(False, 3), evaluation)
  first = run(True, 2)
  np.testing.assert_array_equal(run(True, 2), first)
  assert not np.allclose(first, evaluation)
  assert not np.allclose(run(True, 3), first)


def test_remat_keeps_the_function_and_features_are_sown():
  images = images_of(12)
  params = random_params(tnt.TNT(**TINY), jnp.zeros((1, 14, 14, 3)), seed=12)
  remat = tnt.TNT(**TINY, remat="full")
  logits, state = jax.jit(lambda p, x: remat.apply({"params": p}, x, mutable=["intermediates"]))(
      params, jnp.asarray(images, jnp.float32))
  np.testing.assert_allclose(logits, tiny_outputs(params, images)["__call__"][0],
                             rtol=1e-6, atol=1e-6)
  assert state["intermediates"]["features"][0].shape == (2, 8)  # the class token's
  model = tnt.TNT(**TINY, representation_size=6)
  params = random_params(model, images)
  assert params["pre_logits"]["kernel"].shape == (8, 6)
  _, state = jax.eval_shape(lambda: model.apply({"params": params}, images,
                                                mutable=["intermediates"]))
  assert state["intermediates"]["features"][0].shape == (2, 6)


def traced_matmul_flops(jaxpr):
  """2 per multiply-add of every dot_general and convolution of a traced program."""
  total = 0
  for eqn in jaxpr.eqns:
    out = math.prod(eqn.outvars[0].aval.shape) if eqn.outvars else 0
    if eqn.primitive.name == "dot_general":
      (contracting, _), _ = eqn.params["dimension_numbers"]
      total += 2 * out * math.prod(eqn.invars[0].aval.shape[i] for i in contracting)
    elif eqn.primitive.name == "conv_general_dilated":
      kernel = eqn.invars[1].aval.shape
      total += 2 * out * math.prod(kernel) // kernel[eqn.params["dimension_numbers"].rhs_spec[0]]
    total += sum(traced_matmul_flops(sub) for sub in jax.extend.core.jaxprs_in_params(eqn.params))
  return total


@pytest.mark.parametrize("name,size,overrides", [
    ("TNT-S", 224, {}),
    ("TNT-custom", 28, dict(patch_size=7, inner_dim=8, hidden_size=16, num_layers=2,
                            inner_heads=2, num_heads=4, inner_mlp_dim=16, mlp_dim=32,
                            inner_stride=2, representation_size=12, remat="full")),
])
def test_forward_flops_are_the_traced_programs_matmuls(name, size, overrides):
  model = section(name, **overrides)
  module = tnt.build(model, 10).clone(all_tokens=True)  # the architecture's count
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  params = jax.eval_shape(module.init, jax.random.key(0), images)
  traced = traced_matmul_flops(jax.make_jaxpr(module.apply)(params, images).jaxpr)
  assert tnt.forward_flops(model, (size, size), 3, 10) == traced


def test_forward_flops_of_the_presets_are_the_papers():
  # Table 1 of the paper counts multiply-adds: 5.2 G for TNT-S and 14.1 G for TNT-B (its counter
  # also takes in some elementwise work: the matmuls alone are 5.22 G and 14.05 G).
  for name, giga in (("TNT-S", 5.2), ("TNT-B", 14.1)):
    macs = tnt.forward_flops(section(name), (224, 224), 3, 1000) / 2e9
    assert macs == pytest.approx(giga, rel=0.005), name


def test_family_fields():
  family = tnt.FAMILY
  assert family.custom == "TNT-custom" and family.example in family.presets
  assert family.token_stride(section("TNT-B")) == 16 and family.resizable
  assert family.recognizes({"pixel_embed": {}, "blocks_0": {}})
  assert not family.recognizes({"embedding": {}, "Transformer": {}})
  assert set(family.defaults) >= {"inner_stride", "drop_path", "gelu", "layernorm_epsilon"}
  assert all(set(p) == set(family.arch_keys) for p in family.presets.values())


@pytest.mark.parametrize("overrides,train", [
    ({"drop_path": 0.5}, True), pytest.param({}, False, marks=pytest.mark.slow),
    pytest.param({"posemb": "relative"}, False, marks=pytest.mark.slow)])
def test_the_last_block_computes_the_class_token_alone_with_the_same_outputs(
    overrides, train, class_token_alone):
  model = tnt.TNT(**TINY, **overrides)
  images = jnp.asarray(images_of(4), jnp.float32)
  class_token_alone(model, random_params(model, images), images, train=train,
                    tokens=5)  # the class token and 2 x 2 patches
