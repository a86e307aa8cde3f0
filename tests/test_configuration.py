import json
import os
import re

import ml_collections
import pytest

from configs import b16, quickstart
from vit_jax import config_schema, configuration
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


def test_a_name_must_be_registered_and_a_custom_one_needs_every_size():
  c = b16.get_config()
  c.model.name = "ViT-B/61"
  with pytest.raises(ConfigError, match="model.name 'ViT-B/61' is not a registered model; did "
                                        "you mean ViT-B/16"):
    resolved(c)
  c.model.update(name="ViT-custom", patch_size=8)
  with pytest.raises(ConfigError, match="is a custom size, so set model.hidden_size"):
    resolved(c)
  # A misspelt name is refused even when every size is set (as the quickstart config does).
  q = quickstart.get_config()
  assert resolved(q).model.hidden_size == 128
  q.model.name = "ViT-Q/99"
  with pytest.raises(ConfigError, match="not a registered model"):
    resolved(q)


def test_b16_has_the_paper_recipe():
  c = b16.get_config()
  assert (c.batch_size, c.lr, c.warmup_steps, c.decay, c.weight_decay) == (
      4096, 1e-3, 10_000, "linear", 0.03)
  assert (c.adam_b1, c.adam_b2, c.num_epochs, c.image_size) == (0.9, 0.999, 90.0, 224)
  assert (c.model.dropout, c.model.representation_size, c.model.head_bias_init) == (
      0.1, 768, -10.0)
  assert b16.get_config("gap").model.pool == "gap"


def test_a_preset_named_on_the_command_line_replaces_a_custom_configs_sizes():
  def model_after(overrides):
    c = quickstart.get_config()  # ViT-custom: every size field set
    c.update_from_flattened_dict(overrides)
    return resolved(configuration.name_from_command_line(c, overrides)).model

  m = model_after({"model.name": "ViT-S/16", "model.num_layers": 2})
  assert (m.patch_size, m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers) == (16, 384, 6,
                                                                                 1536, 2)
  assert m.pool == "gap"  # the file's other model keys stay
  for overrides in ({"lr": 0.1}, {"model.name": "ViT-custom", "model.hidden_size": 64}):
    m = model_after(overrides)  # no preset named: the file's sizes stay
    assert (m.patch_size, m.num_layers) == (7, 4)
    assert m.hidden_size == overrides.get("model.hidden_size", 128)


def test_a_name_of_another_family_switches_any_config_and_keeps_only_its_keys(caplog):
  c = b16.get_config()  # a ViT config: posemb, pool, attention ... at their defaults
  c.model.name = "Mixer-B/16"
  r = resolved(c)
  assert (r.model.tokens_mlp_dim, r.model.channels_mlp_dim, r.model.patch_size) == (384, 3072, 16)
  assert "posemb" not in r.model and "num_heads" not in r.model and "resnet_layers" not in r.model
  assert (r.model.representation_size, r.model.dropout, r.model.dtype) == (768, 0.1, "bfloat16")
  configuration.validate(configuration.resolve_data(r, num_train=10**6, num_classes=21843),
                         device_count=1)
  c = b16.get_config()
  c.model.name = "R50+ViT-B/16"
  assert (resolved(c).model.resnet_layers, resolved(c).model.patch_size) == ((3, 4, 9), 1)
  c = b16.get_config()
  c.model.update(name="Mixer-B/16", posemb="sincos2d", pool="gap")
  with pytest.raises(ConfigError, match=r"model.pool='gap' does not apply to Mixer-B/16 \(a "
                                        r"Mixer model\); .*model.posemb='sincos2d' does not"):
    resolved(c)
  # Sizes of another family describe another architecture: dropped, and the log says so.
  q = quickstart.get_config()
  q.model.resnet_layers = (2, 2)
  q.model.pool = "token"  # the quickstart's gap pooling would have no meaning for a Mixer
  q.model.name = "Mixer-S/16"
  with caplog.at_level("WARNING"):
    r = resolved(q)
  assert "resnet_layers" not in r.model and "num_heads" not in r.model
  assert r.model.hidden_size == 128  # a size both families have: the config's explicit value
  assert ("Mixer-S/16 does not use model.mlp_dim=256, model.num_heads=4, "
          "model.resnet_layers=(2, 2) (sizes of another family); dropped") in caplog.text


@pytest.mark.parametrize("module,name", [("r50_b16", "R50+ViT-B/16"), ("mixer_b16", "Mixer-B/16")])
def test_the_hybrid_and_mixer_recipes_resolve_and_validate(module, name):
  import importlib

  c = importlib.import_module(f"configs.{module}").get_config()
  r = configuration.resolve_data(resolved(c), num_train=10**6, num_classes=1000)
  configuration.validate(r, device_count=1)
  assert r.model.name == name and (r.batch_size, r.optimizer, r.warmup_steps) == (
      4096, "adam", 10_000)
  assert r.model.dropout == (0.1 if module == "r50_b16" else 0.0)


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


@pytest.mark.parametrize("variant,own", [("t2t", "sinusoid"), ("tnt", "learn1d"),
                                         ("mixer", None)])
def test_runs_written_before_a_family_had_posemb_keys_resume_with_its_own_table(
    tmp_path, variant, own):
  c = configuration.resolve_data(resolved(quickstart.get_config(variant)), num_train=4000,
                                 num_classes=10)
  assert c.model.get("posemb") == own  # Mixer has no position embedding at all
  old = json.loads(configuration.to_json(c))
  for key in ("posemb", "posemb_mode"):
    old["model"].pop(key, None)  # the config.json of a run written before the keys existed
  (tmp_path / "config.json").write_text(json.dumps(old))
  assert configuration.check_workdir(c, str(tmp_path)) is True
  if own is not None:
    c.model.posemb = "learn2d"  # not what the earlier run computed
    with pytest.raises(ConfigError, match=f"model.posemb: '{own}' -> 'learn2d'"):
      configuration.check_workdir(c, str(tmp_path))


def changed(changes: dict, config=None):
  """The resolved quickstart config with dotted keys set to any value, of any type."""
  d = (config or resolved(quickstart.get_config())).to_dict()
  for key, value in changes.items():
    *path, last = key.split(".")
    section = d
    for part in path:
      section = section[part]
    section[last] = value
  return ml_collections.ConfigDict(d, type_safe=False)


def problems(config, **kw) -> str:
  with pytest.raises(ConfigError) as err:
    configuration.validate(config, device_count=kw.pop("device_count", 1), **kw)
  return str(err.value)


@pytest.mark.parametrize("changes, message", [
    ({"lr": "0.001"}, "lr must be a float, got str '0.001'"),
    ({"batch_size": 3.5}, "batch_size must be an int, got float 3.5"),
    ({"model.num_heads": "4"}, "model.num_heads must be an int, got str '4'"),
    ({"seed": True}, "seed must be an int, got bool True"),  # a bool is not an int here
    ({"accum_steps": False}, "accum_steps must be an int, got bool False"),
    ({"dataset": 5}, "dataset must be a string, got int 5"),
    ({"download": "yes"}, "download must be a bool (True or False), got str 'yes'"),
    ({"model.scan_layers": 1}, "model.scan_layers must be a bool (True or False), got int 1"),
    ({"fewshot.shots": ("a",)}, "fewshot.shots must be a tuple of ints, got tuple ('a',)"),
    ({"fewshot.shots": 5}, "fewshot.shots must be a tuple of ints, got int 5"),
    ({"mesh": None}, "mesh must be a section of keys (a ConfigDict), got NoneType None"),
    ({"adam_b1": 1.0}, "adam_b1 must be in [0, 1), got 1.0"),
    ({"adam_b2": -0.1}, "adam_b2 must be in [0, 1), got -0.1"),
    ({"momentum": 1.5}, "momentum must be in [0, 1), got 1.5"),
    ({"keep_checkpoints": 0}, "keep_checkpoints must be positive, got 0"),
    ({"fewshot.draws": 0}, "fewshot.draws must be positive, got 0"),
    ({"fewshot.pool": -3}, "fewshot.pool must be positive, got -3"),
    ({"nonfinite": "ignore"}, "nonfinite 'ignore' is not one of stop, skip"),
    ({"model.head_bias_init": float("nan")}, "model.head_bias_init must be finite, got nan"),
    ({"total_steps": 100}, "warmup_steps 100 is not below total_steps 100"),
])
def test_each_field_is_checked_for_type_and_range(changes, message):
  assert message in problems(changed(changes))


def test_an_int_is_a_float_and_any_head_bias_is_fine():
  configuration.validate(changed({"lr": 1, "num_epochs": 3, "model.head_bias_init": -1e4,
                                  "fewshot.shots": [1, 5], "nonfinite": "skip"}), device_count=1)


def test_unknown_keys_of_a_config_file_are_reported_with_the_closest_key():
  c = quickstart.get_config()
  c.batchsize = 8  # a config file's typo: the key is added, and nothing would read it
  c.model.hiden_size = 64
  c.zzqqxx = 1
  text = problems(resolved(c))
  assert "unknown config key 'batchsize'; did you mean 'batch_size'?" in text
  assert "unknown config key 'model.hiden_size'; did you mean 'model.hidden_size'?" in text
  assert "unknown config key 'zzqqxx' (no known key is close to it)" in text
  assert text.count("did you mean") == 2


def test_missing_keys_are_reported():
  d = resolved(quickstart.get_config()).to_dict()
  del d["nonfinite"], d["model"]["dropout"]
  text = problems(ml_collections.ConfigDict(d))
  assert "missing config keys 'nonfinite', 'model.dropout'" in text


def test_every_problem_is_reported_in_one_error():
  c = changed({"lr": "fast", "adam_b1": 2.0, "keep_checkpoints": 0, "image_size": 30,
               "batch_size": 12, "model.num_heads": 0, "nonfinite": "ignore"})
  c.batchsize = 8
  text = problems(c, device_count=8)
  for part in ("lr must be a float, got str 'fast'", "adam_b1 must be in [0, 1), got 2.0",
               "keep_checkpoints must be positive, got 0", "did you mean 'batch_size'",
               "image_size 30 is not divisible by model.patch_size 7",
               "not divisible by the 8 devices", "model.num_heads must be positive, got 0",
               "nonfinite 'ignore' is not one of stop, skip"):
    assert part in text
  assert "model.hidden_size 128 is not divisible" not in text  # num_heads failed: not divided by


def test_nonsense_of_any_type_gives_config_errors_naming_the_key():
  base = resolved(quickstart.get_config())
  sections = ("model", "fewshot", "mesh")
  keys = [k for k in base.to_dict() if k not in sections]
  keys += [f"{s}.{k}" for s in sections for k in base.to_dict()[s]]
  junk = ["4", 3.5, True, None, ("a",), [], {}, float("inf"), -1, 0, (0, 5), "", "cudnn"]
  refused = 0
  for key in [*keys, *sections]:
    for value in junk:
      c = changed({key: value}, base)
      try:
        configuration.validate(c, device_count=8, backend="gpu")
        text = ""
      except ConfigError as e:
        text = str(e)
      own = None
      if key not in sections:  # the value as the config holds it (a dict becomes a ConfigDict)
        own = config_schema.check_value(key, config_schema.SCHEMA[key],
                                        config_schema.read(c)[0][key])
      if key in sections:  # not a section, or an empty one that lacks every key
        assert f"{key} must be a section of keys" in text or f"'{key}." in text, (key, value)
      elif own:  # what is wrong with the value on its own is reported, as the schema words it
        assert own in text, (key, value, text)
      else:  # a value fine on its own may still clash with another key: then it is named
        assert not text or key in text or key.split(".")[-1] in text, (key, value, text)
      refused += bool(text)
      try:
        configuration.resolve_model(c)
      except ConfigError as e:
        assert "model" in str(e), (key, value)
  assert refused > len(keys) * len(junk) // 2


def test_resolve_model_names_a_wrongly_typed_name():
  c = changed({"model.name": 5, "model.patch_size": None})
  with pytest.raises(ConfigError, match="model.name must be a string, got int 5"):
    configuration.resolve_model(c)
  with pytest.raises(ConfigError, match="model must be a section"):
    configuration.resolve_model(changed({"model": "ViT-B/16"}))


def test_init_from_is_a_workdir_or_an_npz_file(tmp_path):
  (tmp_path / "params.npz").write_bytes(b"")
  (tmp_path / "notes.txt").write_text("")
  for ok in (str(tmp_path), str(tmp_path / "params.npz"), ""):
    configuration.validate(changed({"init_from": ok}), device_count=1)
  assert (f"init_from {tmp_path}/nothing does not exist; give a training run's workdir or a .npz "
          "parameter file") in problems(changed({"init_from": f"{tmp_path}/nothing"}))
  assert (f"init_from {tmp_path}/notes.txt is neither a directory nor a .npz file"
          in problems(changed({"init_from": f"{tmp_path}/notes.txt"})))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unwritable_workdir_is_refused_before_anything_is_created(tmp_path):
  c = configuration.resolve_data(resolved(quickstart.get_config()), num_train=4000,
                                 num_classes=10)
  locked = tmp_path / "locked"
  (locked / "old").mkdir(parents=True)
  locked.chmod(0o500)
  try:
    with pytest.raises(ConfigError, match=re.escape(
        f"workdir {locked}/new/run is not writable (permission denied on {locked})")):
      configuration.check_workdir(c, str(locked / "new" / "run"))
    (locked / "old").chmod(0o500)
    with pytest.raises(ConfigError, match=re.escape(f"permission denied on {locked}/old)")):
      configuration.check_workdir(c, str(locked / "old"))
    assert sorted(p.name for p in locked.iterdir()) == ["old"]
  finally:
    (locked / "old").chmod(0o700)
    locked.chmod(0o700)
  assert configuration.check_workdir(c, str(tmp_path / "a" / "b")) is False
  assert not (tmp_path / "a").exists()


def test_nonfinite_may_change_on_resume(tmp_path):
  c = configuration.resolve_data(resolved(quickstart.get_config()), num_train=4000,
                                 num_classes=10)
  (tmp_path / "config.json").write_text(configuration.to_json(c))
  c.nonfinite = "skip"  # resuming a run that stopped on a non-finite loss
  assert configuration.check_workdir(c, str(tmp_path)) is True
  old = json.loads(configuration.to_json(c))
  del old["nonfinite"]  # a run written before the key existed
  (tmp_path / "config.json").write_text(json.dumps(old))
  c.nonfinite = "stop"
  assert configuration.check_workdir(c, str(tmp_path)) is True


def test_permission_is_checked_on_the_nearest_existing_directory(tmp_path, monkeypatch):
  # The chmod test above is skipped as root; here os.access denies one directory instead.
  c = configuration.resolve_data(resolved(quickstart.get_config()), num_train=4000,
                                 num_classes=10)
  (tmp_path / "ro").mkdir()
  (tmp_path / "file").write_text("")
  real = os.access
  monkeypatch.setattr(os, "access", lambda p, mode: p != str(tmp_path / "ro") and real(p, mode))
  with pytest.raises(ConfigError, match=re.escape(
      f"permission denied on {tmp_path}/ro); choose another --workdir or fix its permissions")):
    configuration.check_workdir(c, str(tmp_path / "ro" / "x" / "run"))
  with pytest.raises(ConfigError, match=re.escape(
      f"cannot be created: {tmp_path}/file is not a directory")):
    configuration.check_workdir(c, str(tmp_path / "file" / "run"))
  assert configuration.check_workdir(c, str(tmp_path / "rw" / "run")) is False
  assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "ro"]
