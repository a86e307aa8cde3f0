import json

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
