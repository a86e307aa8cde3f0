"""The `model.gelu` and `model.layernorm_epsilon` options: what they compute and their defaults."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import quickstart
from vit_jax import configuration
from vit_jax.configuration import ConfigError
from vit_jax.models import registry
from vit_jax.models.mlp import MlpBlock
from vit_jax.models.vit import VisionTransformer

TINY = dict(num_classes=5, patch_size=4, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32)


def x(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


@pytest.mark.parametrize("gelu, approximate", [("exact", False), ("tanh", True)])
def test_mlp_gelu_is_jaxs_exact_or_tanh_gelu(gelu, approximate):
  block = MlpBlock(mlp_dim=32, gelu=gelu)
  inputs = 3 * x((4, 16))
  params = block.init(jax.random.key(0), inputs, train=False)["params"]
  hidden = inputs @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]
  want = (jax.nn.gelu(hidden, approximate=approximate) @ params["Dense_1"]["kernel"]
          + params["Dense_1"]["bias"])
  got = block.apply({"params": params}, inputs, train=False)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  other = MlpBlock(mlp_dim=32, gelu="tanh" if gelu == "exact" else "exact")
  assert np.abs(other.apply({"params": params}, inputs, train=False) - got).max() > 1e-4


def test_an_unknown_gelu_is_refused_by_the_block():
  with pytest.raises(ValueError, match="gelu 'relu' is not one of tanh, exact"):
    MlpBlock(mlp_dim=8, gelu="relu").init(jax.random.key(0), jnp.zeros((1, 4)), train=False)


def test_the_default_model_is_unchanged_and_an_old_runs_model_section_builds_it():
  images = x((2, 8, 8, 3))
  default = VisionTransformer(**TINY, representation_size=8)
  shapes = jax.eval_shape(default.init, jax.random.key(0), images)["params"]
  params = jax.tree.map(lambda p: 0.2 * x(p.shape, 1), shapes)
  logits = default.apply({"params": params}, images)
  explicit = VisionTransformer(**TINY, representation_size=8, gelu="tanh", layernorm_epsilon=1e-6)
  np.testing.assert_array_equal(explicit.apply({"params": params}, images), logits)
  section = registry.section("ViT-custom", **{k: v for k, v in TINY.items() if k != "num_classes"},
                             representation_size=8, attention="plain")
  assert (section["gelu"], section["layernorm_epsilon"]) == ("tanh", 1e-6)
  old = {k: v for k, v in section.items() if k not in ("gelu", "layernorm_epsilon")}
  for model in (section, old):
    built = registry.build(model, TINY["num_classes"])
    assert (built.gelu, built.layernorm_epsilon) == ("tanh", 1e-6)
    np.testing.assert_array_equal(built.apply({"params": params}, images), logits)


@pytest.mark.parametrize("pool", ["token", "map"])
def test_layernorm_epsilon_reaches_every_layernorm(pool):
  model = VisionTransformer(**TINY, pool=pool, layernorm_epsilon=0.25)
  images = x((1, 8, 8, 3))
  params = model.init(jax.random.key(0), images)["params"]
  seen = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.LayerNorm) and context.method_name == "__call__":
      seen.append((context.module.name, context.module.epsilon))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply({"params": params}, images)
  # Two per block, the encoder's final norm, and the MAP head's own.
  assert len(seen) == 2 * TINY["num_layers"] + 1 + (pool == "map")
  assert {eps for _, eps in seen} == {0.25}
  # And it changes the result: on these inputs 0.25 is far from 1e-6.
  usual = VisionTransformer(**TINY, pool=pool)
  assert np.abs(features(usual, params, images) - features(model, params, images)).max() > 1e-2


def features(model, params, images):
  _, state = model.apply({"params": params}, images, mutable=["intermediates"])
  return state["intermediates"]["features"][0]


def resolved():
  return configuration.resolve_data(configuration.resolve_model(quickstart.get_config()),
                                    num_train=4000, num_classes=10)


@pytest.mark.parametrize("key, value, message", [
    ("gelu", "relu", "model.gelu 'relu' is not one of tanh, exact"),
    ("layernorm_epsilon", 0.0, "model.layernorm_epsilon must be positive, got 0.0"),
    ("layernorm_epsilon", "1e-6", "model.layernorm_epsilon must be a float, got str '1e-6'"),
])
def test_bad_values_are_one_line_config_errors(key, value, message):
  c = resolved().to_dict()
  c["model"][key] = value
  with pytest.raises(ConfigError) as err:
    configuration.validate(ml_collections.ConfigDict(c, type_safe=False), device_count=1)
  assert message in str(err.value) and "\n" not in str(err.value)


def test_a_run_written_before_the_options_resumes_and_keeps_them(tmp_path):
  c = resolved()
  assert (c.model.gelu, c.model.layernorm_epsilon) == ("tanh", 1e-6)
  configuration.validate(c, device_count=1)
  old = json.loads(configuration.to_json(c))
  del old["model"]["gelu"], old["model"]["layernorm_epsilon"]
  (tmp_path / "config.json").write_text(json.dumps(old))
  assert configuration.check_workdir(c, str(tmp_path)) is True
  c.model.gelu = "exact"  # that run computed the tanh GELU
  with pytest.raises(ConfigError, match="model.gelu: 'tanh' -> 'exact'"):
    configuration.check_workdir(c, str(tmp_path))
