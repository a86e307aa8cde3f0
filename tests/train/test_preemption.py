"""SIGTERM/SIGINT handling, with real signals sent to this process and to a child."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from vit_jax.train.preemption import StopRequest


@pytest.fixture(autouse=True)
def default_handlers():
  """Background jobs start with SIGINT ignored, which StopRequest leaves alone; undo that here."""
  saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
  signal.signal(signal.SIGINT, signal.default_int_handler)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  yield
  for sig, handler in saved.items():
    signal.signal(sig, handler)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_first_signal_is_recorded_and_the_handlers_are_restored(sig):
  before = signal.getsignal(sig)
  with StopRequest() as stop:
    assert stop.signal_name is None
    os.kill(os.getpid(), sig)  # delivered before the next bytecode runs
    assert stop.signal_name == sig.name
  assert signal.getsignal(sig) is before


def test_a_second_signal_exits_at_once_with_128_plus_its_number():
  code = textwrap.dedent("""
      import os, signal, time
      from vit_jax.train.preemption import StopRequest
      signal.signal(signal.SIGINT, signal.default_int_handler)  # not ignored, as in a terminal
      with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        print("first:", stop.signal_name, flush=True)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        print("still running", flush=True)
  """)
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__)))))
  assert result.returncode == 128 + signal.SIGINT
  assert "first: SIGTERM" in result.stdout and "still running" not in result.stdout
  assert "SIGINT again: exiting now, without a checkpoint" in result.stderr


def test_an_ignored_signal_stays_ignored():
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # how a job started in the background begins
  with StopRequest() as stop:
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.signal_name is None
