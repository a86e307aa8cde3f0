import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import quickstart
from vit_jax import configuration
from vit_jax.data import pipeline
from vit_jax.data.types import Feed
from vit_jax.evaluate import __main__ as evaluate_cli
from vit_jax.evaluate import cpu_devices
from vit_jax.io import pretrained, runs
from vit_jax.train import loop
from vit_jax.train.checkpoint import Checkpointer

ROOT = Path(__file__).resolve().parents[2]


def snapshot(directory: Path) -> dict[str, bytes]:
  return {str(p.relative_to(directory)): p.read_bytes()
          for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
  """A 3-step run of a tiny model on the bundled digits, with config.json as the CLI writes it."""
  workdir = tmp_path_factory.mktemp("run")
  c = quickstart.get_config()
  c.image_size, c.batch_size, c.total_steps, c.warmup_steps = 8, 16, 3, 1
  c.checkpoint_every, c.eval_every = 3, 3
  c.model.update(patch_size=4, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=16)
  c.fewshot.update(shots=(1, 2), draws=1, pool=100)
  c = configuration.resolve_model(c)
  data = pipeline.load(c, Feed.from_config(c))
  c = configuration.resolve_data(c, num_train=data.num_train, num_classes=data.num_classes,
                                 splits=data.splits)
  (workdir / "config.json").write_text(configuration.to_json(c))
  loop.train(c, data, str(workdir))
  return workdir


@pytest.mark.slow
def test_reading_a_run_that_is_saving_leaves_its_temporary_checkpoint_alone(run_dir, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(run_dir, workdir)
  # A save in progress, as Orbax names it until the write is complete.
  shutil.copytree(workdir / "checkpoints" / "3", workdir / "checkpoints" / "6.orbax-checkpoint-tmp")
  before = snapshot(workdir)

  result = evaluate_cli.evaluate_run(str(workdir))
  assert result["step"] == 3 and 0 <= result["eval/accuracy"] <= 1
  assert {"fewshot/1shot_accuracy", "fewshot/2shot_accuracy"} <= set(result)
  export = subprocess.run([sys.executable, "-m", "vit_jax.io.npz", "--workdir", str(workdir),
                           "--out", str(tmp_path / "params.npz")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
  assert export.returncode == 0, export.stderr
  assert pretrained.load(str(workdir)).grid == (2, 2)
  assert snapshot(workdir) == before  # byte for byte, the temporary save included

  # The trainer's own checkpointer does clean it up (in the background): the state above is what
  # a reader must spare.
  Checkpointer(str(workdir), 1, 3).close()
  deadline = time.time() + 60
  while (workdir / "checkpoints" / "6.orbax-checkpoint-tmp").exists() and time.time() < deadline:
    time.sleep(0.1)
  assert not (workdir / "checkpoints" / "6.orbax-checkpoint-tmp").exists()


@pytest.mark.slow
def test_a_run_saved_from_eight_devices_is_read_on_one(run_dir, tmp_path):
  # This process has 8 devices, as the run had; a fresh one has a single CPU device.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  probe = ("import pickle, sys, jax; from vit_jax.io import runs\n"
           "with runs.Run(sys.argv[1]) as run: state = run.state()\n"
           "pickle.dump((len(jax.devices()), state), open(sys.argv[2], 'wb'))")
  out = tmp_path / "state.pkl"
  done = subprocess.run([sys.executable, "-c", probe, str(run_dir), str(out)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  devices, there = pickle.loads(out.read_bytes())
  with runs.Run(str(run_dir)) as run:
    here = run.state()
  assert (devices, len(jax.devices())) == (1, 8)
  assert jax.tree.structure(there) == jax.tree.structure(here)
  for a, b in zip(jax.tree.leaves(there), jax.tree.leaves(here), strict=True):
    assert isinstance(a, np.ndarray) and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_the_command_splits_a_cpu_and_evaluates_the_same(run_dir, monkeypatch):
  here = evaluate_cli.evaluate_run(str(run_dir))  # this process: JAX already runs
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  probe = ("import sys; from vit_jax.evaluate.__main__ import main; code = main(sys.argv[1:]); "
           "import jax; print(len(jax.devices()), file=sys.stderr); sys.exit(code)")
  done = subprocess.run([sys.executable, "-c", probe, "--workdir", str(run_dir)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  monkeypatch.setenv("XLA_FLAGS", "")  # as the fresh process: no device count set
  expected = cpu_devices.plan(0, 16, inference=True, cores=cpu_devices.usable_cores(),
                              platforms="cpu")  # the run's evaluation batch is 16
  assert int(done.stderr.split()[-1]) == expected  # 2 on a 2-core machine
  fresh = json.loads(done.stdout)
  assert fresh.keys() == here.keys() and fresh["step"] == here["step"]
  for key in here:
    assert fresh[key] == pytest.approx(here[key], rel=1e-5, abs=1e-6), key


@pytest.mark.slow
def test_a_run_gives_its_steps_parameters_and_grid(run_dir):
  with runs.Run(str(run_dir)) as run:
    assert run.steps() == [3] and run.latest_step() == 3 and run.grid() == (2, 2)
    params = run.params()
    assert params["embedding"]["kernel"].shape == (4, 4, 1, 16)
    with pytest.raises(runs.RunError, match="has no checkpoint of step 2; it has 3"):
      run.params(2)


def test_what_is_no_run_is_a_one_line_error(tmp_path, capsys):
  with pytest.raises(runs.RunError, match="config.json not found; give a training run's workdir"):
    runs.Run(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"image_size": 8}))
  with runs.Run(str(tmp_path)) as run:
    assert run.latest_step() is None
    with pytest.raises(runs.RunError, match="has no checkpoint yet"):
      run.params()
  assert evaluate_cli.main(["--workdir", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "has no checkpoint yet" in err and len(err.splitlines()) == 1
  assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


@pytest.mark.slow
def test_a_run_of_an_unregistered_model_name_is_a_one_line_error(run_dir, tmp_path, capsys):
  workdir = tmp_path / "run"
  shutil.copytree(run_dir, workdir)
  config = json.loads((workdir / "config.json").read_text())
  config["model"]["name"] = "ViT-quickstart/7"  # a name the registry does not know
  (workdir / "config.json").write_text(json.dumps(config))
  assert evaluate_cli.main(["--workdir", str(workdir)]) == 2
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and "model.name 'ViT-quickstart/7' is not a registered" in err
