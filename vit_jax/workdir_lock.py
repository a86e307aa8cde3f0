"""One run per workdir: an exclusive lock held for as long as the run's process lives.

`fcntl.flock` on `workdir/lock`: the kernel releases it when the process exits, however it
exits (SIGKILL included), so a lock is never left stale. The file names its holder (host, pid),
which the message for a refused second run repeats.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket

LOCK_FILE = "lock"


class WorkdirLocked(RuntimeError):
  """Another live process holds the workdir."""


class WorkdirLock:
  """The lock of one workdir; `acquire` raises WorkdirLocked when another process holds it."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: int | None = None

  def acquire(self) -> None:
    """Takes the lock (the workdir must exist); the holder's identity goes into the file."""
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):  # no lock support on this file system
        os.close(fd)
        raise
      holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
      os.close(fd)
      raise WorkdirLocked(
          f"workdir {os.path.dirname(self.path)} is in use by {holder}; wait for that run to "
          "finish or stop it, or choose another --workdir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
    self._fd = fd

  def release(self) -> None:
    """Gives the lock up (also done by the kernel when the process exits)."""
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
