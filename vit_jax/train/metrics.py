"""Where a run's numbers go: metrics.jsonl, TensorBoard events, train.log and the progress bar."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from typing import Any

import tqdm

LOGGER = "vit_jax"
# Libraries that report a failed background write with tracebacks through absl or Python logging
# (Orbax, TensorStore, asyncio's unretrieved task errors). Their records go to train.log only; the
# console gets the run's own one-line error (a CheckpointSaveError, exit status 4).
LIBRARY_SOURCES = ("/orbax/", "/tensorstore/", "/asyncio/")


def from_library(record: logging.LogRecord) -> bool:
  """Whether a log record comes from one of `LIBRARY_SOURCES`."""
  path = record.pathname.replace("\\", "/")
  return any(source in path for source in LIBRARY_SOURCES)


def write_atomically(path: str, text: str) -> None:
  """Replaces `path` with `text` so a reader (or a kill) never sees half a file."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


class _TqdmHandler(logging.StreamHandler):
  """Console log lines that do not break the progress bar."""

  def emit(self, record: logging.LogRecord) -> None:
    tqdm.tqdm.write(self.format(record), file=sys.stderr)


class LogFile(logging.FileHandler):
  """A log file that, when it cannot be written (a full disk), is skipped without a word.

  The console still shows every line; Python's default would print a traceback for each record.
  """

  def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
    del record


class _FirstLine(logging.Formatter):
  """One line per record, without the traceback (library errors can be long and repeated)."""

  def format(self, record: logging.LogRecord) -> str:
    lines = record.getMessage().strip().splitlines() or [""]
    return f"{self.formatTime(record)} {record.name} {record.levelname} {lines[0][:1000]}"


class _LibraryUnraisable:
  """A `sys.unraisablehook` that turns library reports into log records, passing on the rest.

  A failed checkpoint write ends Orbax's event loop while TensorStore still completes the
  write's other parts; each of them then raises "Event loop is closed" in asyncio where nothing
  can catch it, and Python prints a traceback for each (dozens, while training goes on).
  """

  def __init__(self, previous: Any):
    self.previous = previous

  def __call__(self, unraisable: Any) -> None:
    frames = traceback.extract_tb(unraisable.exc_traceback)
    where = frames[-1] if frames else traceback.FrameSummary("", 0, "")
    error = unraisable.exc_value
    record = logging.LogRecord("unraisable", logging.ERROR, where.filename, where.lineno or 0,
                               "unraisable %s: %s", (type(error).__name__, error), None)
    if from_library(record):
      logging.getLogger().handle(record)  # reaches train.log through the library handler
    else:
      self.previous(unraisable)


class _NotFromLibrary(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not from_library(record)


def _route_library_records(workdir: str, write: bool) -> None:
  """Keeps `LIBRARY_SOURCES` records off absl's console handler and (if `write`) in train.log.

  Their unraisable exceptions become such records too.
  """
  from absl import logging as absl_logging

  if not isinstance(sys.unraisablehook, _LibraryUnraisable):
    sys.unraisablehook = _LibraryUnraisable(sys.unraisablehook)

  console = absl_logging.get_absl_handler()
  if not any(isinstance(f, _NotFromLibrary) for f in console.filters):
    console.addFilter(_NotFromLibrary())
  root = logging.getLogger()
  for handler in [h for h in root.handlers if getattr(h, "vit_jax_library_log", False)]:
    handler.close()
    root.removeHandler(handler)
  if write:
    file = LogFile(os.path.join(workdir, "train.log"))
    file.setFormatter(_FirstLine())
    file.addFilter(from_library)
    file.vit_jax_library_log = True
    root.addHandler(file)


def setup_logging(workdir: str, *, write: bool = True) -> logging.Logger:
  """Logs to the console and (if `write`) appends to workdir/train.log."""
  _route_library_records(workdir, write)
  logger = logging.getLogger(LOGGER)
  logger.setLevel(logging.INFO)
  logger.propagate = False
  for handler in list(logger.handlers):
    handler.close()
    logger.removeHandler(handler)
  console = _TqdmHandler()
  console.setFormatter(logging.Formatter("%(message)s"))
  logger.addHandler(console)
  if write:
    file = LogFile(os.path.join(workdir, "train.log"))
    file.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(file)
  return logger


class MetricWriter:
  """Writes one JSON object per logged step to metrics.jsonl and the same scalars to TensorBoard.

  Only the writing process (process 0) should create one with `write=True`; the others get a
  writer that does nothing.
  """

  def __init__(self, workdir: str, *, write: bool = True):
    self.write = write
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if write:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(logdir=workdir)

  def truncate_after(self, step: int) -> None:
    """Drops rows newer than `step` (a resumed run rewrites them) and any torn last line."""
    if not self.write or not os.path.exists(self.path):
      return
    kept = []
    with open(self.path) as f:
      for line in f:
        try:
          row = json.loads(line)
        except ValueError:  # a line cut short when the process was killed
          continue
        if row["step"] <= step:
          kept.append(json.dumps(row) + "\n")
    write_atomically(self.path, "".join(kept))

  def row(self, step: int, scalars: dict[str, Any]) -> None:
    """Appends one row and the matching TensorBoard scalars."""
    if not self.write:
      return
    values = {k: float(v) for k, v in scalars.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **values}) + "\n")
    for key, value in values.items():
      self._tb.add_scalar(key, value, global_step=int(step))
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
