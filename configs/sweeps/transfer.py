"""The paper's transfer sweep: each dataset x learning rate, the rate chosen on minival.

  python -m vit_jax.sweep --config configs/sweeps/transfer.py:b16,cifar10,oxford_iiit_pet \\
      --workdir DIR --config.init_from=PRETRAINED_RUN_OR_FILE

The argument is `MODEL,DATASET[,DATASET...]` (MODEL and DATASET as configs/finetune.py takes
them; no argument: ViT-B/16 on the paper's five datasets). Each dataset is fine-tuned with the
paper's recipe (configs/finetune.py) at every learning rate of `finetune.LEARNING_RATES`, trained
on the training data minus a minival (a preset's: 2% of CIFAR's training images; a folder's:
`MINIVAL_PERCENT` of each class) and evaluated on the minival. The best rate per dataset is then
used once more, trained on all training data and evaluated on the test split: results.md's
transfer table, results.csv (`phase` select / final), results.png (test accuracy per dataset).
`--config.key=value` flags after the sweep's own are given to every run (the pretrained weights).
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from configs import finetune
from vit_jax.data import folder
from vit_jax.data.presets import PRESETS

DEFAULT = "b16,imagenet2012,cifar10,cifar100,oxford_iiit_pet,oxford_flowers102"
MINIVAL_PERCENT = 10  # of a folder dataset's training images, per class


def parse(arg: str | None) -> tuple[str, list[str]]:
  """`MODEL,DATASET,...` -> (MODEL, [DATASET, ...]); ValueError naming the usage."""
  model, *datasets = (arg or DEFAULT).split(",")
  if not model or not datasets or not all(datasets):
    raise ValueError(f"'{arg}' is not MODEL,DATASET[,DATASET...]; e.g. "
                     "configs/sweeps/transfer.py:b16,cifar10,oxford_iiit_pet")
  return model, datasets


def splits(dataset: str) -> tuple[dict[str, str], dict[str, str]]:
  """The (train, eval) splits of a selection run (minival) and of the final run (test)."""
  if dataset.startswith(folder.PREFIX):
    root = os.path.abspath(os.path.expanduser(dataset[len(folder.PREFIX):]))
    keep = 100 - MINIVAL_PERCENT
    return ({"train_split": f"train[:{keep}%]", "eval_split": f"train[{keep}%:]"},
            {"train_split": "train", "eval_split": folder.eval_split_name(root, None)})
  if dataset not in PRESETS:
    raise ValueError(f"no minival is defined for dataset '{dataset}'; choose one of "
                     f"{', '.join(finetune.STEPS)} or folder:/path")
  preset = PRESETS[dataset]
  return ({"train_split": preset.train_split, "eval_split": preset.eval_split},
          {"train_split": preset.train_all, "eval_split": preset.test_split})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """One run's config: `MODEL,DATASET` as configs/finetune.py takes it."""
  return finetune.get_config(arg)


def get_sweep(arg: str | None = None) -> list[dict[str, Any]]:
  """Dataset-major: every learning rate of the first dataset, then of the next."""
  model, datasets = parse(arg)
  runs = []
  for dataset in datasets:
    finetune.get_config(f"{model},{dataset}")  # unknown models and datasets fail here
    select, _ = splits(dataset)
    for lr in finetune.LEARNING_RATES:
      runs.append({"config_arg": f"{model},{dataset}", "lr": lr, **select})
  return runs


def final(overrides: dict[str, Any]) -> dict[str, Any]:
  """The chosen run again on all training data, evaluated on the test split."""
  dataset = overrides["config_arg"].split(",", 1)[1]
  return {**overrides, **splits(dataset)[1]}


def get_selection(arg: str | None = None) -> dict[str, Any]:
  """Choose `lr` per dataset (`config_arg`) on minival; `final` makes the test run."""
  del arg
  return {"group": "config_arg", "choose": "lr", "final": final,
          "label": lambda value: value.split(",", 1)[1]}


def get_tables(arg: str | None = None) -> list[dict[str, Any]]:
  """Minival accuracy: datasets x learning rates."""
  del arg
  return [{"title": "Minival accuracy: dataset x learning rate", "rows": "config_arg",
           "cols": "lr", "where": {}}]
