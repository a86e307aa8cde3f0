"""Every config file that ships resolves and validates, and so does every run of the posemb sweep.

A config whose model name stopped being registered (or whose keys drifted from the schema) would
otherwise fail only when someone runs it.
"""

import importlib

import pytest

from vit_jax import configuration

# (module, argument): every config of configs/ and configs/sweeps/, with its variants.
CONFIGS = [("quickstart", None), ("quickstart", "hybrid"), ("quickstart", "mixer"),
           ("b16", None), ("b16", "gap"), ("r50_b16", None), ("mixer_b16", None),
           ("finetune", "b16,cifar10"), ("finetune", "quickstart_mixer,folder:/data"),
           ("sweeps.posemb", None)]


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
