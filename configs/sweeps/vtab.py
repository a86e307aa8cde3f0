"""VTAB-1k: the 19 tasks x learning rates, chosen on val200, reported on test.

  python -m vit_jax.sweep --config configs/sweeps/vtab.py:b16 --workdir DIR \\
      --config.init_from=PRETRAINED_RUN_OR_FILE

The argument is `MODEL[,TASK...]` (default: all 19 tasks of vit_jax.data.vtab). Each task is
fine-tuned with the paper's recipe (configs/finetune.py: 2,500 steps) on its 800 training
examples (`train800`) at each learning rate of `finetune.LEARNING_RATES`, evaluated on `val200`;
the best rate is used once more on all 1,000 (`train800val200`) and evaluated on `test`.
results.md gives every task, the natural / specialized / structured means and the mean of all
19; results.png the test accuracies. A task whose tensorflow-datasets data is not prepared fails
with a one-line error in its log (logs/<run>.txt) and shows as n/a; the others still run.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from configs import finetune
from vit_jax.data import vtab


def parse(arg: str | None) -> tuple[str, list[str]]:
  """`MODEL[,TASK...]` -> (MODEL, tasks); ValueError naming an unknown task."""
  model, *tasks = (arg or "b16").split(",")
  tasks = tasks or list(vtab.TASKS)
  for name in tasks:
    vtab.task(vtab.PREFIX + name)
  return model, tasks


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """One run's config: `MODEL,vtab:TASK` as configs/finetune.py takes it."""
  return finetune.get_config(arg)


def get_sweep(arg: str | None = None) -> list[dict[str, Any]]:
  """Task-major: every learning rate of one task, then the next."""
  model, tasks = parse(arg)
  finetune.get_config(f"{model},{vtab.PREFIX}{tasks[0]}")  # an unknown model fails here
  return [{"config_arg": f"{model},{vtab.PREFIX}{name}", "lr": lr}
          for name in tasks for lr in finetune.LEARNING_RATES]


def final(overrides: dict[str, Any]) -> dict[str, Any]:
  """The chosen rate on train800val200, evaluated on the task's test split."""
  task = vtab.task(overrides["config_arg"].split(",", 1)[1])
  return {**overrides, "train_split": task.train800val200, "eval_split": task.test}


def get_selection(arg: str | None = None) -> dict[str, Any]:
  """Choose `lr` per task on val200; the group means VTAB reports."""
  model, tasks = parse(arg)
  key = {name: f"{model},{vtab.PREFIX}{name}" for name in tasks}
  means = {group: [key[n] for n in tasks if vtab.TASKS[n].group == group]
           for group in vtab.GROUPS}
  means = {f"mean {group}": members for group, members in means.items() if members}
  means[f"mean of {len(tasks)}"] = list(key.values())
  return {"group": "config_arg", "choose": "lr", "final": final, "means": means,
          "label": lambda value: value.split(vtab.PREFIX, 1)[1],
          "title": "VTAB-1k: test accuracy at the learning rate chosen on val200"}


def get_tables(arg: str | None = None) -> list[dict[str, Any]]:
  """val200 accuracy: tasks x learning rates."""
  del arg
  return [{"title": "val200 accuracy: task x learning rate", "rows": "config_arg", "cols": "lr",
           "where": {}}]
