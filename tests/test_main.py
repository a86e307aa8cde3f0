"""The command line end to end, in subprocesses with 8 virtual CPU devices."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config.total_steps=6", "--config.warmup_steps=1", "--config.batch_size=16",
        "--config.log_every=2", "--config.eval_every=3", "--config.checkpoint_every=3",
        "--config.model.hidden_size=32", "--config.model.num_layers=1",
        "--config.model.num_heads=2", "--config.model.mlp_dim=32"]


def cli(*args, config="configs/quickstart.py", timeout=300):
  return subprocess.run([sys.executable, "-m", "vit_jax.main", "--config", config, *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"})


def snapshot(directory: Path) -> dict[str, bytes]:
  return {str(p.relative_to(directory)): p.read_bytes()
          for p in sorted(directory.rglob("*")) if p.is_file()}


def rows(workdir: Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_preset_named_on_the_command_line_replaces_the_config_files_sizes(tmp_path):
  # The quickstart's model is a custom size; ViT-Ti/16 at 32 px is 2 x 2 patches of 16.
  done = cli("--workdir", str(tmp_path / "run"), "--config.model.name=ViT-Ti/16",
             "--config.model.num_layers=1", "--config.image_size=32", "--config.total_steps=1",
             "--config.warmup_steps=0", "--config.batch_size=16", "--config.eval_every=0")
  assert done.returncode == 0, done.stderr[-2000:]
  model = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
  sizes = {k: model[k] for k in ("patch_size", "hidden_size", "num_heads", "mlp_dim")}
  assert model["name"] == "ViT-Ti/16" and sizes == {"patch_size": 16, "hidden_size": 192,
                                                    "num_heads": 3, "mlp_dim": 768}
  assert model["num_layers"] == 1  # a size the command line set itself stays


@pytest.mark.slow
def test_train_writes_every_output_and_a_second_run_resumes(tmp_path):
  workdir = tmp_path / "run"
  # Scanned layers: the checkpoint holds per-layer names, which the evaluation command reads.
  shots = ["--config.fewshot.shots=(1, 2)", "--config.fewshot.draws=2",
           "--config.fewshot.pool=200", "--config.model.scan_layers=True"]
  first = cli("--workdir", str(workdir), *TINY, *shots)
  assert first.returncode == 0, first.stderr
  config = json.loads((workdir / "config.json").read_text())
  assert config["total_steps"] == 6 and config["model"]["patch_size"] == 7
  assert config["num_classes"] == 10 and config["eval_split"] == "test"
  metrics = rows(workdir)
  assert [r["step"] for r in metrics] == [2, 3, 4, 6]
  assert {"train/loss", "train/lr", "train/img_per_sec"} <= set(metrics[0])
  assert {"eval/accuracy", "eval/loss"} <= set(metrics[-1])
  few = {"fewshot/1shot_accuracy", "fewshot/2shot_accuracy"}
  assert few <= set(metrics[1]) and few <= set(metrics[-1]) and not few & set(metrics[0])
  assert list(workdir.glob("events.out.tfevents.*"))
  log = (workdir / "train.log").read_text()
  assert "step 6/6" in log and "eval accuracy" in log
  assert "step 2/6" in first.stderr and "img/s" in first.stderr  # the progress line

  again = cli("--workdir", str(workdir), *TINY, *shots)
  assert again.returncode == 0, again.stderr
  assert "already finished at step 6" in again.stderr

  # Evaluating the saved checkpoint repeats the evaluation logged during training.
  offline = subprocess.run([sys.executable, "-m", "vit_jax.evaluate", "--workdir",
                            str(workdir)], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert offline.returncode == 0, offline.stderr
  result = json.loads(offline.stdout.strip().splitlines()[-1])
  assert result["step"] == 6
  for key in [*few, "eval/accuracy", "eval/loss"]:
    assert result[key] == pytest.approx(metrics[-1][key], abs=1e-6)


# Runs a command in which no file may grow beyond LIMIT bytes: writes past it fail with EFBIG
# ("File too large"), as SIGXFSZ is ignored (and stays ignored across exec).
LIMITED = ("import os, resource, signal, sys\n"
           "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
           "limit = int(sys.argv[1])\n"
           "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n"
           "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n")


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_is_one_line_and_exit_4(tmp_path):
  # Checkpoint files of this model are 20-110 kB, its logs a few kB: every save fails.
  workdir = tmp_path / "run"
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  result = subprocess.run(
      [sys.executable, "-c", LIMITED, "16000", "-m", "vit_jax.main", "--config",
       "configs/quickstart.py", "--workdir", str(workdir), *TINY], cwd=ROOT, capture_output=True,
      text=True, timeout=300, env=env)
  assert result.returncode == 4, result.stderr
  lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
  assert lines == [f"error: could not write the checkpoint of step 3 to {workdir}/checkpoints/3: "
                   "File too large; there is no complete checkpoint yet; fix the cause and run "
                   "the same command to start again"]
  assert "Traceback" not in result.stderr
  # Stopped at the next save (step 6) at the latest, before starting it; at a logged step when
  # the write had failed by then (how long a failing write takes varies).
  assert not [p.name for p in (workdir / "checkpoints").iterdir() if p.name.startswith("6")]
  assert "Save Finalize thread (save_finalize) failed" in (workdir / "train.log").read_text()


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path):
  workdir = tmp_path / "run"
  args = ["--workdir", str(workdir), *TINY, "--config.total_steps=400",
          "--config.checkpoint_every=10", "--config.eval_every=0", "--config.log_every=50"]
  proc = subprocess.Popen([sys.executable, "-m", "vit_jax.main", "--config",
                           "configs/quickstart.py", *args], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  ckpts = workdir / "checkpoints"
  while time.time() < deadline and not (
      ckpts.exists() and any(p.name.isdigit() and int(p.name) >= 20 for p in ckpts.iterdir())):
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  saved = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
  assert 20 <= saved < 400

  resumed = cli(*args)
  assert resumed.returncode == 0, resumed.stderr
  assert f"Resuming from step {saved} " in resumed.stderr
  assert [r["step"] for r in rows(workdir)] == list(range(50, 401, 50))
  assert "eval/accuracy" in rows(workdir)[-1]


BAD = {
    "unknown key": (["--config.modle.name=x"], "no key 'modle'; did you mean 'model'"),
    "nested unknown key": (["--config.model.hiden_size=8"], "did you mean 'hidden_size'"),
    "image size": (["--config.image_size=30"], "image_size 30 is not divisible by model.patch"),
    "batch vs devices": (["--config.batch_size=12"], "not divisible by the 8 devices"),
    "batch vs devices x accum": (["--config.batch_size=32", "--config.accum_steps=8"],
                                 "batch_size/accum_steps = 4 is not divisible by the 8 devices"),
    "parts vs batch per device": (["--config.batch_size=32", "--config.train_chains=3"],
                                  "train_chains 3 does not divide the 4 images per device"),
    "negative parts": (["--config.train_chains=-1"], "train_chains must be at least 0, got -1"),
    "mesh vs devices": (["--config.mesh.data=3"], "mesh data=3 x fsdp=1 = 3 devices does not "
                        "match the 8 devices here; set --config.mesh.data=-1"),
    "fsdp vs devices": (["--config.mesh.fsdp=3"], "mesh.fsdp=3 does not divide the 8 devices"),
    "unknown remat": (["--config.model.remat=most"], "model.remat 'most' is not one of none, full"),
    "unknown host_memory": (["--config.host_memory=keep"],
                            "host_memory 'keep' is not one of auto, retain, release"),
    "unknown cpu_matmul": (["--config.cpu_matmul=mkl"],
                           "cpu_matmul 'mkl' is not one of auto, onednn, xla"),
    "unknown attention": (["--config.model.attention=flash"],
                          "model.attention 'flash' is not one of auto, plain, xla, cudnn"),
    "fused attention dropout": (["--config.model.attention=xla",
                                 "--config.model.attention_dropout=0.1"],
                                "attention 'xla' has no dropout on attention weights"),
    "scan with every_layer": (["--config.model.scan_layers=True",
                               "--config.model.posemb_mode=every_layer"],
                              "scan_layers needs posemb_mode 'stem'"),
    "moment dtype": (["--config.moment_dtype=int8"], "moment_dtype 'int8' is not one of"),
    "half launch flags": (["--coordinator_address=127.0.0.1:1"],
                          "give all of --coordinator_address, --num_processes and --process_id"),
    "bad value": (["--config.batch_size=abc"], "--config.batch_size=abc: invalid literal for int"),
    "negative seed": (["--config.seed=-1"], "seed must be at least 0, got -1"),
    "dropout range": (["--config.model.dropout=1.5"], "model.dropout must be in [0, 1)"),
    "unknown posemb": (["--config.model.posemb=fancy"],
                       "model.posemb: unknown position embedding 'fancy'"),
    "unknown posemb mode": (["--config.model.posemb_mode=sometimes"],
                            "model.posemb_mode: unknown position-embedding mode 'sometimes'"),
    "mode not for kind": (["--config.model.posemb=relative",
                           "--config.model.posemb_mode=every_layer"],
                          "posemb_mode 'every_layer' does not apply to posemb 'relative'"),
    "width for kind": (["--config.model.posemb=sincos2d", "--config.model.hidden_size=66",
                        "--config.model.num_heads=2"], "divisible by 4, got 66"),
    "unknown pool": (["--config.model.pool=max"], "model.pool 'max' is not one of token, gap, map"),
    "fewshot shots": (["--config.fewshot.shots=(0, 5)"], "fewshot.shots must be positive"),
    "init_from missing": (["--config.init_from={tmp}/nothing"], "nothing does not exist; give a"),
    "resample method": (["--config.posemb_resample=nearest"], "posemb_resample 'nearest' is not"),
    "bad config variant": (["--config=configs/b16.py:foo"], "unknown variant 'foo'"),
    "config file missing": (["--config=configs/nofile.py"], "cannot load the config file"),
    "dataset not offline": (["--config.dataset=cifar10", "--config.download=False",
                             "--config.data_dir={tmp}/tfds"], "dataset 'cifar10' is not prepared"),
    "unknown dataset": (["--config.dataset=no_such_dataset", "--config.download=False"],
                        "dataset 'no_such_dataset' is not available offline"),
    "unknown model name": (["--config={tmp}/unknown_model.py"],
                           "model.name 'ViT-X/3' is not a registered model"),
    "misspelt model name": (["--config.model.name=ViT-Q/99"],
                            "model.name 'ViT-Q/99' is not a registered model; did you mean "),
    "typo in a config file": (["--config={tmp}/typo.py"],
                              "unknown config key 'batchsize'; did you mean 'batch_size'?"),
    "wrong type in a config file": (["--config={tmp}/wrong_type.py"],
                                    "Could not override field 'lr' (reference). 0.001 is of "
                                    "original type <class 'str'> and cannot be casted"),
    "wrong type inside a section": (["--config={tmp}/fewshot_letters.py"],
                                    "fewshot.shots must be a tuple of ints, got tuple ('a',)"),
    "wrong type for a section": (["--config={tmp}/no_mesh.py"],
                                 "mesh must be a section of keys"),
    "several problems at once": (["--config.lr=-1", "--config.seed=-2", "--config.adam_b2=1.5"],
                                 "seed must be at least 0, got -2; lr must be positive, got -1.0; "
                                 "adam_b2 must be in [0, 1), got 1.5"),
    "keep no checkpoints": (["--config.keep_checkpoints=0"], "keep_checkpoints must be positive"),
    "unknown nonfinite policy": (["--config.nonfinite=ignore"],
                                 "nonfinite 'ignore' is not one of stop, skip"),
    "warm-up beyond the run": (["--config.total_steps=5", "--config.warmup_steps=10"],
                               "warmup_steps 10 is not below total_steps 5"),
    "init_from not .npz": (["--config.init_from={tmp}/notes.txt"],
                           "is neither a directory nor a .npz file"),
    "init_from not a run": (["--config.init_from={tmp}/empty"],
                            "has no config.json, so it is no training run's workdir"),
    "init_from malformed .npz": (["--config.init_from={tmp}/garbage.npz"],
                                 "garbage.npz is not an .npz archive"),
    "init_from pickled .npz": (["--config.init_from={tmp}/pickled.npz"],
                               "pickled.npz holds pickled object arrays, which are never loaded"),
    "init_from other architecture": (["--config.init_from={tmp}/wide.npz"],
                                     "in the checkpoint but (128,) in this model"),
    "workdir inside a file": (["--workdir={tmp}/afile/run"], "cannot be created"),
    "fine-tuning without a model and dataset": (["--config=configs/finetune.py"],
                                                "missing MODEL,DATASET; use "
                                                "configs/finetune.py:MODEL,DATASET"),
    "folder without a test split": (["--config.dataset=folder:{tmp}/imgs_no_test"],
                                    "has no evaluation split: add"),
    "folder class only in test": (["--config.dataset=folder:{tmp}/imgs_extra"],
                                  "has classes the training split lacks: 7"),
    "folder with an empty class": (["--config.dataset=folder:{tmp}/imgs_empty"],
                                   "imgs_empty/train/1 has no image files"),
    "folder missing": (["--config.dataset=folder:{tmp}/nowhere"], "nowhere does not exist"),
    "unknown bad_images policy": (["--config.bad_images=ignore"],
                                  "bad_images 'ignore' is not one of skip, stop"),
    "eval crop above its resize": (["--config.eval_resize_small=20"],
                                   "eval_resize_small 20 is below image_size 28"),
    "hybrid stride": (["--config=configs/quickstart.py:hybrid", "--config.image_size=28"],
                      "image_size 28 is not divisible by the hybrid's stride 8 (ResNet stem 8 "
                      "x model.patch_size 1); use a multiple of 8 such as 32"),
    "hybrid stem width": (["--config=configs/quickstart.py:hybrid",
                           "--config.model.resnet_width=48"],
                          "model.resnet_width 48 is not a multiple of 32"),
    "key of another family": (["--config=configs/quickstart.py:mixer",
                               "--config.model.posemb=sincos2d"],
                              "model.posemb='sincos2d' does not apply to Mixer-custom (a Mixer "
                              "model)"),
    "init_from of another family": (["--config.init_from={tmp}/mixer.npz"],
                                    "mixer.npz holds a Mixer model's parameters but model.name "
                                    "ViT-custom is a ViT model; set --config.model.name to a "
                                    "Mixer preset such as Mixer-B/16"),
    "Mixer at a new resolution": (["--config=configs/quickstart.py:mixer",
                                   "--config.image_size=56", "--config.init_from={tmp}/mixer.npz"],
                                  "Mixer-custom cannot change resolution: its token-mixing "
                                  "weights fix 4x4 patches, image_size 28, not 56; set "
                                  "--config.image_size=28"),
    "T2T-ViT soft splits": (["--config=configs/quickstart.py:t2t", "--config.image_size=28"],
                            "image_size 28 is not divisible by the T2T token stride 8 (the "
                            "product of model.t2t_strides (2, 2, 2)); use a multiple of 8"),
    "TNT patches": (["--config=configs/quickstart.py:tnt", "--config.image_size=30"],
                    "image_size 30 is not divisible by model.patch_size 7; use a multiple of 7"),
    "safetensors of another model": (["--config=configs/quickstart.py:t2t",
                                      "--config.init_from={tmp}/tnt.safetensors"],
                                     "tnt.safetensors holds a TNT model's parameters but "
                                     "model.name T2T-ViT-custom is a T2T-ViT model; set "
                                     "--config.model.name to a TNT preset such as TNT-S"),
    "safetensors lacking layers": (["--config=configs/quickstart.py:tnt",
                                    "--config.init_from={tmp}/tnt.safetensors"],
                                   "tnt.safetensors: the checkpoint has no parameter "
                                   "blocks_0/attn_in/proj/bias"),
    "T2T table in every layer": (["--config=configs/sweeps/posemb.py:t2t",
                                  "--config.model.posemb_mode=every_layer_shared"],
                                 "model.posemb_mode 'every_layer_shared' does not apply to "
                                 "posemb 'sinusoid' (the model's own table, added once)"),
}


def make_bad_inputs(tmp):
  """The files some BAD cases point at."""
  import numpy as np
  from safetensors.numpy import save_file

  for name, line in (("typo", "c.batchsize = 8"), ("wrong_type", "c.lr = '0.001'"),
                     ("no_mesh", "c.mesh = None"),
                     # A section built from a dict takes whatever types it is given.
                     ("fewshot_letters", "c.fewshot = ConfigDict(dict(shots=('a',), draws=5, "
                                         "pool=2000, l2=1.0))")):
    (tmp / f"{name}.py").write_text(
        "from ml_collections import ConfigDict\n\nfrom configs import quickstart\n\n\n"
        f"def get_config():\n  c = quickstart.get_config()\n  {line}\n  return c\n")
  (tmp / "unknown_model.py").write_text(
      "from configs import b16\n\n\ndef get_config():\n  c = b16.get_config()\n"
      "  c.model.name = 'ViT-X/3'\n  return c\n")
  (tmp / "notes.txt").write_text("not parameters\n")
  (tmp / "empty").mkdir()
  (tmp / "garbage.npz").write_bytes(os.urandom(1000))
  np.savez(tmp / "pickled.npz", a=np.array([{"a": 1}], dtype=object))
  # Parameters of a ViT 64 wide where the quickstart model is 128 wide.
  np.savez(tmp / "wide.npz", **{"cls": np.zeros((1, 1, 64), np.float32),
                                "Transformer/encoder_norm/scale": np.ones(64, np.float32),
                                "Transformer/encoder_norm/bias": np.zeros(64, np.float32)})
  # Enough of a quickstart-sized Mixer (16 patches) to be recognised and to fix its grid.
  np.savez(tmp / "mixer.npz", **{"stem/kernel": np.zeros((7, 7, 1, 128), np.float32),
                                 "MixerBlock_0/token_mixing/Dense_0/kernel":
                                     np.zeros((16, 64), np.float32)})
  # A TNT state dict in timm's names (pixel embedding of another width than the quickstart's).
  save_file({"pixel_embed.proj.weight": np.zeros((4, 1, 7, 7), np.float32),
             "pixel_embed.proj.bias": np.zeros(4, np.float32),
             "cls_token": np.zeros((1, 1, 128), np.float32),
             "patch_pos": np.zeros((1, 17, 128), np.float32)}, str(tmp / "tnt.safetensors"))
  (tmp / "afile").write_text("a file where the workdir's parent should be\n")
  write_image_folders(tmp)


def write_image_folders(tmp):
  """Image folders with one layout problem each (a few 28x28 PNGs per class)."""
  from PIL import Image

  def folder(root, layout):
    for split, classes in layout.items():
      for name, count in classes.items():
        (root / split / name).mkdir(parents=True)
        for i in range(count):
          Image.new("L", (28, 28), 40 * i).save(root / split / name / f"{i}.png")

  folder(tmp / "imgs_no_test", {"train": {"0": 2, "1": 2}})
  folder(tmp / "imgs_extra", {"train": {"0": 2, "1": 2}, "test": {"0": 1, "7": 1}})
  folder(tmp / "imgs_empty", {"train": {"0": 2, "1": 0}, "test": {"0": 1}})


# One case of each kind in the fast loop (-m "not slow"); every case in the full suite.
FAST_BAD = {"unknown key", "image size", "batch vs devices", "unknown attention",
            "misspelt model name", "several problems at once", "bad value", "init_from missing",
            "typo in a config file", "half launch flags", "folder class only in test"}


@pytest.mark.parametrize("case", [case if case in FAST_BAD else
                                  pytest.param(case, marks=pytest.mark.slow)
                                  for case in sorted(BAD)])
def test_bad_input_is_one_line_exit_2_and_no_workdir(tmp_path, case):
  args, message = BAD[case]
  make_bad_inputs(tmp_path)
  config = "configs/quickstart.py"
  if args[0].startswith("--config=configs/"):  # another config file, not a second --config
    config, args = args[0].partition("=")[2], args[1:]
  result = cli("--workdir", str(tmp_path / "run"), *(a.format(tmp=tmp_path) for a in args),
               config=config)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
  assert not (tmp_path / "run").exists()


def test_missing_dataset_names_it_and_how_to_supply_it(tmp_path):
  result = cli("--workdir", str(tmp_path / "b"), f"--config.data_dir={tmp_path / 'tfds'}",
               config="configs/b16.py")
  assert result.returncode == 2
  line = result.stderr.strip().splitlines()[-1]
  assert "'imagenet21k'" in line and "data_dir" in line and "manual_dir" in line
  assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_workdir_of_another_config_is_left_alone(tmp_path):
  workdir = tmp_path / "run"
  assert cli("--workdir", str(workdir), *TINY, "--config.total_steps=3").returncode == 0
  before = snapshot(workdir)
  old_lr = json.loads((workdir / "config.json").read_text())["lr"]
  result = cli("--workdir", str(workdir), *TINY, "--config.total_steps=3", "--config.lr=0.1")
  assert result.returncode == 2
  assert f"different config (lr: {old_lr} -> 0.1)" in result.stderr
  assert snapshot(workdir) == before
  result = cli("--workdir", str(workdir), *TINY, "--config.total_steps=3", "--config.image_size=30")
  assert result.returncode == 2 and "image_size 30" in result.stderr
  assert snapshot(workdir) == before


@pytest.mark.slow
def test_checkpoints_without_config_are_not_adopted(tmp_path):
  (tmp_path / "run" / "checkpoints" / "5").mkdir(parents=True)
  result = cli("--workdir", str(tmp_path / "run"), *TINY)
  assert result.returncode == 2 and "has checkpoints but no config.json" in result.stderr
  assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == ["5", "checkpoints"]


@pytest.mark.slow
def test_init_from_a_run_at_another_resolution(tmp_path):
  source = tmp_path / "source"
  assert cli("--workdir", str(source), *TINY, "--config.total_steps=3").returncode == 0
  result = cli("--workdir", str(tmp_path / "finetune"), *TINY, "--config.total_steps=2",
               "--config.image_size=56", f"--config.init_from={source}",
               "--config.posemb_resample=bicubic", "--config.model.scan_layers=True")
  assert result.returncode == 0, result.stderr
  assert f"Initialised from {source} (patch grid 4x4 -> 8x8)" in result.stderr
  assert "eval/accuracy" in rows(tmp_path / "finetune")[-1]

  # The same from the run's export in the original .npz format, whose grid is read off its
  # position table.
  exported = tmp_path / "source.npz"
  export = subprocess.run([sys.executable, "-m", "vit_jax.io.npz", "--workdir", str(source),
                           "--out", str(exported)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert export.returncode == 0, export.stderr
  result = cli("--workdir", str(tmp_path / "from_npz"), *TINY, "--config.total_steps=2",
               "--config.image_size=56", f"--config.init_from={exported}")
  assert result.returncode == 0, result.stderr
  assert f"Initialised from {exported} (patch grid 4x4 -> 8x8)" in result.stderr


@pytest.mark.slow
def test_a_second_run_on_a_locked_workdir_is_refused_and_changes_nothing(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from vit_jax.workdir_lock import WorkdirLock; "
       f"WorkdirLock({str(workdir)!r}).acquire(); print('locked', flush=True); time.sleep(120)"],
      cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    before = snapshot(workdir)
    # A fresh workdir's checks pass; only the lock stops this run.
    result = cli("--workdir", str(workdir), *TINY, "--config.total_steps=3")
  finally:
    holder.kill()
    holder.wait()
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1, result.stderr
  assert lines[0] == (f"error: workdir {workdir} is in use by process {holder.pid} on "
                      f"{os.uname().nodename}; wait for that run to finish or stop it, or choose "
                      "another --workdir")
  assert snapshot(workdir) == before


@pytest.mark.slow
def test_a_diverging_run_stops_naming_the_step_and_keeps_its_last_checkpoint(tmp_path):
  workdir = tmp_path / "run"
  # A learning rate this large makes the loss non-finite within a few dozen steps.
  result = cli("--workdir", str(workdir), *TINY, "--config.total_steps=200",
               "--config.checkpoint_every=1", "--config.keep_checkpoints=2", "--config.lr=1e6",
               "--config.grad_clip_norm=0", "--config.warmup_steps=0")
  assert result.returncode == 3, result.stderr
  error = result.stderr.strip().splitlines()[-1]
  match = re.fullmatch(r"error: step (\d+) has a non-finite (loss|gradient norm) .*", error)
  assert match, error
  bad = int(match.group(1))
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert steps[-1] == bad - 1  # every step before the bad one was saved, the bad one not
  from vit_jax.train.checkpoint import Checkpointer

  checkpoints = Checkpointer(str(workdir), 1, 2)
  state = checkpoints.restore(None, bad - 1)
  checkpoints.close()
  import numpy as np

  assert int(state["step"]) == bad - 1
  assert all(np.isfinite(np.asarray(x)).all() for x in jax_leaves(state["params"]))


def jax_leaves(tree):
  import jax

  return jax.tree.leaves(tree)


@pytest.mark.slow
def test_sigterm_in_a_distributed_run_saves_and_exits_75(tmp_path):
  # jax.distributed.initialize starts a preemption service that takes SIGTERM for itself; the
  # trainer's handler must still get it.
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  workdir = tmp_path / "run"
  log = tmp_path / "log.txt"
  with open(log, "w") as out:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vit_jax.main", "--config", "configs/quickstart.py", "--workdir",
         str(workdir), *TINY, "--config.total_steps=100000", "--config.checkpoint_every=100000",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=1", "--process_id=0"],
        cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"})
    deadline = time.time() + 240
    while time.time() < deadline and "step 2/" not in log.read_text():
      time.sleep(0.2)
    if "step 2/" not in log.read_text():
      proc.kill()
      proc.wait()
      pytest.fail("no step 2 within 240 s; the run printed:\n" + log.read_text()[-3000:])
    proc.send_signal(signal.SIGTERM)
    try:
      status = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:  # SIGABRT makes Python dump every thread's stack
      proc.send_signal(signal.SIGABRT)
      proc.wait()
      pytest.fail("no exit within 120 s of SIGTERM; the run printed:\n" + log.read_text()[-6000:])
  text = log.read_text()
  assert status == 75, text[-2000:]
  stopped = re.search(r"Stopped by SIGTERM at step (\d+); its checkpoint is committed", text)
  assert stopped, text[-2000:]
  saved = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
  assert saved == [int(stopped.group(1))]


@pytest.mark.slow
def test_a_folder_with_a_corrupt_jpeg_trains_names_and_counts_it(tmp_path):
  from vit_jax.data import bundled

  digits = tmp_path / "digits"
  bundled.write_folder(str(digits), "jpg", per_class=2)  # 20 training images, 20 test images
  bad = digits / "train" / "3" / "broken.jpg"
  bad.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 2)
  workdir = tmp_path / "run"
  result = cli("--workdir", str(workdir), *TINY, f"--config.dataset=folder:{digits}")
  assert result.returncode == 0, result.stderr
  assert f"skipped unreadable image {bad}" in (workdir / "train.log").read_text()
  logged = [r for r in rows(workdir) if "data/skipped" in r]
  # 6 steps of 16 cover the 21 files more than four times: each time the broken one is skipped.
  assert sum(r["data/skipped"] for r in logged) >= 4
  assert all(0 <= r["data/wait_fraction"] < 1 for r in logged)
  assert (workdir / "classes.txt").read_text().split() == [str(d) for d in range(10)]

  # Renamed class folders would change what the labels mean: a resume is refused untouched.
  (digits / "train" / "9").rename(digits / "train" / "nine")
  (digits / "test" / "9").rename(digits / "test" / "nine")
  before = snapshot(workdir)
  again = cli("--workdir", str(workdir), *TINY, f"--config.dataset=folder:{digits}")
  assert again.returncode == 2 and "classes differ from those this run started with" in (
      again.stderr), again.stderr
  assert snapshot(workdir) == before
