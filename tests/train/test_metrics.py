import asyncio
import json
import logging
import sys

from vit_jax.train import metrics
from vit_jax.train.metrics import MetricWriter


def test_rows_truncation_and_a_torn_last_line(tmp_path):
  writer = MetricWriter(str(tmp_path))
  for step in (10, 20, 30):
    writer.row(step, {"train/loss": step / 10})
  writer.close()
  path = tmp_path / "metrics.jsonl"
  with open(path, "a") as f:
    f.write('{"step": 40, "train/lo')  # killed in the middle of a write
  writer = MetricWriter(str(tmp_path))
  writer.truncate_after(20)
  writer.row(25, {"train/loss": 2.5, "eval/accuracy": 0.5})
  writer.close()
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  assert rows == [{"step": 10, "train/loss": 1.0}, {"step": 20, "train/loss": 2.0},
                  {"step": 25, "train/loss": 2.5, "eval/accuracy": 0.5}]
  assert list(tmp_path.glob("events.out.tfevents.*"))


def test_non_writing_process_writes_nothing(tmp_path):
  writer = MetricWriter(str(tmp_path), write=False)
  writer.row(1, {"train/loss": 1.0})
  writer.truncate_after(0)
  writer.close()
  assert list(tmp_path.iterdir()) == []


class _Finalizer:
  """Calls `action` when it is deleted, where an exception can only be unraisable."""

  def __init__(self, action):
    self.action = action

  def __del__(self):
    self.action()


def test_library_unraisables_go_to_train_log_and_others_pass_on(tmp_path, monkeypatch, capsys):
  passed_on = []
  monkeypatch.setattr(sys, "unraisablehook", passed_on.append)
  logger = metrics.setup_logging(str(tmp_path))
  try:
    loop = asyncio.new_event_loop()
    loop.close()  # as Orbax's loop is when TensorStore completes the rest of a failed write
    _Finalizer(lambda: loop.call_soon_threadsafe(print))
    _Finalizer(lambda: int("not a number"))
  finally:  # the run's handlers, and the library handler on the root logger
    for owner in (logger, logging.getLogger()):
      for handler in list(owner.handlers):
        if owner is logger or getattr(handler, "vit_jax_library_log", False):
          handler.close()
          owner.removeHandler(handler)
  log = (tmp_path / "train.log").read_text().splitlines()
  assert len(log) == 1 and log[0].endswith("unraisable ERROR unraisable RuntimeError: Event loop "
                                           "is closed")
  assert [type(u.exc_value) for u in passed_on] == [ValueError]
  assert "Event loop" not in capsys.readouterr().err
