"""Runs a sweep: `python -m vit_jax.sweep --config configs/sweeps/posemb.py --workdir DIR`.

A sweep config defines `get_config()` (the base config), `get_sweep()` (a list of override dicts,
one per run) and optionally `get_tables()` (how results.md lays the runs out) and
`get_selection()` (a transfer sweep: a value chosen per dataset on minival, then a final run
each; vit_jax.transfer). `--config FILE:ARG` passes ARG to these functions, and
`--config.key=value` flags are given to every run (e.g. `--config.init_from=PATH`). Each run trains
with `python -m vit_jax.main` in `DIR/runs/<name>`; runs already complete are skipped and a
partly trained one resumes, so a killed sweep continues where it stopped. At the end (and with
`--collect`) the final row of every run goes to `DIR/results.csv`, `DIR/results.md` and
`DIR/results.png`. Exit status: 0 when every run finished, 1 when some failed, 2 for bad input,
75 when a run was stopped by a signal (after its checkpoint; the same command continues).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from typing import Any

from vit_jax import figures, results, transfer
from vit_jax.sweep_config import CONFIG_ARG, call, default_tables, load_sweep, run_name, split_arg

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 75  # a run stopped by SIGTERM/SIGINT after a checkpoint (vit_jax.main)


def override_flags(overrides: dict[str, Any]) -> list[str]:
  """`--config.key=value` flags for vit_jax.main (`config_arg` is no config key)."""
  return [f"--config.{key}={value!r}" if isinstance(value, (tuple, list))
          else f"--config.{key}={value}" for key, value in overrides.items() if key != CONFIG_ARG]


def config_spec(config_path: str, arg: str | None, overrides: dict[str, Any]) -> str:
  """What a run's --config is: FILE, or FILE:ARG with the run's `config_arg` or the sweep's."""
  arg = overrides.get(CONFIG_ARG, arg)
  return config_path if arg is None else f"{config_path}:{arg}"


def final_row(workdir: str) -> dict[str, Any] | None:
  """The last metrics row of a finished run (step == total_steps, with an evaluation), or None."""
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      total = json.load(f)["total_steps"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      lines = [line for line in f if line.strip()]
    row = json.loads(lines[-1]) if lines else None
  except (OSError, ValueError, KeyError):
    return None
  if row and row.get("step") == total and "eval/accuracy" in row:
    return row
  return None


def run_all(config_path: str, workdir: str, runs: list[dict[str, Any]],
            arg: str | None = None, common: list[str] = ()) -> list[str]:
  """Trains every incomplete run in turn; returns the names of runs that failed."""
  failed = []
  times_path = os.path.join(workdir, "wall_seconds.json")
  times = json.load(open(times_path)) if os.path.exists(times_path) else {}
  os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
  for i, overrides in enumerate(runs, 1):
    name = run_name(overrides)
    run_dir = os.path.join(workdir, "runs", name)
    if final_row(run_dir) is not None:
      print(f"[{i}/{len(runs)}] {name}: complete, skipped", flush=True)
      continue
    command = [sys.executable, "-m", "vit_jax.main", "--config",
               config_spec(config_path, arg, overrides),
               "--workdir", run_dir, *common, *override_flags(overrides)]
    start = time.perf_counter()
    with open(os.path.join(workdir, "logs", f"{name}.txt"), "a") as log:
      child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
      try:
        status = child.wait()
      except KeyboardInterrupt:
        # Ctrl-C in a terminal reaches the run too: it is saving a checkpoint; let it finish.
        print(f"[{i}/{len(runs)}] {name}: interrupted; waiting for its checkpoint", flush=True)
        status = child.wait()
    if status == EXIT_INTERRUPTED:
      print(f"[{i}/{len(runs)}] {name}: stopped by a signal after a checkpoint; run the same "
            "sweep command to continue", flush=True)
      raise SystemExit(EXIT_INTERRUPTED)
    seconds = time.perf_counter() - start
    row = final_row(run_dir)
    if status or row is None:
      failed.append(name)
      why = f"exit {status}" if status else "no final evaluation in its metrics.jsonl"
      print(f"[{i}/{len(runs)}] {name}: FAILED ({why}); see logs/{name}.txt", flush=True)
      continue
    times[name] = times.get(name, 0.0) + seconds
    with open(times_path + ".tmp", "w") as f:
      json.dump(times, f, indent=1)
    os.replace(times_path + ".tmp", times_path)
    shots = {k: v for k, v in row.items() if k.startswith("fewshot/")}
    extra = "".join(f"  {k.split('/')[1]} {v:.4f}" for k, v in shots.items())
    print(f"[{i}/{len(runs)}] {name}: eval/accuracy {row['eval/accuracy']:.4f}{extra}  "
          f"({seconds:.0f} s)", flush=True)
  return failed


def _finished(workdir: str, runs: list[dict[str, Any]], times: dict[str, float],
              phase: str | None = None) -> list[dict[str, Any]]:
  rows = []
  for overrides in runs:
    name = run_name(overrides)
    row = final_row(os.path.join(workdir, "runs", name))
    if row is not None:
      rows.append({"run": name, **({"phase": phase} if phase else {}), **overrides, **row,
                   "wall_seconds": times.get(name)})
  return rows


def collect(workdir: str, runs: list[dict[str, Any]], tables: list[dict[str, Any]],
            selection: dict[str, Any] | None = None,
            finals: list[dict[str, Any]] = ()) -> list[dict]:
  """Writes results.csv, results.md and results.png from the finished runs; returns the rows.

  For a transfer sweep the final runs are rows too (`phase` final), results.md starts with the
  transfer table and results.png shows each dataset's test accuracy.
  """
  times_path = os.path.join(workdir, "wall_seconds.json")
  times = json.load(open(times_path)) if os.path.exists(times_path) else {}
  phase = "select" if selection else None
  rows = _finished(workdir, runs, times, phase)
  final_rows = _finished(workdir, list(finals), times, "final")
  keys = list(dict.fromkeys(k for row in rows + final_rows for k in row))
  with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows + final_rows)
  text = results.markdown(rows, runs, tables)
  if selection:
    table, tests = transfer.report(rows + final_rows, runs, list(finals), selection)
    head, _, rest = text.partition("\n\n")
    text = f"{head}\n\n{table}\n{rest}"
    transfer.plot(tests, os.path.join(workdir, "results.png"), selection.get("title", ""))
  elif rows:
    figures.sweep_bars(rows, tables[0], os.path.join(workdir, "results.png"))
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(text)
  return rows + final_rows


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vit_jax.sweep",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True, help="sweep config file, or FILE:ARG")
  parser.add_argument("--workdir", required=True, help="directory for all runs and results")
  parser.add_argument("--collect", action="store_true", help="only write the results of "
                      "finished runs")
  parser.add_argument("--list", action="store_true", help="print the runs and exit")
  args, common = parser.parse_known_args(argv)
  unknown = [flag for flag in common if not flag.startswith("--config.")]
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)} (only --config.key=value flags "
                 "are passed on to every run)")
  path, arg = split_arg(args.config)
  try:
    module = load_sweep(path)
    runs = call(module, "get_sweep", arg)
    if not runs or not all(isinstance(r, dict) and r for r in runs):
      raise ValueError(f"{args.config}: get_sweep() must return a non-empty list of non-empty "
                       "override dicts")
    names = [run_name(r) for r in runs]
    if len(set(names)) != len(names):
      raise ValueError(f"{args.config}: get_sweep() lists the same run twice")
    tables = (call(module, "get_tables", arg) if hasattr(module, "get_tables")
              else default_tables(runs))
    selection = (call(module, "get_selection", arg) if hasattr(module, "get_selection")
                 else None)
  except Exception as e:  # the sweep file itself may raise anything
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  if args.list:
    print("\n".join(names))
    return 0
  workdir = os.path.abspath(args.workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.abspath(path)
  failed = [] if args.collect else run_all(path, workdir, runs, arg, common)
  finals: list[dict[str, Any]] = []
  if selection:
    rows = _finished(workdir, runs, {})
    finals = transfer.final_runs(transfer.choose(rows, runs, selection), selection)
    if finals and not args.collect:
      print(f"final runs at the chosen {selection['choose']}:", flush=True)
      failed += run_all(path, workdir, finals, arg, common)
  rows = collect(workdir, runs, tables, selection, finals)
  print(f"{len(rows)} of {len(runs) + len(finals)} runs finished; results in "
        f"{workdir}/results.md")
  if failed:
    print(f"error: {len(failed)} runs failed: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
