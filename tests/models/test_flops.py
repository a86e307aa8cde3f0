import jax
import jax.numpy as jnp
import pytest

from vit_jax.models import flops, registry


def shape(name, image=224, classes=1000):
  a = registry.section(name)
  return dict(image_size=(image, image), patch_size=a["patch_size"], channels=3,
              hidden_size=a["hidden_size"], num_layers=a["num_layers"], mlp_dim=a["mlp_dim"],
              num_classes=classes)


@pytest.mark.parametrize("name,gmacs", [("ViT-Ti/16", 1.3), ("ViT-S/16", 4.6), ("ViT-B/16", 17.6)])
def test_forward_cost_matches_the_published_multiply_adds(name, gmacs):
  # DeiT's Table 1 lists these sizes at 224px as 1.3 / 4.6 / 17.6 G(multiply-adds).
  assert flops.forward_flops(**shape(name)) / 2 / 1e9 == pytest.approx(gmacs, abs=0.05)


def _xla_flops(model, params, images):
  return jax.jit(model.apply).lower(params, images).cost_analysis()["flops"]


def test_matmul_count_is_just_below_xlas_count_of_every_operation():
  model = registry.build(registry.section("ViT-Ti/16", attention="plain"), 1000)
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), images)
  xla = _xla_flops(model.clone(all_tokens=True), params, images)
  ours = flops.forward_flops(**shape("ViT-Ti/16"))
  assert 0.97 * xla <= ours <= xla  # XLA also counts norms, softmax, GELU and additions


@pytest.mark.parametrize("attention", ["plain", "heads_first"])
def test_the_last_block_computes_only_the_class_token(attention):
  # The count is the architecture's; the class-token model skips the last block's products for
  # the 196 patch tokens: their query and output projections, attention rows and MLP.
  model = registry.build(registry.section("ViT-Ti/16", attention=attention), 1000)
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), images)
  saved = _xla_flops(model.clone(all_tokens=True), params, images) - _xla_flops(
      model, params, images)
  d, mlp, tokens = 192, 768, 197
  products = 2 * (tokens - 1) * (2 * d * d + 2 * d * mlp + 2 * tokens * d)
  assert products <= saved <= 1.03 * products  # plus their norms, softmax, GELU and additions
  assert saved / flops.forward_flops(**shape("ViT-Ti/16")) == pytest.approx(0.069, abs=0.002)



@pytest.mark.slow
def test_hybrid_count_includes_the_resnet_convolutions_and_is_just_below_xlas():
  model = registry.section("R26+ViT-S/32", attention="plain")
  module = registry.build(model, 1000)
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  params = jax.eval_shape(module.init, jax.random.key(0), images)
  xla = _xla_flops(module.clone(all_tokens=True), params, images)
  ours = registry.forward_flops(model, 1000, 224)
  assert 0.97 * xla <= ours <= xla  # XLA also counts GroupNorm, ReLU, pooling and additions
  # The Transformer alone (a 7x7 grid of 2048-channel "patches") is well under half of it.
  vit = flops.forward_flops(image_size=(7, 7), patch_size=1, channels=2048, hidden_size=384,
                            num_layers=12, mlp_dim=1536, num_classes=1000)
  assert ours - vit > 0.6 * ours
