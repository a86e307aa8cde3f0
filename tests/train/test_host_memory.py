"""Keeping freed host memory: the setting, and page faults counted by the kernel per step."""

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from vit_jax.train import host_memory


def test_an_unknown_mode_is_named_with_the_choices():
  assert host_memory.check_mode("retain") is None
  with pytest.raises(ValueError, match="host_memory 'keep' is not one of auto, retain, release"):
    host_memory.configure("keep")


def test_release_changes_nothing():
  assert host_memory.configure("release") is False


@pytest.mark.parametrize("platforms,expected", [("cpu", False), ("cuda", True),
                                                ("cpu,tpu", True)])
def test_an_accelerator_is_possible_when_the_platforms_name_one(platforms, expected):
  assert host_memory.accelerator_possible(platforms) is expected


def test_unset_platforms_are_decided_by_the_installed_plugins():
  plugins = bool(importlib.metadata.entry_points(group="jax_plugins")) or (
      importlib.util.find_spec("libtpu") is not None)
  if not plugins:  # this environment: a CPU-only jaxlib
    assert host_memory.accelerator_possible("") is False
  else:
    assert host_memory.accelerator_possible("") is True


def test_the_configured_platforms_are_read_from_jax_and_the_environment(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert host_memory.configured_platforms() == (jax.config.jax_platforms or "cuda")


# Runs a jitted function whose temporary buffer (a 64 MiB product per device) XLA allocates at
# every call, after `configure(mode)` and before any backend starts, on `devices` CPU devices
# (the rows sharded over them); prints whether memory is retained, the buffer's size in pages
# (per device) and the page faults of each call (all devices together).
_PROBE = textwrap.dedent("""
  import json, resource, sys
  from vit_jax.train import host_memory
  retained = host_memory.configure(sys.argv[1])
  import jax, jax.numpy as jnp, numpy as np
  from jax.sharding import NamedSharding, PartitionSpec
  devices = int(sys.argv[2])
  mesh = jax.make_mesh((devices,), ("data",))
  x = jax.device_put(np.ones((8192 * devices, 64), np.float32),
                     NamedSharding(mesh, PartitionSpec("data")))
  w = jax.device_put(np.ones((64, 2048), np.float32), NamedSharding(mesh, PartitionSpec()))
  f = jax.jit(lambda x, w: jnp.tanh(x @ w) @ w.T)
  temp = f.lower(x, w).compile().memory_analysis().temp_size_in_bytes
  for _ in range(3):
    f(x, w).block_until_ready()
  faults = []
  for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, w).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  print(json.dumps([retained, temp // resource.getpagesize(), faults]))
""")


def _probe(mode: str, devices: int = 1) -> tuple[bool, int, list[int]]:
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  out = subprocess.run([sys.executable, "-c", _PROBE, mode, str(devices)], env=env,
                       capture_output=True, text=True, timeout=300, check=True).stdout
  retained, pages, faults = json.loads(out.strip().splitlines()[-1])
  return retained, pages, faults


# One device: the step runs on the calling thread, whose malloc arena is glibc's main one (with
# async dispatch, measured: the whole buffer faulted in at every call). Two devices: the step
# runs on XLA's worker threads, and only the limit to one arena keeps it (measured without:
# both devices' buffers faulted in at every call).
@pytest.mark.parametrize("devices", [1, 2])
def test_retained_memory_is_not_faulted_in_at_every_step(devices):
  retained, pages, faults = _probe("retain", devices)
  if not retained:
    pytest.skip("the C library is not glibc: nothing to retain")
  released, _, faults_released = _probe("release", devices)
  assert pages >= 8192 * 2048 * 4 // 4096  # the product is a temporary buffer
  assert not released
  # Released, the kernel maps the whole buffer in again at every call. Retained, it stays
  # mapped: only the few calls that grow the heap fault it in (a call may start before the
  # previous call's buffer is freed, likelier on a loaded machine; measured: 0-5 of 15 calls,
  # and 3-4 of 400, all within the first 16, at 540-600 MB maximum resident memory).
  assert min(faults_released) > 0.5 * pages * devices, (faults_released, pages)
  assert sum(f > 0.5 * pages for f in faults) < len(faults) // 3, (faults, pages)
  assert min(faults) < 0.05 * pages, (faults, pages)


_DISPATCH = textwrap.dedent("""
  import sys
  from vit_jax.train import host_memory
  retained = host_memory.configure(sys.argv[1], distributed=sys.argv[2] == "1")
  import jax
  print(retained, jax.config.values["jax_cpu_enable_async_dispatch"])
""")


@pytest.mark.parametrize("mode,devices,distributed,expected", [
    ("retain", 1, False, "True False"),  # steps on the calling thread
    ("retain", 2, False, "True True"),
    ("retain", 1, True, "True True"),
    ("release", 1, False, "False True")])
def test_async_dispatch_is_turned_off_only_when_one_cpu_device_retains(mode, devices, distributed,
                                                                        expected):
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  out = subprocess.run([sys.executable, "-c", _DISPATCH, mode, str(int(distributed))], env=env,
                       capture_output=True, text=True, timeout=120, check=True).stdout
  if out.split()[0] == "False" and mode == "retain":
    pytest.skip("the C library is not glibc: nothing to retain")
  assert out.split() == expected.split()


def test_the_cpu_device_count_is_read_from_the_xla_flags(monkeypatch):
  assert jax.config.values["jax_num_cpu_devices"] < 0  # unset: the XLA flag decides
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo=1 --xla_force_host_platform_device_count=8")
  assert host_memory.configured_cpu_devices() == 8
  monkeypatch.setenv("XLA_FLAGS", "")
  assert host_memory.configured_cpu_devices() == 1
