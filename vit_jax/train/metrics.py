"""Where a run's numbers go: metrics.jsonl, TensorBoard events, train.log and the progress bar."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import tqdm

LOGGER = "vit_jax"


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


def setup_logging(workdir: str, *, write: bool = True) -> logging.Logger:
  """Logs to the console and (if `write`) appends to workdir/train.log."""
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
    file = logging.FileHandler(os.path.join(workdir, "train.log"))
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
