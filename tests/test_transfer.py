"""Transfer sweeps: choosing per dataset on minival, the final runs, the report; end to end on
an image folder and on VTAB tasks mocked by tensorflow-datasets."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vit_jax import transfer
from vit_jax.sweep_config import run_name

ROOT = Path(__file__).resolve().parents[1]


def selection(**kw):
  return {"group": "config_arg", "choose": "lr",
          "final": lambda o: {**o, "eval_split": "test"}, **kw}


def sweep_rows(accuracies):
  """Runs and finished rows from {(dataset, lr): minival accuracy or None (unfinished)}."""
  runs = [{"config_arg": d, "lr": lr} for d, lr in accuracies]
  rows = [{"run": run_name(r), **r, "eval/accuracy": acc}
          for r, acc in zip(runs, accuracies.values(), strict=True) if acc is not None]
  return runs, rows


def test_the_best_minival_run_is_chosen_per_dataset_first_on_ties():
  runs, rows = sweep_rows({("a", 0.01): 0.5, ("a", 0.03): 0.7, ("a", 0.1): 0.7,
                           ("b", 0.01): 0.9, ("b", 0.03): None, ("c", 0.01): None})
  chosen = transfer.choose(rows, runs, selection())
  assert chosen == {"a": {"config_arg": "a", "lr": 0.03}, "b": {"config_arg": "b", "lr": 0.01}}
  finals = transfer.final_runs(chosen, selection())
  assert finals == [{"config_arg": "a", "lr": 0.03, "eval_split": "test"},
                    {"config_arg": "b", "lr": 0.01, "eval_split": "test"}]


def test_report_gives_minival_per_rate_the_choice_the_test_accuracy_and_group_means():
  runs, rows = sweep_rows({("m,x", 0.01): 0.5, ("m,x", 0.03): 0.6, ("m,y", 0.01): 0.8,
                           ("m,y", 0.03): 0.7, ("m,z", 0.01): None, ("m,z", 0.03): None})
  sel = selection(label=lambda v: v.split(",")[1],
                  means={"mean xy": ["m,x", "m,y"], "mean all": ["m,x", "m,y", "m,z"]})
  finals = transfer.final_runs(transfer.choose(rows, runs, sel), sel)
  rows += [{"run": run_name(finals[0]), **finals[0], "eval/accuracy": 0.25},
           {"run": run_name(finals[1]), **finals[1], "eval/accuracy": 0.75}]
  table, tests = transfer.report(rows, runs, finals, sel)
  assert "| x | 0.5000 | 0.6000 | 0.03 | 0.2500 |" in table
  assert "| y | 0.8000 | 0.7000 | 0.01 | 0.7500 |" in table
  assert "| z | n/a | n/a | n/a | n/a |" in table
  assert "**0.5000**" in table and "(2 of 3 finished)" in table
  assert tests == [("x", 0.25), ("y", 0.75), ("z", None), ("mean xy", 0.5), ("mean all", None)]


def test_transfer_sweep_arguments():
  from configs.sweeps import transfer as sweep_file

  runs = sweep_file.get_sweep("s16,cifar10,oxford_flowers102")
  assert len(runs) == 8 and runs[0] == {"config_arg": "s16,cifar10", "lr": 0.001,
                                        "train_split": "train[:98%]", "eval_split": "train[98%:]"}
  final = sweep_file.final(runs[5])
  assert (final["train_split"], final["eval_split"]) == ("train+validation", "test")
  with pytest.raises(ValueError, match="no fine-tuning preset for dataset 'mnist'"):
    sweep_file.get_sweep("s16,mnist")
  with pytest.raises(ValueError, match="MODEL,DATASET"):
    sweep_file.get_sweep("s16")


def test_vtab_sweep_covers_19_tasks_in_three_groups():
  from configs.sweeps import vtab as sweep_file

  runs = sweep_file.get_sweep("b16")
  assert len(runs) == 19 * 4
  means = sweep_file.get_selection("b16")["means"]
  assert {k: len(v) for k, v in means.items()} == {
      "mean natural": 7, "mean specialized": 4, "mean structured": 8, "mean of 19": 19}
  final = sweep_file.final({"config_arg": "b16,vtab:eurosat", "lr": 0.01})
  assert final == {"config_arg": "b16,vtab:eurosat", "lr": 0.01,
                   "train_split": "train[:800]+train[16200:16400]", "eval_split": "train[21600:]"}


TINY = '''
from configs.sweeps import {base} as base

get_selection, get_tables = base.get_selection, base.get_tables


def get_sweep(arg=None):
  return [r for r in base.get_sweep(arg) if r["lr"] in {lrs}]


def get_config(arg=None):
  c = base.get_config(arg)
  c.total_steps, c.warmup_steps, c.batch_size, c.image_size = 3, 1, 8, 16
  c.log_every, c.eval_every, c.checkpoint_every = 1, 0, 3
  c.model.name, c.model.pool, c.model.patch_size = "ViT-custom", "gap", 8
  c.model.hidden_size, c.model.num_layers, c.model.num_heads, c.model.mlp_dim = 8, 1, 2, 8
  c.image_channels = 3
  return c
'''
MOCK = '''
import os
if os.environ.get("MOCK_TFDS_EXAMPLES"):
  import tensorflow_datasets as tfds
  MOCK = tfds.testing.mock_data(num_examples=int(os.environ["MOCK_TFDS_EXAMPLES"]))
  MOCK.__enter__()  # kept referenced: a collected context would undo the mock
'''


def run_sweep(tmp_path, base, arg, *flags, env=None, lrs=(0.001, 0.03)):
  config = tmp_path / f"tiny_{base}.py"
  config.write_text(TINY.format(base=base, lrs=lrs))
  return subprocess.run([sys.executable, "-m", "vit_jax.sweep", "--config", f"{config}:{arg}",
                         "--workdir", str(tmp_path / "sweep"), *flags], cwd=ROOT,
                        capture_output=True, text=True, timeout=900,
                        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def results(tmp_path):
  with open(tmp_path / "sweep" / "results.csv") as f:
    return list(csv.DictReader(f))


@pytest.mark.slow
def test_transfer_sweep_on_an_image_folder_end_to_end(tmp_path):
  from vit_jax.data import bundled

  bundled.write_folder(str(tmp_path / "digits"), "png", per_class=10)
  done = run_sweep(tmp_path, "transfer", f"quickstart,folder:{tmp_path / 'digits'}",
                   "--config.seed=1")
  assert done.returncode == 0, done.stdout + done.stderr
  rows = results(tmp_path)
  assert [r["phase"] for r in rows] == ["select", "select", "final"]
  assert [(r["train_split"], r["eval_split"]) for r in rows] == [
      ("train[:90%]", "train[90%:]")] * 2 + [("train", "test")]
  best = max(rows[:2], key=lambda r: float(r["eval/accuracy"]))
  assert rows[2]["lr"] == best["lr"]
  md = (tmp_path / "sweep" / "results.md").read_text()
  assert f"| folder:{tmp_path / 'digits'} |" in md and "chosen lr" in md
  assert (tmp_path / "sweep" / "results.png").read_bytes()[:4] == b"\x89PNG"
  config = (tmp_path / "sweep" / "runs" / best["run"] / "config.json").read_text()
  assert '"seed": 1' in config  # flags after the sweep's own reach every run


@pytest.mark.slow
def test_vtab_sweep_end_to_end_on_mocked_tasks(tmp_path):
  (tmp_path / "site").mkdir()
  (tmp_path / "site" / "sitecustomize.py").write_text(MOCK)
  env = {"MOCK_TFDS_EXAMPLES": "12",
         "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{ROOT}"}
  done = run_sweep(tmp_path, "vtab", "quickstart,dtd,smallnorb_azimuth",
                   f"--config.data_dir={tmp_path / 'tfds'}", env=env, lrs=(0.01,))
  assert done.returncode == 0, done.stdout + done.stderr
  rows = results(tmp_path)
  assert [r["phase"] for r in rows] == ["select"] * 2 + ["final"] * 2
  assert rows[2]["train_split"] == "train[:800]+validation[:200]"
  assert rows[3]["eval_split"] == "test[50%:]"
  md = (tmp_path / "sweep" / "results.md").read_text()
  for line in ("| dtd |", "| smallnorb_azimuth |", "**mean natural**", "**mean structured**",
               "**mean of 2**"):
    assert line in md
