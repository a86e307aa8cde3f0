import json

import pytest

from vit_jax.models import __main__ as models_cli
from vit_jax.models import registry, vit

# The paper's models at 224x224, 1000 classes, class token, no pre-logits.
EXPECTED = {
    "ViT-Ti/16": 5_717_416,
    "ViT-S/16": 22_050_664,
    "ViT-S/32": 22_878_952,
    "ViT-B/16": 86_567_656,
    "ViT-B/32": 88_224_232,
    "ViT-B/8": 86_576_872,
    "ViT-L/16": 304_326_632,
    "ViT-L/32": 306_535_400,
    "ViT-H/14": 632_045_800,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_count_matches_paper(name):
  assert registry.param_count(registry.section(name), 1000, 224) == EXPECTED[name]


def test_every_preset_is_checked():
  assert set(registry.PRESETS) == set(EXPECTED)


def test_a_section_fills_sizes_from_the_preset_and_the_rest_from_family_defaults():
  model = registry.section("ViT-L/16", num_layers=6, pool="gap")
  assert (model["hidden_size"], model["num_layers"], model["pool"]) == (1024, 6, "gap")
  assert model["posemb"] == vit.DEFAULTS["posemb"]
  module = registry.build(model, 10)
  assert isinstance(module, vit.VisionTransformer) and module.num_layers == 6


def test_unknown_names_are_refused_naming_the_closest_presets():
  with pytest.raises(registry.ModelNameError) as err:
    registry.family_of("ViT-B/61")
  text = str(err.value)
  assert "model.name 'ViT-B/61' is not a registered model; did you mean ViT-B/16" in text
  assert "ViT-custom" in text


def test_a_custom_name_needs_every_size():
  sizes = dict(patch_size=7, hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64)
  assert registry.section("ViT-custom", **sizes)["hidden_size"] == 32
  with pytest.raises(registry.ModelNameError, match="set model.num_heads, model.mlp_dim"):
    registry.arch_values({"name": "ViT-custom", **sizes, "num_heads": None, "mlp_dim": None})


def test_model_checks_name_the_config_keys():
  values = {"image_size": 30, **{f"model.{k}": v for k, v in registry.section("ViT-B/16").items()}}
  values["model.remat"] = "most"
  problems = registry.check(values, "cpu")
  assert problems[0].startswith("image_size 30 is not divisible by model.patch_size 16")
  assert any(p.startswith("model.remat 'most' is not one of") for p in problems)
  assert registry.check({"model.name": "ViT-Q/9"}, "cpu")[0].startswith("model.name 'ViT-Q/9'")


@pytest.mark.slow
def test_listing_command_gives_every_preset_with_its_exact_count(capsys):
  assert models_cli.main(["--json"]) == 0
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert {r["name"]: r["params"] for r in rows} == EXPECTED
  assert all(r["image_size"] == 224 and r["num_classes"] == 1000 for r in rows)
  b16 = next(r for r in rows if r["name"] == "ViT-B/16")
  assert b16["gflops"] == pytest.approx(35.13, abs=0.01)  # 17.6 G multiply-adds, twice


def test_one_model_at_another_resolution(capsys):
  assert models_cli.main(["ViT-B/16", "--image_size", "384", "--num_classes", "10"]) == 0
  out = capsys.readouterr().out
  # 24x24 instead of 14x14 patches: 380 more rows of 768 in the position table; a 10-way head.
  params = EXPECTED["ViT-B/16"] + 380 * 768 - 990 * 769
  assert f"{params:,}" in out and "ViT-B/16" in out


def test_listing_command_refuses_unknown_models(capsys):
  assert models_cli.main(["ViT-Q/99"]) == 2
  assert "is not a registered model" in capsys.readouterr().err
  assert models_cli.main(["ViT-B/16", "--image_size", "100"]) == 2
  assert "--image_size 100 is not divisible by model.patch_size 16" in capsys.readouterr().err
