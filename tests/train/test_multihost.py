"""Two real processes joined by jax.distributed on 127.0.0.1, against one process."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from vit_jax.train import multihost

ROOT = Path(__file__).resolve().parents[2]
# The quickstart model (4 layers, width 128), a few steps, a loss logged at every one.
ARGS = ["--config", "configs/quickstart.py", "--config.total_steps=4", "--config.warmup_steps=1",
        "--config.batch_size=32", "--config.log_every=1", "--config.eval_every=0",
        "--config.checkpoint_every=2"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(workdir, devices, *extra):
  """Starts one process; its output goes to a file (a full pipe would stall it mid-collective)."""
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
         "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
  log = Path(f"{workdir}.{len(list(Path(workdir).parent.glob('*.log')))}.log")
  log.parent.mkdir(parents=True, exist_ok=True)
  proc = subprocess.Popen([sys.executable, "-m", "vit_jax.main", *ARGS, "--workdir",
                           str(workdir), *extra], cwd=ROOT, env=env, stdout=log.open("w"),
                          stderr=subprocess.STDOUT, text=True)
  proc.log = log
  return proc


def output(proc, timeout=240):
  """Waits for `proc` and returns what it printed. Past `timeout` it is aborted, which makes
  Python dump every thread's stack into the log, so a hang fails with its reason."""
  try:
    proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGABRT)
    try:
      proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
  return proc.log.read_text()


def losses(workdir):
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r["train/loss"] for r in rows]


@pytest.mark.slow
def test_two_processes_of_two_devices_equal_one_process_of_four(tmp_path):
  port = free_port()
  procs = [launch(tmp_path / "multi", 2, f"--coordinator_address=127.0.0.1:{port}",
                  "--num_processes=2", f"--process_id={i}") for i in range(2)]
  outputs = [output(p) for p in procs]
  single = launch(tmp_path / "single", 4)  # after the pair, so three processes share no cores
  outputs.append(output(single))
  for p, out in zip((*procs, single), outputs, strict=True):
    assert p.returncode == 0, out[-3000:]
  assert "on 4 devices" in outputs[0] and "on 4 devices" in outputs[2]
  multi, one = losses(tmp_path / "multi"), losses(tmp_path / "single")
  assert len(multi) == len(one) == 4
  assert max(abs(a - b) for a, b in zip(multi, one, strict=True)) <= 1e-5
  # Only process 0 writes logs; the checkpoints of both are one Orbax checkpoint.
  assert len(list((tmp_path / "multi").glob("events.out.tfevents.*"))) == 1
  assert sorted(p.name for p in (tmp_path / "multi" / "checkpoints").iterdir()
                if p.name.isdigit()) == ["2", "4"]


@pytest.mark.parametrize("env,expected", [
    ({}, False), ({"SLURM_STEP_NUM_TASKS": "1"}, False), ({"SLURM_STEP_NUM_TASKS": "16"}, True),
    ({"SLURM_NTASKS": "16"}, False),  # inside the batch script, not an srun step
    ({"TPU_WORKER_HOSTNAMES": "t1"}, False), ({"TPU_WORKER_HOSTNAMES": "t1,t2,t3,t4"}, True),
])
def test_cluster_launches_are_detected_from_the_environment(env, expected):
  assert multihost.launched_as_cluster(env) is expected


@pytest.mark.parametrize("mode,coordinator,env,expected", [
    ("auto", None, {}, False), ("auto", "127.0.0.1:1", {}, True),
    ("auto", None, {"SLURM_STEP_NUM_TASKS": "4"}, True), ("on", None, {}, True),
    ("off", "127.0.0.1:1", {"SLURM_STEP_NUM_TASKS": "4"}, False),
])
def test_joining_is_known_before_initializing(mode, coordinator, env, expected):
  assert multihost.will_join(mode, coordinator, env) is expected


def test_single_process_does_not_join(monkeypatch):
  monkeypatch.setattr("jax.distributed.initialize", lambda **kw: pytest.fail("joined"))
  assert multihost.initialize("auto", env={}) is False
  assert multihost.initialize("off", env={"SLURM_STEP_NUM_TASKS": "8"}) is False


@pytest.mark.parametrize("args,message", [
    (("auto", "127.0.0.1:1", None, 0), "give all of --coordinator_address, --num_processes"),
    (("auto", "127.0.0.1:1", 2, 2), "--process_id=2 is not in 0..1"),
    (("sometimes",), "--distributed=sometimes is not one of auto, on, off"),
])
def test_inconsistent_launch_flags_are_refused(args, message):
  with pytest.raises(ValueError, match=message):
    multihost.initialize(*args, env={})


@pytest.mark.slow
def test_a_process_that_fails_its_checks_stops_the_others(tmp_path):
  port = free_port()
  flags = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
  procs = [launch(tmp_path / "run", 2, *flags, "--process_id=0"),
           launch(tmp_path / "run", 2, *flags, "--process_id=1", "--config.image_size=30")]
  outputs = [output(p, timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [2, 2]
  assert "error: another process of this run failed its checks" in outputs[0]
  assert "error: image_size 30 is not divisible" in outputs[1]
  assert not (tmp_path / "run").exists()


def test_host_copy_of_local_arrays():
  tree = {"a": jax.numpy.arange(4.0), "b": np.ones(2)}
  copied = multihost.host_copy(tree)
  assert isinstance(copied["a"], np.ndarray) and copied["a"].tolist() == [0, 1, 2, 3]


def test_sigterm_during_start_up_ends_a_joined_process(tmp_path):
  # JAX's preemption notifier takes SIGTERM on joining and only records it; before the trainer
  # installs its handler, a SIGTERM must end the process as it does without a coordinator.
  script = ("import os, signal, time\n"
            "from vit_jax.train import multihost\n"
            f"multihost.initialize('on', '127.0.0.1:{free_port()}', 1, 0)\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "time.sleep(30)\n"
            "print('still running')\n")
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == -signal.SIGTERM, result.stdout + result.stderr


# 64 evaluation-like calls of a program with a collective over 8 CPU devices, none depending on
# another; the sum of their results against NumPy's.
INDEPENDENT_CALLS = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from vit_jax.train import multihost
if sys.argv[1] == "joined":
  multihost.initialize("on", "127.0.0.1:" + sys.argv[2], 1, 0)
mesh = jax.make_mesh((8,), ("d",))
repl, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("d"))
w = np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
x = np.linspace(0, 1, 128 * 64, dtype=np.float32).reshape(128, 64)
f = jax.jit(lambda w, x: jnp.sum(jnp.tanh(x @ w)), in_shardings=(repl, rows), out_shardings=repl)
step = multihost.one_at_a_time(f, 8)
assert step is not f
wd, xd = jax.device_put(w, repl), jax.device_put(x, rows)
total = sum(float(out) for out in [step(wd, xd) for _ in range(64)])
expected = 64 * float(np.tanh(x.astype(np.float64) @ w).sum())
print("total", total, "expected", expected, "close", abs(total - expected) < 1e-3 * abs(expected))
"""


@pytest.mark.parametrize("mode", ["alone", "joined"])
def test_independent_steps_on_a_multi_device_cpu_finish(mode):
  # With jaxlib 0.10 a second multi-device CPU call that starts before the first has finished
  # can hang both, within one process too (without waiting, this script hung at once).
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  try:
    result = subprocess.run([sys.executable, "-c", INDEPENDENT_CALLS, mode, str(free_port())],
                            cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)
  except subprocess.TimeoutExpired:
    pytest.fail("64 independent multi-device calls did not finish within 180 s")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "close True" in result.stdout, result.stdout


def test_single_device_and_single_process_steps_are_not_waited_for():
  def step(*args):
    return args

  assert multihost.one_at_a_time(step, 1) is step
