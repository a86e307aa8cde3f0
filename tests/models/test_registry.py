import json

import pytest

from vit_jax.models import __main__ as models_cli
from vit_jax.models import registry, vit


def vit_count(d, layers, mlp, tokens, embed_in, classes=1000):
  """A ViT's parameters by hand: embedding, class token, position table, blocks, head."""
  block = 4 * d + 4 * (d * d + d) + (d * mlp + mlp + mlp * d + d)
  return embed_in * d + d + d + (tokens + 1) * d + layers * block + 2 * d + d * classes + classes


def resnet_count(stages, width=64):
  """The hybrid's ResNet stem by hand: root conv + GN, then bottleneck units."""
  total, cin = 7 * 7 * 3 * width + 2 * width, width
  for b, units in enumerate(stages):
    mid = width * 2**b
    for u in range(units):
      total += cin * mid + 2 * mid + 9 * mid * mid + 2 * mid + mid * 4 * mid + 8 * mid
      if u == 0:  # every stage's first unit changes the width (or the stride): a projection
        total += cin * 4 * mid + 8 * mid
      cin = 4 * mid
  return total


def mixer_count(patch, d, layers, tokens_mlp, channels_mlp, image=224, classes=1000):
  """A Mixer's parameters by hand: stem, blocks (2 norms, 2 MLPs), pre-head norm, head."""
  t = (image // patch) ** 2
  block = 4 * d + (t * tokens_mlp + tokens_mlp + tokens_mlp * t + t)
  block += d * channels_mlp + channels_mlp + channels_mlp * d + d
  return patch * patch * 3 * d + d + layers * block + 2 * d + d * classes + classes


# At 224x224 with 1000 classes and no pre-logits: the ViT paper's models (class token), its
# hybrids, the Mixer paper's models, T2T-ViT and TNT. Where no exact count is published, the
# count by hand.
EXPECTED = {
    "R50+ViT-B/16": 98_659_112,
    "R26+ViT-S/32": 36_431_912,
    "R50+ViT-L/32": resnet_count((3, 4, 6, 3)) + vit_count(1024, 24, 4096, 49, 2048),
    "Mixer-S/16": 18_528_264,
    "Mixer-B/16": 59_880_472,
    "Mixer-B/32": 60_293_428,
    "Mixer-L/16": 208_196_168,
    "Mixer-S/32": mixer_count(32, 512, 8, 256, 2048),
    "Mixer-L/32": mixer_count(32, 1024, 24, 512, 4096),
    "Mixer-H/14": mixer_count(14, 1280, 32, 640, 5120),
    "ViT-Ti/16": 5_717_416,
    "ViT-S/16": 22_050_664,
    "ViT-S/32": 22_878_952,
    "ViT-B/16": 86_567_656,
    "ViT-B/32": 88_224_232,
    "ViT-B/8": 86_576_872,
    "ViT-L/16": 304_326_632,
    "ViT-L/32": 306_535_400,
    "ViT-H/14": 632_045_800,
    # T2T-ViT (all parameters, the fixed sinusoid table and the performers' features included)
    # and TNT, as counted from the authors' PyTorch models; tests/models/test_t2t.py and
    # test_tnt.py check them, and the trainable counts, in detail.
    "T2T-ViT-7": 4_310_222,
    "T2T-ViT-10": 5_889_230,
    "T2T-ViT-12": 6_941_902,
    "T2T-ViT-14": 21_545_550,
    "T2T-ViT-19": 39_177_422,
    "T2T-ViT-24": 64_105_934,
    "T2T-ViT_t-14": 21_541_070,
    "T2T-ViT_t-19": 39_172_942,
    "T2T-ViT_t-24": 64_101_454,
    "TNT-S": 23_768_584,
    "TNT-B": 65_428_680,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_count_matches_paper(name):
  assert registry.param_count(registry.section(name), 1000, 224) == EXPECTED[name]


def test_the_counts_by_hand_agree_with_the_published_ones():
  assert resnet_count((3, 4, 9)) + vit_count(768, 12, 3072, 196, 1024) == 98_659_112
  assert resnet_count((2, 2, 2, 2)) + vit_count(384, 12, 1536, 49, 2048) == 36_431_912
  assert vit_count(768, 12, 3072, 196, 16 * 16 * 3) == 86_567_656  # ViT-B/16
  assert mixer_count(16, 768, 12, 384, 3072) == 59_880_472
  assert mixer_count(32, 768, 12, 384, 3072) == 60_293_428


def test_mixer_counts_round_to_the_mixer_papers_table_without_the_head():
  # Table 1 of the Mixer paper, in millions; its counts leave out the 1000-class head.
  table = {"S/32": 19, "S/16": 18, "B/32": 60, "B/16": 59, "L/32": 206, "L/16": 207, "H/14": 431}
  head = {size: d * 1000 + 1000 for size, d in (("S", 512), ("B", 768), ("L", 1024), ("H", 1280))}
  assert {n: round((EXPECTED[f"Mixer-{n}"] - head[n[0]]) / 1e6) for n in table} == table


@pytest.mark.slow
def test_hybrid_at_384():
  assert registry.param_count(registry.section("R50+ViT-B/16"), 1000, 384) == 98_950_952


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


@pytest.mark.parametrize("model,expected", [
    ({"name": "ViT-Ti/16"}, ("ViT", 192)), ({"name": "ViT-S/16"}, ("ViT", 384)),
    ({"name": "R50+ViT-B/16"}, ("ResNet+ViT", 768)), ({"name": "Mixer-B/16"}, ("Mixer", 768)),
    ({"name": "ViT-B/16", "hidden_size": 512}, ("ViT", 512)),  # a size given overrides the preset
    ({"name": "ViT-custom", "patch_size": 7, "hidden_size": 128, "num_layers": 4, "num_heads": 4,
      "mlp_dim": 256}, ("ViT", 128))])
def test_family_and_width_of_a_model_section(model, expected):
  assert registry.family_and_width(model) == expected
