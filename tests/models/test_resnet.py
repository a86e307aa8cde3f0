"""The hybrid's ResNet stem against NumPy computations written from the definitions."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import registry, resnet
from vit_jax.models.vit import VisionTransformer


def np_standardize(w, eps=1e-5):
  flat = w.reshape(-1, w.shape[-1]).astype(np.float64)  # (H*W*C_in, C_out)
  mean = flat.mean(0)
  std = np.sqrt(((flat - mean) ** 2).mean(0))
  return ((flat - mean) / (std + eps)).reshape(w.shape)


def np_group_norm(x, scale, bias, groups=32, eps=1e-6):
  n, h, w, c = x.shape
  g = x.reshape(n, h, w, groups, c // groups).astype(np.float64)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = g.var(axis=(1, 2, 4), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def np_conv_same(x, w, stride):
  """A direct SAME convolution: output size ceil(in / stride), padding split low-first."""
  n, h, wd, _ = x.shape
  kh, kw, _, cout = w.shape
  oh, ow = -(-h // stride), -(-wd // stride)
  pad_h = max((oh - 1) * stride + kh - h, 0)
  pad_w = max((ow - 1) * stride + kw - wd, 0)
  xp = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
                  (0, 0)))
  out = np.zeros((n, oh, ow, cout))
  for i in range(oh):
    for j in range(ow):
      patch = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw]
      out[:, i, j] = np.einsum("nhwc,hwco->no", patch, w)
  return out


def test_weight_standardisation_is_per_output_channel_with_eps_on_the_deviation():
  w = np.random.default_rng(0).normal(2.0, 3.0, (3, 3, 4, 5)).astype(np.float32)
  np.testing.assert_allclose(resnet.standardize(jnp.asarray(w)), np_standardize(w), rtol=1e-5,
                             atol=1e-5)


def test_std_conv_standardises_its_stored_kernel_on_every_call():
  conv = resnet.StdConv(features=8, kernel_size=3, strides=2)
  x = np.random.default_rng(1).normal(size=(2, 7, 7, 4)).astype(np.float32)
  params = conv.init(jax.random.key(0), x)["params"]
  raw = np.asarray(params["kernel"]) * 5.0 + 1.0  # stored raw: any scale and shift
  got = conv.apply({"params": {"kernel": raw}}, x)
  np.testing.assert_allclose(got, np_conv_same(x, np_standardize(raw), 2), rtol=1e-4, atol=1e-4)
  assert got.shape == (2, 4, 4, 8)


@pytest.mark.parametrize("size,stride", [(7, 1), (7, 2), (8, 2)])
def test_pointwise_std_conv_is_the_strided_convolution(size, stride):
  conv = resnet.StdConv(features=6, kernel_size=1, strides=stride)
  x = np.random.default_rng(6).normal(size=(2, size, size, 4)).astype(np.float32)
  raw = np.random.default_rng(7).normal(1.0, 2.0, (1, 1, 4, 6)).astype(np.float32)
  got = conv.apply({"params": {"kernel": raw}}, x)
  np.testing.assert_allclose(got, np_conv_same(x, np_standardize(raw), stride), rtol=1e-4,
                             atol=1e-4)


@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_gradients_match_the_convolution(stride):
  rng = np.random.default_rng(8)
  x = jnp.asarray(rng.normal(size=(2, 9, 9, 16)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(16, 24)), jnp.float32)

  def conv(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel[None, None], (stride, stride), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def loss(fn):
    return lambda x, kernel: jnp.sum(jnp.sin(fn(x, kernel)))

  want = jax.grad(loss(conv), argnums=(0, 1))(x, kernel)
  got = jax.grad(loss(lambda x, k: resnet.pointwise(x, k, stride)), argnums=(0, 1))(x, kernel)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(g, w, atol=1e-5 * float(jnp.max(jnp.abs(w))))


@pytest.mark.parametrize("size,kernel,stride", [
    ((8, 8), 3, 1), ((9, 7), 3, 2), ((10, 10), 7, 2), ((11, 11), 3, 2), ((5, 6), 7, 2)])
def test_same_conv_and_its_gradients_are_the_convolutions(size, kernel, stride):
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(2, *size, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 3, 4)) / (kernel * np.sqrt(3)), jnp.float32)

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  want, want_vjp = jax.vjp(conv, x, w)
  got, got_vjp = jax.vjp(lambda x, w: resnet.same_conv(x, w, stride), x, w)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(want))))
  cotangent = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
  for g, v in zip(got_vjp(cotangent), want_vjp(cotangent), strict=True):
    np.testing.assert_allclose(g, v, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(v))))


def test_std_conv_gradients_inside_a_loop_are_convolutions_in_the_nhwc_form():
  """Gradient accumulation's scan: every convolution XLA:CPU compiles is b01f_01io->b01f."""
  conv = resnet.StdConv(8, 3, strides=2)
  x = jnp.ones((3, 2, 9, 9, 4))
  params = conv.init(jax.random.key(0), x[0])

  def accumulated(params):
    def body(total, images):
      grads = jax.grad(lambda p: jnp.sum(conv.apply(p, images) ** 2))(params)
      return jax.tree.map(jnp.add, total, grads), None
    return jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), x)[0]

  assert jax.default_backend() == "cpu"
  hlo = jax.jit(accumulated).lower(params).compile().as_text()
  labels = re.findall(r" convolution\(.*?dim_labels=(\S+?),", hlo)
  assert labels and set(labels) == {"b01f_01io->b01f"}


def test_group_norm_uses_32_groups():
  x = np.random.default_rng(2).normal(1.0, 2.0, (2, 3, 3, 64)).astype(np.float32)
  rng = np.random.default_rng(3)
  scale, bias = rng.normal(size=64), rng.normal(size=64)
  norm = resnet._norm("gn", {})
  got = norm.apply({"params": {"scale": scale, "bias": bias}}, x)
  np.testing.assert_allclose(got, np_group_norm(x, scale, bias), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 5, 5, 64), (1, 3, 7, 128)])
def test_group_norm_outputs_and_gradients_are_flax_group_norms(shape):
  rng = np.random.default_rng(9)
  x = jnp.asarray(rng.normal(1.0, 2.0, shape), jnp.float32)
  params = {"scale": jnp.asarray(rng.normal(size=shape[-1:]), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=shape[-1:]), jnp.float32)}
  ours, theirs = resnet.GroupNorm(), nn.GroupNorm(num_groups=32, epsilon=1e-6)

  def loss(module):
    return lambda p, x: jnp.sum(jnp.sin(module.apply({"params": p}, x)))

  want = jax.value_and_grad(loss(theirs), argnums=(0, 1))(params, x)
  got = jax.value_and_grad(loss(ours), argnums=(0, 1))(params, x)
  np.testing.assert_allclose(ours.apply({"params": params}, x),
                             theirs.apply({"params": params}, x), rtol=1e-5, atol=1e-5)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, w, atol=1e-5 * float(jnp.max(jnp.abs(w))))


def test_group_norm_parameters_are_flax_group_norms():
  x = jnp.ones((1, 2, 2, 64))
  ours = resnet._norm("gn", {}, zero_scale=True).init(jax.random.key(0), x)["params"]
  theirs = nn.GroupNorm(num_groups=32, scale_init=nn.initializers.zeros).init(
      jax.random.key(0), x)["params"]
  assert jax.tree.map(np.shape, ours) == jax.tree.map(np.shape, theirs)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
    np.testing.assert_array_equal(a, b)


def test_group_norm_output_dtype_and_a_channel_count_the_groups_do_not_split():
  x = jnp.asarray(np.random.default_rng(10).normal(size=(1, 2, 2, 64)), jnp.bfloat16)
  norm = resnet.GroupNorm(dtype=jnp.bfloat16)
  params = norm.init(jax.random.key(0), x)
  assert norm.apply(params, x).dtype == jnp.bfloat16
  assert resnet.GroupNorm().apply(params, x).dtype == jnp.float32
  with pytest.raises(ValueError, match="48 channels do not split into 32 groups"):
    resnet.GroupNorm().init(jax.random.key(0), jnp.ones((1, 2, 2, 48)))


def np_bottleneck(p, x, width, stride):
  def gn(name, y):
    return np_group_norm(y, p[name]["scale"], p[name]["bias"])

  def conv(name, y, s=1):
    return np_conv_same(y, np_standardize(np.asarray(p[name]["kernel"])), s)

  relu = lambda y: np.maximum(y, 0)  # noqa: E731
  shortcut = x
  if "conv_proj" in p:
    shortcut = gn("gn_proj", conv("conv_proj", x, stride))
  y = relu(gn("gn1", conv("conv1", x)))
  y = relu(gn("gn2", conv("conv2", y, stride)))
  y = gn("gn3", conv("conv3", y))
  return relu(shortcut + y)


@pytest.mark.slow
@pytest.mark.parametrize("stride,cin", [(2, 32), (1, 128)])
def test_bottleneck_unit_matches_the_post_activation_definition(stride, cin):
  unit = resnet.Bottleneck(width=32, strides=stride)
  x = np.random.default_rng(4).normal(size=(2, 5, 5, cin)).astype(np.float32)
  params = unit.init(jax.random.key(0), x)["params"]
  assert ("conv_proj" in params) == (stride != 1 or cin != 128)  # projection only on a change
  assert not np.any(np.asarray(params["gn3"]["scale"]))  # the last scale starts at zero
  # Random GroupNorm parameters, so that every branch contributes.
  rng = np.random.default_rng(5)
  params = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), params)
  got = unit.apply({"params": params}, x)
  np.testing.assert_allclose(got, np_bottleneck(params, x, 32, stride), rtol=2e-3, atol=2e-3)


def test_hybrid_parameter_names_are_the_original_formats():
  model = registry.build(registry.section("ResNet+ViT-custom", patch_size=1, hidden_size=32,
                                          num_layers=1, num_heads=2, mlp_dim=64,
                                          resnet_layers=(1, 2), resnet_width=32), 10)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  assert params["conv_root"]["kernel"].shape == (7, 7, 3, 32)
  assert set(params["gn_root"]) == {"scale", "bias"}
  assert set(params["block1"]) == {"unit1"} and set(params["block2"]) == {"unit1", "unit2"}
  first = params["block2"]["unit1"]
  assert set(first) == {"conv1", "gn1", "conv2", "gn2", "conv3", "gn3", "conv_proj", "gn_proj"}
  assert "conv_proj" not in params["block2"]["unit2"]
  assert first["conv3"]["kernel"].shape == (1, 1, 64, 256)
  assert params["embedding"]["kernel"].shape == (1, 1, 256, 32)  # a 1x1 conv with bias
  assert params["embedding"]["bias"].shape == (32,)
  # 32 px / stride 8 (root 4, second stage 2) = a 4x4 grid plus the class token.
  assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 17, 32)


def test_an_image_the_hybrid_stride_does_not_divide_is_a_clear_error():
  model = VisionTransformer(num_classes=10, patch_size=1, hidden_size=32, num_layers=1,
                            num_heads=2, mlp_dim=64, resnet_layers=(1, 1), resnet_width=32)
  with pytest.raises(ValueError, match=r"28x28 is not divisible by the hybrid's stride "
                                       r"\(ResNet stem 8 x patch 1\) = 8"):
    model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 3)))


@pytest.mark.parametrize("layers,expected", [((3, 4, 9), 16), ((2, 2, 2, 2), 32), ((), 4)])
def test_stem_stride(layers, expected):
  assert resnet.stride(layers) == expected
