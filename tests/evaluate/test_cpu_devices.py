import json
import os
import subprocess
import sys

import jax
import pytest

from vit_jax.evaluate import cpu_devices


@pytest.fixture
def unconfigured(monkeypatch):
  """As a process that has not chosen a CPU device count (the tests run with 8, set by the XLA
  flag; `jax_num_cpu_devices` stays unset)."""
  assert jax.config.values["jax_num_cpu_devices"] < 0
  monkeypatch.setenv("XLA_FLAGS", "")


@pytest.mark.parametrize("cores,batch,expected", [
    (2, 8, 2), (2, 32, 2), (2, 6, 1), (2, 4, 1), (1, 8, 1), (16, 8, 2), (16, 32, 8),
    (16, 12, 3), (3, 8, 2)])
def test_auto_splits_inference_into_one_device_per_core_with_enough_images(
    unconfigured, cores, batch, expected):
  count = cpu_devices.plan(0, batch, inference=True, cores=cores, platforms="cpu")
  assert count == expected
  assert batch % count == 0 and (count == 1 or batch // count >= cpu_devices.MIN_IMAGES)


def test_auto_leaves_training_accelerators_and_configured_counts_alone(unconfigured,
                                                                      monkeypatch):
  assert cpu_devices.plan(0, 8, inference=False, cores=2, platforms="cpu") is None
  assert cpu_devices.plan(0, 8, inference=True, cores=2, platforms="cuda") is None
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
  assert cpu_devices.plan(0, 8, inference=True, cores=2, platforms="cpu") is None


def test_requested_count_is_kept_or_refused_with_the_fix():
  assert cpu_devices.plan(4, 8, inference=False) == 4
  assert cpu_devices.plan(1, 8, inference=True) == 1  # one device, not JAX's own setting
  with pytest.raises(ValueError, match="cpu_devices 3 does not divide the batch of 8"):
    cpu_devices.plan(3, 8, inference=True)
  with pytest.raises(ValueError, match="negative"):
    cpu_devices.plan(-1, 8, inference=True)


def test_configure_refuses_once_jax_runs_with_another_count():
  assert len(jax.devices()) == 8  # this process's CPU client exists
  cpu_devices.configure(None)  # leaves it alone: no error
  with pytest.raises(ValueError, match="before the first computation"):
    cpu_devices.configure(2)


def _fresh_python(code: str) -> str:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  return done.stdout


def test_configure_before_jax_starts_sets_the_device_count():
  out = _fresh_python("from vit_jax.evaluate import cpu_devices\n"
                      "plan = lambda: cpu_devices.plan(0, 8, inference=True, cores=2, "
                      "platforms='cpu')\n"
                      "print(plan())\n"
                      "cpu_devices.configure(3)\n"
                      "print(plan())  # a count set through JAX's config is left alone\n"
                      "import jax\nprint(len(jax.devices('cpu')))")
  assert out.split() == ["2", "None", "3"]


@pytest.mark.slow
def test_benchmark_infers_over_the_planned_devices(tmp_path, unconfigured):
  out = tmp_path / "r.json"
  _fresh_python(
      "from vit_jax.benchmark import __main__ as b\n"
      f"b.main(['--model', 'ViT-Ti/16', '--image_size', '32', '--num_classes', '10', '--batch', "
      f"'8', '--mode', 'infer', '--warmup', '0', '--steps', '1', '--timm', 'off', '--json', "
      f"'{out}'])")
  expected = cpu_devices.plan(0, 8, inference=True, cores=cpu_devices.usable_cores(),
                              platforms="cpu")
  assert expected == (2 if cpu_devices.usable_cores() >= 2 else 1)
  assert json.loads(out.read_text())["devices"] == expected
