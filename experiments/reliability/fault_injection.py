"""Kill a training run at random moments, restart it each time, and compare with a clean run.

  python experiments/reliability/fault_injection.py --signal KILL --kills 5 --out /tmp/fi
  python experiments/reliability/fault_injection.py --signal TERM --kills 5 --out /tmp/fi

First an uninterrupted reference run, timed from the moment its training loop starts; then
the same command in another workdir, started `--kills` times and sent the signal each time at a
moment drawn uniformly from [0, T / kills] after its training loop starts (T: the reference's
training time, so every signal lands before the run could finish), then left to finish. Passes
when the final checkpoints (step, parameters, optimizer state) are bit-identical and the logged
training losses agree. With SIGTERM it also checks that each stop exits with status 75 after
committing a checkpoint of the step it names, and that no step the process reported as done is
lost. Extra arguments go to `vit_jax.main`
(e.g. `--config.total_steps=200`). Runs for both signals may share one `--out`: the reference
run is made once.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
EXIT_INTERRUPTED = 75


def launch(config: str, workdir: Path, extra: list[str], log: Path) -> subprocess.Popen:
  """Starts `python -m vit_jax.main` with its console output appended to `log`."""
  out = open(log, "ab")  # noqa: SIM115 - closed with the process by the caller
  cmd = [sys.executable, "-m", "vit_jax.main", "--config", config, "--workdir", str(workdir),
         *extra]
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
  proc.log_file = out  # type: ignore[attr-defined]
  return proc


def finish(proc: subprocess.Popen) -> int:
  rc = proc.wait()
  proc.log_file.close()  # type: ignore[attr-defined]
  return rc


def checkpoint_steps(workdir: Path) -> list[int]:
  directory = workdir / "checkpoints"
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def final_state(workdir: Path) -> tuple[int, dict[str, np.ndarray]]:
  """(step, {path: array}) of the newest checkpoint: step, parameters and optimizer state."""
  import jax

  from vit_jax.io.runs import Run

  with Run(str(workdir)) as run:
    step = run.latest_step()
    state = run.state(step)
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  return step, {jax.tree_util.keystr(path): np.asarray(v) for path, v in leaves}


def losses(workdir: Path) -> list[tuple[int, float]]:
  """(step, loss) of every logged row, in file order (a repeated step would show)."""
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


def reported_steps(text: str) -> list[int]:
  """Steps a process said it completed: progress-bar counts and 'step k/T' log lines."""
  return [int(m) for m in re.findall(r"(?:\bstep |\| *)(\d+)/\d+", text)]


def wait_for_training(proc: subprocess.Popen, log: Path) -> float | None:
  """Seconds until the process shows its progress bar (None: it exited first)."""
  start = time.perf_counter()
  while proc.poll() is None:
    if reported_steps(log.read_text(errors="replace")):
      return time.perf_counter() - start
    time.sleep(0.05)
  return None


def run(config: str, out: Path, extra: list[str], sig: str, kills: int, seed: int,
        say: Any = print) -> dict[str, Any]:
  """Runs the experiment; returns a report. Raises AssertionError when a check fails."""
  out.mkdir(parents=True, exist_ok=True)
  reference, faulted = out / "reference", out / f"faulted_{sig}"
  if faulted.exists():
    raise SystemExit(f"error: {faulted} exists; give a new --out")
  timing = out / "reference.json"
  if timing.exists():  # a finished reference run of the same command, shared by both signals
    seconds = json.loads(timing.read_text())["training_seconds"]
    say(f"reusing the reference run in {reference} ({seconds:.1f} s of training)")
  else:
    if reference.exists():
      raise SystemExit(f"error: {reference} exists without {timing}; give a new --out")
    proc = launch(config, reference, extra, out / "reference.log")
    setup = wait_for_training(proc, out / "reference.log")
    start = time.perf_counter()
    rc = finish(proc)
    seconds = time.perf_counter() - start
    assert rc == 0 and setup is not None, (
        f"reference run failed with status {rc}; see {out / 'reference.log'}")
    timing.write_text(json.dumps({"setup_seconds": setup, "training_seconds": seconds}) + "\n")
    say(f"reference run: {setup:.1f} s to start, {seconds:.1f} s of training")

  rng = random.Random(seed)
  events = []
  for i in range(kills):
    log = out / f"faulted_{sig}_{i}.log"
    proc = launch(config, faulted, extra, log)
    moment = rng.uniform(0.0, seconds / kills)
    if wait_for_training(proc, log) is None:
      raise AssertionError(f"attempt {i} exited with status {finish(proc)}; see {log}")
    try:
      proc.wait(timeout=moment)
      finish(proc)
      events.append({"moment": moment, "signal": None, "note": "finished before the signal"})
      say(f"attempt {i}: finished before {moment:.1f} s")
      break
    except subprocess.TimeoutExpired:
      pass
    proc.send_signal(getattr(signal, f"SIG{sig}"))
    rc = finish(proc)
    text = log.read_text(errors="replace")
    steps = checkpoint_steps(faulted)
    event = {"moment": round(moment, 2), "signal": sig, "status": rc,
             "newest_checkpoint": steps[-1] if steps else None}
    if sig == "TERM":
      stopped = re.search(r"Stopped by SIGTERM at step (\d+); (its checkpoint is committed)?", text)
      if stopped:
        step = int(stopped.group(1))
        done = max(reported_steps(text[:stopped.start()]), default=0)
        event.update(stopped_at=step, last_reported=done)
        assert rc == EXIT_INTERRUPTED, f"attempt {i}: status {rc}, expected {EXIT_INTERRUPTED}"
        assert step >= done, f"attempt {i}: stopped at {step} but had reported step {done}"
        if stopped.group(2):
          assert steps and steps[-1] == step, f"attempt {i}: no checkpoint of step {step}"
      elif "Finished" in text:  # the signal reached a process already shutting down
        event["note"] = "signal after the run had finished"
      else:
        raise AssertionError(f"attempt {i}: status {rc} without a clean stop; see {log}")
    events.append(event)
    say(f"attempt {i}: {event}")
    if steps and "Finished" in text:
      break
  final_log = out / f"faulted_{sig}_final.log"
  rc = finish(launch(config, faulted, extra, final_log))
  assert rc == 0, f"final faulted run failed with status {rc}; see {final_log}"

  ref_step, ref = final_state(reference)
  got_step, got = final_state(faulted)
  assert ref_step == got_step, f"final steps differ: {ref_step} vs {got_step}"
  assert ref.keys() == got.keys(), "the checkpoints hold different arrays"
  differ = [k for k in ref if not np.array_equal(ref[k], got[k])]
  assert not differ, f"{len(differ)} of {len(ref)} arrays differ, e.g. {differ[:3]}"
  ref_losses, got_losses = losses(reference), losses(faulted)
  assert ref_losses == got_losses, "logged training losses differ"
  report = {"signal": sig, "kills": kills, "training_seconds": round(seconds, 1),
            "final_step": ref_step, "arrays_compared": len(ref), "identical": True,
            "events": events}
  say(f"identical: step {ref_step}, {len(ref)} arrays, {len(ref_losses)} logged losses")
  return report


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/quickstart.py")
  parser.add_argument("--out", required=True, type=Path, help="a new folder for both runs")
  parser.add_argument("--signal", choices=("KILL", "TERM"), default="KILL")
  parser.add_argument("--kills", type=int, default=5)
  parser.add_argument("--seed", type=int, default=0, help="draws the kill moments")
  parser.add_argument("--json", type=Path, help="also write the report here")
  args, extra = parser.parse_known_args()
  report = run(args.config, args.out, extra, args.signal, args.kills, args.seed)
  if args.json:
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
  main()
