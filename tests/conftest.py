"""Test session set-up: 8 virtual CPU devices, so every trainer test runs the sharded path.

The tests' programs are tiny: compiling them, not running them, is most of the suite's time.
LLVM's optimisation level 0 compiles them much faster; results differ from the optimised
build's by rounding only (a small ViT's logits and gradients: within 1e-5 of the largest).

A compilation cache shared by the session's processes: the command-line tests start many
processes that compile the same small programs, which then compile once.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS",
                      "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="vit_jax_test_jit_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
