"""Runs every bad-input case of tests/test_main.py through the command line; prints a table.

  python experiments/reliability/bad_inputs_table.py > /tmp/table.md

Each row: the case, the arguments given (on top of the quickstart config and a fresh workdir),
the exit status, and the one line the command printed. The same cases are tests (the BAD table
in tests/test_main.py); this script records what a user sees.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_cases():
  spec = importlib.util.spec_from_file_location("test_main", ROOT / "tests" / "test_main.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.BAD, module.make_bad_inputs


def main() -> None:
  cases, make_bad_inputs = load_cases()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
  print("| # | case | arguments | exit | message |")
  print("|---|---|---|---|---|")
  for n, name in enumerate(sorted(cases), 1):
    args, _ = cases[name]
    with tempfile.TemporaryDirectory() as tmp:
      make_bad_inputs(Path(tmp))
      shown = [a.replace("{tmp}", "T") for a in args]
      result = subprocess.run(
          [sys.executable, "-m", "vit_jax.main", "--config", "configs/quickstart.py",
           "--workdir", f"{tmp}/run", *(a.format(tmp=tmp) for a in args)],
          cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
      lines = result.stderr.strip().splitlines()
      message = (lines[-1] if lines else "").replace(tmp, "T").replace("|", "\\|")
      if len(lines) != 1:
        message += f" (printed {len(lines)} lines)"
    print(f"| {n} | {name} | `{' '.join(shown)}` | {result.returncode} | {message} |")


if __name__ == "__main__":
  main()
