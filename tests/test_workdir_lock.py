"""One run per workdir: the lock is exclusive across processes and dies with its holder."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vit_jax.workdir_lock import WorkdirLock, WorkdirLocked

ROOT = Path(__file__).resolve().parents[1]


def hold_in_child(workdir, then="import time; time.sleep(60)"):
  code = textwrap.dedent(f"""
      from vit_jax.workdir_lock import WorkdirLock
      WorkdirLock({str(workdir)!r}).acquire()
      print("locked", flush=True)
      {then}
  """)
  child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                           text=True)
  assert child.stdout.readline().strip() == "locked"
  return child


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
  child = hold_in_child(tmp_path)
  try:
    with pytest.raises(WorkdirLocked, match=rf"workdir {tmp_path} is in use by process "
                                            rf"{child.pid} on "):
      WorkdirLock(str(tmp_path)).acquire()
  finally:
    child.kill()
    child.wait()
  # The kernel released the killed holder's lock: no stale lock is left.
  lock = WorkdirLock(str(tmp_path))
  lock.acquire()
  assert (tmp_path / "lock").read_text().startswith(f"process {os.getpid()} on ")
  lock.release()


def test_release_lets_another_process_take_it(tmp_path):
  lock = WorkdirLock(str(tmp_path))
  lock.acquire()
  lock.release()
  child = hold_in_child(tmp_path, then="")
  assert child.wait(timeout=60) == 0
