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
           ("sweeps.posemb", None), ("sweeps.architectures", "vit")]


def checked(config):
  config = configuration.resolve_model(config)
  config = configuration.resolve_data(config, num_train=1_300_000, num_classes=10)
  configuration.validate(config, device_count=1)
  return config


@pytest.mark.parametrize("module,arg", CONFIGS)
def test_config_resolves_and_validates(module, arg):
  config = importlib.import_module(f"configs.{module}").get_config(arg)
  assert checked(config).model.name


def test_every_run_of_the_position_embedding_sweep_validates():
  from configs.sweeps import posemb

  for overrides in posemb.get_sweep():
    config = posemb.get_config()
    for key, value in overrides.items():
      section, _, name = key.rpartition(".")
      (config[section] if section else config)[name] = value
    checked(config)


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
