"""The patch embedding and the window convolution against flax's convolutions, whose parameters
they keep."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import inputs


def _conv(features, p):
  return nn.Conv(features, (p, p), strides=(p, p), padding="VALID")


@pytest.mark.parametrize("p,size", [(1, 5), (4, 8)])
def test_parameters_are_the_convolutions_names_shapes_and_initial_values(p, size):
  x = jnp.ones((2, size, size, 3))
  ours = inputs.PatchEmbedding(6, p).init(jax.random.key(3), x)["params"]
  conv = _conv(6, p).init(jax.random.key(3), x)["params"]
  assert jax.tree.structure(ours) == jax.tree.structure(conv)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(conv), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("p,size", [(1, 5), (4, 8), (2, 6)])
def test_output_and_gradients_are_the_convolutions(p, size):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, size, size, 8)), jnp.float32)
  # Outputs of order 1, where sin() does not magnify float32's rounding of the products.
  params = {"kernel": jnp.asarray(rng.normal(size=(p, p, 8, 12)) / (p * np.sqrt(8)),
                                  jnp.float32),
            "bias": jnp.asarray(rng.normal(size=12), jnp.float32)}

  def loss(module, *train):
    return lambda params, x: jnp.sum(jnp.sin(module.apply({"params": params}, x, *train)))

  want = jax.value_and_grad(loss(_conv(12, p)), argnums=(0, 1))(params, x)
  for train in (False, True):  # on a CPU: the convolution, then the patches' product
    got = jax.value_and_grad(loss(inputs.PatchEmbedding(12, p), train), argnums=(0, 1))(
        params, x)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(w))))
  out = inputs.PatchEmbedding(12, p).apply({"params": params}, x)
  assert out.shape == (2, size // p, size // p, 12)
  if p > 1:  # outside training: the same convolution, the same values bit for bit
    np.testing.assert_array_equal(out, _conv(12, p).apply({"params": params}, x))


@pytest.mark.parametrize("shape", [(2, 8, 12, 3), (3, 35, 50, 4)])
def test_the_patch_product_is_the_strided_convolution(shape):
  """Also where rows and columns past the last whole patch are left over (35 x 50 at p = 16)."""
  p = 4 if shape[1] == 8 else 16
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(p, p, shape[-1], 5)) / (p * np.sqrt(shape[-1])),
                       jnp.float32)  # outputs of order 1, as above

  def conv(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (p, p), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def loss(fn):
    return lambda x, kernel: jnp.sum(jnp.sin(fn(x, kernel)))

  want, got = conv(x, kernel), inputs.patch_product(x, kernel)
  assert got.shape == want.shape == (shape[0], shape[1] // p, shape[2] // p, 5)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(want))))
  want_grads = jax.grad(loss(conv), argnums=(0, 1))(x, kernel)
  got_grads = jax.grad(loss(inputs.patch_product), argnums=(0, 1))(x, kernel)
  for g, w in zip(got_grads, want_grads, strict=True):
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(w))))


def test_training_on_a_cpu_multiplies_the_patches_and_inference_convolves():
  x = jnp.ones((2, 8, 8, 3))
  module = inputs.PatchEmbedding(6, 4)
  params = module.init(jax.random.key(0), x)

  def hlo(train):
    loss = lambda p: jnp.sum(module.apply(p, x, train))  # noqa: E731
    return jax.jit(jax.grad(loss)).lower(params).as_text()

  assert jax.default_backend() == "cpu"
  assert "convolution" not in hlo(True) and "dot_general" in hlo(True)
  assert "convolution" in hlo(False)
  # The same function; a product and a convolution round differently (by 1.1e-6 with jax 0.12.1).
  product, convolved = module.apply(params, x, True), module.apply(params, x, False)
  np.testing.assert_allclose(product, convolved, rtol=0,
                             atol=1e-5 * float(jnp.max(jnp.abs(convolved))))


def test_bfloat16_compute_keeps_float32_parameters():
  x = jnp.ones((1, 4, 4, 3))
  module = inputs.PatchEmbedding(5, 1, dtype=jnp.bfloat16)
  params = module.init(jax.random.key(0), x)["params"]
  assert params["kernel"].dtype == jnp.float32
  assert module.apply({"params": params}, x).dtype == jnp.bfloat16


@pytest.mark.parametrize("size,stride,pad,shape", [
    (7, 4, 3, (3, 16, 16, 3)), (3, 2, 1, (2, 9, 7, 5)), (3, 1, 0, (1, 6, 6, 2))])
def test_the_window_product_is_the_convolution(size, stride, pad, shape):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(size, size, shape[-1], 4)) / (size * np.sqrt(shape[-1])),
                       jnp.float32)  # outputs of order 1

  def conv(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def product(x, kernel):
    return inputs.conv_product(x, kernel, stride, pad)

  def loss(fn):
    return lambda x, kernel: jnp.sum(jnp.sin(fn(x, kernel)))

  want, got = conv(x, kernel), product(x, kernel)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(want))))
  for g, w in zip(jax.grad(loss(product), argnums=(0, 1))(x, kernel),
                  jax.grad(loss(conv), argnums=(0, 1))(x, kernel), strict=True):
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(w))))


def test_window_taps_in_both_feature_orders():
  x = jnp.arange(2 * 5 * 4 * 3, dtype=jnp.float32).reshape(2, 5, 4, 3)
  hwio = inputs.conv_taps(x, 3, 2, 1)
  unfold = inputs.conv_taps(x, 3, 2, 1, channels_last=False)
  assert hwio.shape == unfold.shape == (2, 3, 2, 27)
  padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
  window = padded[1, 2:5, 0:3]  # output row 1, column 0 of the second image: (row, col, channel)
  np.testing.assert_array_equal(hwio[1, 1, 0], window.reshape(-1))
  np.testing.assert_array_equal(unfold[1, 1, 0], window.transpose(2, 0, 1).reshape(-1))


def test_window_conv_keeps_nn_conv_parameters_and_multiplies_in_training_on_a_cpu():
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 8, 8, 3)), jnp.float32)
  init = dict(kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
              bias_init=nn.initializers.normal(0.1))
  ours = inputs.WindowConv(5, 7, 4, 3, **init)
  conv = nn.Conv(5, (7, 7), strides=4, padding=((3, 3), (3, 3)), **init)
  params, conv_params = ours.init(jax.random.key(1), x), conv.init(jax.random.key(1), x)
  assert jax.tree.structure(params) == jax.tree.structure(conv_params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(conv_params), strict=True):
    np.testing.assert_array_equal(a, b)
  # Outside training the same convolution, bit for bit.
  np.testing.assert_array_equal(ours.apply(params, x), conv.apply(params, x))

  def hlo(train):
    loss = lambda p: jnp.sum(ours.apply(p, x, train))  # noqa: E731
    return jax.jit(jax.grad(loss)).lower(params).as_text()

  assert jax.default_backend() == "cpu"
  assert "convolution" not in hlo(True) and "convolution" in hlo(False)
  np.testing.assert_allclose(ours.apply(params, x, True), conv.apply(params, x), rtol=0,
                             atol=1e-5 * float(jnp.max(jnp.abs(conv.apply(params, x)))))
