import json

import pytest

from configs import b16, quickstart
from vit_jax import configuration
from vit_jax.configuration import ConfigError


def resolved(config):
  return configuration.resolve_model(config)


def test_preset_fills_the_architecture_and_explicit_values_win():
  c = b16.get_config()
  c.model.num_layers = 6
  r = resolved(c)
  assert (r.model.patch_size, r.model.hidden_size, r.model.num_heads, r.model.mlp_dim) == (
      16, 768, 12, 3072)
  assert r.model.num_layers == 6
  c = b16.get_config()
  c.model.name = "ViT-L/16"
  assert resolved(c).model.hidden_size == 1024


def test_custom_name_needs_every_size():
  c = b16.get_config()
  c.model.name = "mine"
  with pytest.raises(ConfigError, match="not a preset"):
    resolved(c)


def test_b16_has_the_paper_recipe():
  c = b16.get_config()
  assert (c.batch_size, c.lr, c.warmup_steps, c.decay, c.weight_decay) == (
      4096, 1e-3, 10_000, "linear", 0.03)
  assert (c.adam_b1, c.adam_b2, c.num_epochs, c.image_size) == (0.9, 0.999, 90.0, 224)
  assert (c.model.dropout, c.model.representation_size, c.model.head_bias_init) == (
      0.1, 768, -10.0)
  assert b16.get_config("gap").model.pool == "gap"


def test_validation_reports_every_problem():
  c = resolved(quickstart.get_config())
  c.image_size = 30
  c.batch_size = 12
  with pytest.raises(ConfigError) as err:
    configuration.validate(c, device_count=8)
  assert "image_size 30 is not divisible by model.patch_size 7" in str(err.value)
  assert "not divisible by the 8 devices" in str(err.value)


def test_out_of_range_values_are_reported_without_crashing():
  c = resolved(quickstart.get_config())
  c.model.num_heads, c.model.patch_size, c.warmup_steps = 0, 0, -1
  with pytest.raises(ConfigError) as err:
    configuration.validate(c, device_count=1)
  for text in ("model.num_heads must be positive, got 0", "model.patch_size must be positive",
               "warmup_steps must be at least 0, got -1"):
    assert text in str(err.value)


def test_total_steps_from_epochs():
  c = resolved(quickstart.get_config())
  c.num_epochs, c.batch_size, c.warmup_steps = 2.0, 128, 10
  r = configuration.resolve_data(c, num_train=4000, num_classes=10)
  assert r.total_steps == 63 and r.num_classes == 10


def test_workdir_with_another_config_is_refused(tmp_path):
  c = configuration.resolve_data(resolved(quickstart.get_config()), num_train=4000,
                                 num_classes=10)
  assert configuration.check_workdir(c, str(tmp_path)) is False
  (tmp_path / "config.json").write_text(configuration.to_json(c))
  assert configuration.check_workdir(c, str(tmp_path)) is True
  old_lr, c.lr = c.lr, 0.5
  with pytest.raises(ConfigError, match=rf"different config \(lr: {old_lr} -> 0.5\)"):
    configuration.check_workdir(c, str(tmp_path))
  assert json.loads((tmp_path / "config.json").read_text())["lr"] == old_lr


def test_layout_settings_and_keys_newer_than_the_run_do_not_block_a_resume(tmp_path):
  c = configuration.resolve_data(resolved(quickstart.get_config()), num_train=4000,
                                 num_classes=10)
  old = json.loads(configuration.to_json(c))
  del old["moment_dtype"]  # a run written before the key existed
  (tmp_path / "config.json").write_text(json.dumps(old))
  c.mesh.fsdp, c.model.remat, c.model.scan_layers, c.model.attention = 2, "full", True, "plain"
  assert configuration.check_workdir(c, str(tmp_path)) is True
  for key, value in (("model.dropout", 0.3), ("model.attention_dropout", 0.1),
                     ("moment_dtype", "bfloat16")):  # what the run computes must match
    changed = c.copy_and_resolve_references()
    changed.update_from_flattened_dict({key: value})
    with pytest.raises(ConfigError, match=key):
      configuration.check_workdir(changed, str(tmp_path))
