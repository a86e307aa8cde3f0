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


def test_matmul_count_is_just_below_xlas_count_of_every_operation():
  model = registry.build(registry.section("ViT-Ti/16", attention="plain"), 1000)
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), images)
  xla = jax.jit(model.apply).lower(params, images).cost_analysis()["flops"]
  ours = flops.forward_flops(**shape("ViT-Ti/16"))
  assert 0.97 * xla <= ours <= xla  # XLA also counts norms, softmax, GELU and additions

