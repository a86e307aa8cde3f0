"""Stopping a run cleanly when the scheduler asks: SIGTERM or SIGINT.

The first signal only records the request; the training loop sees it after the step in progress,
writes a checkpoint, waits for it to be committed and stops. A second signal exits at once.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """Records the first SIGTERM/SIGINT while active (a context manager); a second one exits.

  `signal_name` is None until a signal arrived. Handlers are installed only from the main
  thread (Python allows no other), never over an ignored signal, and the previous ones are
  restored on exit. Install them after `jax.distributed.initialize`, whose preemption service
  replaces the SIGTERM handler.
  """

  def __init__(self) -> None:
    self.signal_name: str | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> StopRequest:
    if threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        if signal.getsignal(sig) is signal.SIG_IGN:  # e.g. started in the background: keep it
          continue
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc: object) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def request(self, name: str = "a stop request") -> None:
    """Asks the loop to stop after the current step, as a signal would."""
    if self.signal_name is None:
      self.signal_name = name

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.signal_name is not None:
      # Written directly: a signal handler must not wait for locks that the interrupted code
      # may hold (logging, stdio buffers).
      os.write(2, f"\n{name} again: exiting now, without a checkpoint\n".encode())
      os._exit(128 + signum)
    self.signal_name = name
    os.write(2, f"\n{name}: stopping after the current step with a checkpoint "
                f"(send it again to exit at once)\n".encode())
