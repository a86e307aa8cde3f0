"""Every config file that ships resolves and validates, and so does every run of the posemb sweep.

A config whose model name stopped being registered (or whose keys drifted from the schema) would
otherwise fail only when someone runs it.
"""

import importlib

import pytest

from vit_jax import configuration

# (module, argument): every config of configs/ and configs/sweeps/, with its variants.
CONFIGS = [("quickstart", None), ("quickstart", "hybrid"), ("quickstart", "mixer"),
           ("quickstart", "t2t"), ("quickstart", "tnt"),
           ("b16", None), ("b16", "gap"), ("r50_b16", None), ("mixer_b16", None),
           ("t2t_vit_14", None), ("tnt_s", None),
           ("finetune", "b16,cifar10"), ("finetune", "quickstart_mixer,folder:/data"),
           ("sweeps.posemb", None), ("sweeps.posemb", "t2t"), ("sweeps.posemb", "tnt"),
           ("sweeps.architectures", "vit")]


def checked(config):
  config = configuration.resolve_model(config)
  config = configuration.resolve_data(config, num_train=1_300_000, num_classes=10)
  configuration.validate(config, device_count=1)
  return config


@pytest.mark.parametrize("module,arg", CONFIGS)
def test_config_resolves_and_validates(module, arg):
  config = importlib.import_module(f"configs.{module}").get_config(arg)
  assert checked(config).model.name


@pytest.mark.parametrize("arg,family,runs", [(None, "ViT", 54), ("t2t", "T2T-ViT", 39),
                                              ("tnt", "TNT", 36), ("tnt,1", "TNT", 12)])
def test_every_run_of_the_position_embedding_sweep_validates(arg, family, runs):
  from configs.sweeps import posemb
  from vit_jax.models import registry

  sweep = posemb.get_sweep() if arg is None else posemb.get_sweep(arg)
  assert len(sweep) == runs
  built = set()
  for overrides in sweep:
    config = posemb.get_config(arg)
    for key, value in overrides.items():
      section, _, name = key.rpartition(".")
      (config[section] if section else config)[name] = value
    config = checked(config)
    assert registry.family_of(config.model.name).name == family
    assert (config.model.posemb, config.model.posemb_mode) == (
        overrides["model.posemb"], overrides["model.posemb_mode"])
    built.add(config.model.posemb)
  assert built >= {kind for kind, _ in posemb.CELLS}
  if family == "T2T-ViT":
    assert "sinusoid" in built


def test_the_position_embedding_sweep_names_a_bad_argument():
  from configs.sweeps import posemb

  for arg in ("mixer", "t2t,4", "t2t,x"):
    with pytest.raises(ValueError, match="FAMILY\\[,SEEDS\\]"):
      posemb.get_sweep(arg)


def test_every_run_of_the_architecture_sweep_validates():
  from configs.sweeps import architectures
  from vit_jax.sweep_config import CONFIG_ARG

  runs = architectures.get_sweep("3")
  assert {run[CONFIG_ARG] for run in runs} == set(architectures.ARCHITECTURES)
  assert len(runs) == len(architectures.ARCHITECTURES) * len(architectures.SEEDS)
  names = set()
  for overrides in runs:
    config = architectures.get_config(overrides[CONFIG_ARG])
    for key, value in overrides.items():
      if key != CONFIG_ARG:
        config[key] = value
    names.add(checked(config).model.name)
  assert names == {"ViT-custom", "ResNet+ViT-custom", "T2T-ViT-custom", "TNT-custom",
                   "Mixer-custom"}
