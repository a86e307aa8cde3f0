"""The sweep runner end to end (tiny runs of vit_jax.main) and its results table."""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vit_jax import results, sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEP = '''
from configs import quickstart


def get_config(arg=None):
  c = quickstart.get_config()
  c.total_steps, c.warmup_steps, c.batch_size = 2, 0, 16
  c.log_every, c.eval_every, c.checkpoint_every = 1, 0, 2
  c.model.hidden_size, c.model.num_layers, c.model.num_heads, c.model.mlp_dim = 16, 1, 2, 16
  c.fewshot.shots, c.fewshot.draws, c.fewshot.pool = (1,), 1, 50
  return c


def get_sweep():
  return [{"model.posemb": "none", "seed": 0}, {"model.posemb": "none", "seed": 1},
          {"model.posemb": "sincos2d", "seed": 0}]
'''


def run_sweep(config, workdir):
  return subprocess.run([sys.executable, "-m", "vit_jax.sweep", "--config", str(config),
                         "--workdir", str(workdir)], cwd=ROOT, capture_output=True, text=True,
                        timeout=600)


@pytest.mark.slow
def test_sweep_runs_each_config_once_and_resumes_after_a_kill(tmp_path):
  config = tmp_path / "tiny_sweep.py"
  config.write_text(SWEEP)
  workdir = tmp_path / "sweep"
  first = run_sweep(config, workdir)
  assert first.returncode == 0, first.stdout + first.stderr
  names = ["posemb=none,seed=0", "posemb=none,seed=1", "posemb=sincos2d,seed=0"]
  assert sorted(os.listdir(workdir / "runs")) == sorted(names)
  with open(workdir / "results.csv") as f:
    table = list(csv.DictReader(f))
  assert [r["run"] for r in table] == names
  assert all(r["step"] == "2" and 0 <= float(r["fewshot/1shot_accuracy"]) <= 1 for r in table)
  md = (workdir / "results.md").read_text()
  assert "| none |" in md and "(n=2)" in md and "| sincos2d |" in md
  assert (workdir / "results.png").read_bytes()[:4] == b"\x89PNG"

  # A complete run is not trained again; a lost one (as if killed before finishing) is.
  kept = (workdir / "runs" / names[0] / "metrics.jsonl").read_bytes()
  shutil.rmtree(workdir / "runs" / names[1])
  second = run_sweep(config, workdir)
  assert second.returncode == 0, second.stdout + second.stderr
  assert second.stdout.count("complete, skipped") == 2
  assert f"{names[1]}: eval/accuracy" in second.stdout
  assert (workdir / "runs" / names[0] / "metrics.jsonl").read_bytes() == kept


def test_complete_runs_are_skipped_without_starting_a_process(tmp_path, monkeypatch):
  runs = [{"model.posemb": "none", "seed": 0}, {"model.posemb": "learn1d", "seed": 0}]
  done = tmp_path / "runs" / sweep.run_name(runs[0])
  done.mkdir(parents=True)
  (done / "config.json").write_text('{"total_steps": 4}')
  (done / "metrics.jsonl").write_text('{"step": 2}\n{"step": 4, "eval/accuracy": 0.5}\n')
  started = []
  monkeypatch.setattr(sweep.subprocess, "Popen", fake_popen(started, 1))
  failed = sweep.run_all("cfg.py", str(tmp_path), runs)
  assert len(started) == 1 and "--config.model.posemb=learn1d" in started[0]
  assert failed == [sweep.run_name(runs[1])]


def fake_popen(started, status):
  """A stand-in for subprocess.Popen whose process exits at once with `status`."""

  class Process:
    def __init__(self, cmd, **kwargs):
      started.append(cmd)

    def wait(self):
      return status

  return Process


def test_a_run_stopped_by_a_signal_stops_the_sweep_with_its_status(tmp_path, monkeypatch,
                                                                    capsys):
  runs = [{"model.posemb": "none", "seed": 0}, {"model.posemb": "learn1d", "seed": 0}]
  started = []
  monkeypatch.setattr(sweep.subprocess, "Popen", fake_popen(started, 75))
  with pytest.raises(SystemExit) as stopped:
    sweep.run_all("cfg.py", str(tmp_path), runs)
  assert stopped.value.code == 75 and len(started) == 1  # the second run is not started
  assert "stopped by a signal after a checkpoint" in capsys.readouterr().out


def test_unfinished_run_is_not_complete(tmp_path):
  (tmp_path / "config.json").write_text('{"total_steps": 4}')
  (tmp_path / "metrics.jsonl").write_text('{"step": 2, "eval/accuracy": 0.5}\n')
  assert sweep.final_row(str(tmp_path)) is None


def test_bad_sweep_config_is_one_line_and_exit_2(tmp_path, capsys):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config(arg=None):\n  return None\n")
  assert sweep.main(["--config", str(bad), "--workdir", str(tmp_path / "w")]) == 2
  assert "defines no get_sweep()" in capsys.readouterr().err
  assert sweep.main(["--config", str(tmp_path / "none.py"), "--workdir", str(tmp_path)]) == 2
  assert not (tmp_path / "w").exists()


def test_markdown_cells_are_mean_and_sample_std_over_seeds():
  rows = [{"model.posemb": "learn1d", "model.posemb_mode": "stem", "eval/accuracy": a,
           "fewshot/10shot_accuracy": f} for a, f in [(0.9, 0.8), (0.8, 0.7), (0.85, 0.9)]]
  runs = rows + [{"model.posemb": "none", "model.posemb_mode": "stem"}]
  table = {"title": "T", "rows": "model.posemb", "cols": "model.posemb_mode", "where": {}}
  text = results.markdown(rows, runs, [table])
  evals, fews = [0.9, 0.8, 0.85], [0.8, 0.7, 0.9]
  cell = (f"{np.mean(evals):.4f} ± {np.std(evals, ddof=1):.4f} / "
          f"{np.mean(fews):.4f} ± {np.std(fews, ddof=1):.4f} (n=3)")
  assert f"| learn1d | {cell} |" in text
  assert "| none | n/a |" in text
  assert "3 of 4 runs finished" in text
  one = results.markdown(rows[:1], runs, [table])  # one seed has no spread to show
  assert "| learn1d | 0.9000 / 0.8000 (n=1) |" in one


@pytest.mark.parametrize("overrides,name,flags", [
    ({"model.posemb": "learn1d", "seed": 2}, "posemb=learn1d,seed=2",
     ["--config.model.posemb=learn1d", "--config.seed=2"]),
    ({"fewshot.shots": (1, 5)}, "shots=(1,5)", ["--config.fewshot.shots=(1, 5)"]),
    ({"model.name": "ViT-S/16", "lr": 0.001}, "name=ViT-S_16,lr=0.001",
     ["--config.model.name=ViT-S/16", "--config.lr=0.001"]),
])
def test_run_names_and_flags(overrides, name, flags):
  assert sweep.run_name(overrides) == name
  assert sweep.override_flags(overrides) == flags
