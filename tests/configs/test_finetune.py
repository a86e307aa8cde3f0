import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import finetune
from vit_jax import configuration
from vit_jax.data import bundled

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("dataset, steps", [("cifar10", 10_000), ("cifar100", 10_000),
                                            ("imagenet2012", 20_000), ("oxford_iiit_pet", 500),
                                            ("oxford_flowers102", 500), ("folder:/data/x", 500),
                                            ("vtab:clevr_count", 2_500)])
def test_the_papers_recipe_for_each_dataset(dataset, steps):
  c = configuration.resolve_model(finetune.get_config(f"b16,{dataset}"))
  configuration.validate(c, device_count=8)
  assert (c.dataset, c.total_steps, c.image_size) == (dataset, steps, 384)
  assert (c.optimizer, c.momentum, c.batch_size, c.grad_clip_norm) == ("sgd", 0.9, 512, 1.0)
  assert (c.weight_decay, c.decay, c.model.dropout) == (0.0, "cosine", 0.0)
  assert c.lr in finetune.LEARNING_RATES and 0 < c.warmup_steps < steps
  assert c.reset_head and c.model.representation_size == 0 and c.model.head_bias_init == 0.0
  assert (c.model.name, c.model.patch_size) == ("ViT-B/16", 16)


def test_models_by_key_by_name_and_the_quickstart_model():
  assert finetune.get_config("l16,cifar10").model.name == "ViT-L/16"
  assert finetune.get_config("ViT-S/32,cifar10").model.name == "ViT-S/32"
  small = finetune.get_config("quickstart,folder:/d").model
  assert (small.name, small.patch_size, small.dropout) == ("ViT-custom", 7, 0.0)


@pytest.mark.parametrize("arg, message", [
    (None, "missing MODEL,DATASET"), ("b16", "missing MODEL,DATASET"),
    ("b17,cifar10", "unknown model 'b17'"),
    ("b16,mnist", "no fine-tuning preset for dataset 'mnist'"),
    ("b16,vtab:mnist", "unknown VTAB-1k task 'mnist'")])
def test_bad_arguments_name_the_problem_and_the_usage(arg, message):
  with pytest.raises(ValueError, match=f"{message}.*configs/finetune.py:b16,cifar10"):
    finetune.get_config(arg)


def main(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "vit_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.slow
def test_fine_tuning_a_run_at_twice_the_resolution_on_a_folder(tmp_path):
  small = ["--config.model.hidden_size=32", "--config.model.num_layers=1",
           "--config.model.num_heads=2", "--config.model.mlp_dim=32", "--config.batch_size=16",
           "--config.total_steps=4", "--config.warmup_steps=1", "--config.log_every=2",
           "--config.eval_every=2", "--config.checkpoint_every=2"]
  source = tmp_path / "pretrained"
  first = main("--config", "configs/quickstart.py", "--workdir", str(source), *small)
  assert first.returncode == 0, first.stderr
  digits = tmp_path / "digits"
  bundled.write_folder(str(digits), "png", per_class=3)
  tuned = tmp_path / "tuned"
  second = main("--config", f"configs/finetune.py:quickstart,folder:{digits}", "--workdir",
                str(tuned), f"--config.init_from={source}", "--config.image_size=56", *small)
  assert second.returncode == 0, second.stderr
  log = (tuned / "train.log").read_text()
  assert "patch grid 4x4 -> 8x8; new head/bias, head/kernel" in log
  assert (tuned / "classes.txt").read_text().split() == [str(d) for d in range(10)]


@pytest.mark.slow
def test_fine_tuning_starts_from_the_sources_features(tmp_path):
  """At the source's resolution and data, step 0's few-shot accuracy is the source's own."""
  small = ["--config.model.hidden_size=32", "--config.model.num_layers=1",
           "--config.model.num_heads=2", "--config.model.mlp_dim=32", "--config.batch_size=16",
           "--config.warmup_steps=1", "--config.log_every=2", "--config.eval_every=0",
           "--config.fewshot.shots=(1, 5)", "--config.fewshot.pool=300",
           "--config.dataset=bundled_mnist", "--config.image_size=28"]
  source = tmp_path / "pretrained"
  first = main("--config", "configs/quickstart.py", "--workdir", str(source), *small,
               "--config.total_steps=6", "--config.checkpoint_every=6")
  assert first.returncode == 0, first.stderr
  tuned = tmp_path / "tuned"
  second = main("--config", "configs/finetune.py:quickstart,folder:/unused", "--workdir",
                str(tuned), f"--config.init_from={source}", *small, "--config.total_steps=2",
                "--config.checkpoint_every=2")
  assert second.returncode == 0, second.stderr
  source_row = json.loads((source / "metrics.jsonl").read_text().splitlines()[-1])
  rows = [json.loads(line) for line in (tuned / "metrics.jsonl").read_text().splitlines()]
  assert rows[0]["step"] == 0 and set(rows[0]) == {"step", "fewshot/1shot_accuracy",
                                                   "fewshot/5shot_accuracy"}
  for k in ("fewshot/1shot_accuracy", "fewshot/5shot_accuracy"):
    assert rows[0][k] == pytest.approx(source_row[k], abs=1e-6)
  assert rows[-1]["step"] == 2 and sum(r["step"] == 0 for r in rows) == 1
