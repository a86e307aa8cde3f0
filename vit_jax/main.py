"""Command line: `python -m vit_jax.main --config configs/X.py --workdir DIR [--config.k=v ...]`.

Multi-process launches add `--coordinator_address/--num_processes/--process_id` or are detected
(docs/multihost.md).

Exit status: 0 finished; 1 no checkpoint of the run can be read; 2 bad input (nothing written);
3 a non-finite loss or gradient norm (the last checkpoint stays); 4 a checkpoint could not be
written (the newest complete one stays); 75 stopped by SIGTERM/SIGINT after committing a
checkpoint (run the same command to resume); 128+N a second signal N.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
from collections.abc import Sequence

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import ConfigDict, config_flags

from vit_jax.train import preemption

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
EXIT_SAVE_FAILED = 4
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: schedulers may requeue the job
# OS errors that mean a file of the run cannot be written (rather than a bug): exit status 4.
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/b16.py or configs/b16.py:gap.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "Join a multi-process run with jax.distributed.initialize: auto = when the coordinator flags "
    "are given or a SLURM / multi-host TPU launch is detected.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for launches JAX cannot detect.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..N-1.")


def fail(message: str) -> None:
  """Prints one line naming the problem and its fix, then exits with status 2."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


def describe_flag_error(error: Exception, argv: Sequence[str]) -> str:
  """Turns a flag-parsing exception into one readable line."""
  text = str(error).replace("\\'", "'").replace("\\n", "\n")
  unknown = re.search(r"'([^'\n]+)'.*?Did you mean \"([^\"]+)\"", text, re.S)
  if unknown:
    key, guess = unknown.groups()
    names = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    flag = next((n for n in names if key in n.removeprefix("--config.").split(".")), key)
    return f"{flag}: the config has no key '{key}'; did you mean '{guess}'?"
  missing = None
  if isinstance(error, (KeyError, AttributeError)):
    missing = re.search(r"'([^'\n]+)'", text)
  if missing:
    return f"the config has no key '{missing.group(1)}'; check the spelling against the config file"
  lines = [line for line in text.strip().splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  if "Traceback" in text:  # the config file itself raised: its last line says why
    return f"{lines[0].split(':')[0].removeprefix('flag ')}: {lines[-1]}"
  return lines[0].removeprefix("flag ")


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors instead of a traceback or usage dump."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # config_flags raises KeyError/AttributeError/ValueError as well
    fail(describe_flag_error(e, argv))
  return []


def main(argv: Sequence[str]) -> None:
  try:
    _main(argv)
  except KeyboardInterrupt:  # before training started: nothing to save
    print("error: interrupted before training started; nothing was trained", file=sys.stderr)
    sys.exit(128 + signal.SIGINT)


def _main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    fail(f"unexpected arguments {' '.join(argv[1:])}; overrides look like --config.key=value")
  if _CONFIG.value is None or _WORKDIR.value is None:
    fail("both --config and --workdir are required, e.g. "
         "python -m vit_jax.main --config configs/quickstart.py --workdir /tmp/q")
  config = _CONFIG.value
  if not isinstance(config, ConfigDict):
    fail(f"cannot load the config file given by --config ({flags.FLAGS['config'].serialize()})")
  workdir = os.path.abspath(_WORKDIR.value)

  # Orbax logs every save and tfds every folder it probes through absl; errors still show.
  absl_logging.set_verbosity(absl_logging.ERROR)
  import jax  # after flag parsing, so a usage error costs no JAX start-up

  from vit_jax import configuration, workdir_lock
  from vit_jax.data import pipeline
  from vit_jax.data.types import DatasetError, Feed
  from vit_jax.io import pretrained, runs
  from vit_jax.train import checkpoint, host_memory, loop, metrics, multihost

  # Before any backend starts: the allocator setting holds only for threads that allocate later.
  try:
    host_memory.configure(config.get("host_memory", "auto"),
                          distributed=multihost.will_join(_DISTRIBUTED.value, _COORDINATOR.value))
  except ValueError as e:
    fail(f"{e}; set --config.host_memory to one of them")
  try:
    multihost.initialize(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                         _PROCESS_ID.value)
  except ValueError as e:
    fail(str(e))
  problem = None
  try:
    config = configuration.resolve_model(configuration.name_from_command_line(
        config, config_flags.get_override_values(flags.FLAGS["config"])))
    configuration.validate(config, device_count=jax.device_count(),
                           process_count=jax.process_count(), backend=jax.default_backend())
    feed = Feed.from_config(config, jax.process_index(), jax.process_count())
    data = pipeline.load(config, feed)
    config = configuration.resolve_data(config, num_train=data.num_train,
                                        num_classes=data.num_classes, splits=data.splits)
    configuration.validate(config, device_count=jax.device_count(),
                           process_count=jax.process_count(), backend=jax.default_backend())
    resuming = configuration.check_workdir(config, workdir)
    _check_classes(workdir, data.class_names)
    source = None
    if config.init_from and not runs.has_checkpoint(workdir):
      source = pretrained.load(config.init_from)
      try:
        loop.check_initial_params(config, source)
      except ValueError as e:
        raise pretrained.PretrainedError(f"init_from {config.init_from}: {e}") from None
  except (configuration.ConfigError, DatasetError, pretrained.PretrainedError) as e:
    problem = str(e)
  # Every process learns whether any failed its checks, so all stop together (none waits at a
  # barrier for a process that has exited) and none writes.
  if multihost.any_process(problem is not None):
    fail(problem or "another process of this run failed its checks; see its error line")

  lead = jax.process_index() == 0
  if lead:  # the lock is held until this process exits
    try:
      os.makedirs(workdir, exist_ok=True)
      workdir_lock.WorkdirLock(workdir).acquire()
      # Again under the lock: another run may have written the workdir since the first look.
      resuming = configuration.check_workdir(config, workdir)
    except OSError as e:
      problem = f"cannot use workdir {workdir} ({e.strerror}); choose another --workdir"
    except (workdir_lock.WorkdirLocked, configuration.ConfigError) as e:
      problem = str(e)
  if multihost.any_process(problem is not None):
    fail(problem or "process 0 cannot use the workdir; see its error line")
  if lead and not resuming:
    metrics.write_atomically(os.path.join(workdir, "config.json"), configuration.to_json(config))
    if data.class_names:
      metrics.write_atomically(os.path.join(workdir, runs.CLASSES),
                               "\n".join(data.class_names) + "\n")
  multihost.barrier("vit_jax: workdir ready")
  logger = metrics.setup_logging(workdir, write=lead)
  logger.info("%s: %s, %d train / %d eval examples, %d steps of batch %d on %d devices",
              workdir, config.dataset, data.num_train, data.num_eval, config.total_steps,
              config.batch_size, jax.device_count())
  try:
    # From here on SIGTERM/SIGINT only ask the run to stop (after a step, with a checkpoint).
    # Installed after jax.distributed.initialize, whose preemption service takes SIGTERM.
    with preemption.StopRequest() as stop:
      row = loop.train(config, data, workdir, stop, source)
  except loop.Interrupted as e:
    logger.info("Stopped by %s at step %d; %s. Run the same command to resume.", e.reason,
                e.step, "its checkpoint is committed" if e.saved else "no new step to save")
    sys.exit(EXIT_INTERRUPTED)
  except loop.NonFiniteError as e:
    logger.error("error: %s", e)
    sys.exit(EXIT_NONFINITE)
  except (checkpoint.CheckpointError, DatasetError) as e:  # DatasetError: bad_images=stop
    logger.error("error: %s", e)
    sys.exit(EXIT_FAILED)
  except checkpoint.CheckpointSaveError as e:
    logger.error("error: %s", e)
    _exit_quietly(EXIT_SAVE_FAILED)
  except OSError as e:  # metrics or logs that cannot be written: a full disk, a quota
    if e.errno not in WRITE_ERRORS:
      raise
    newest = max(runs.complete_steps(workdir), default=None)
    logger.error("error: could not write %s: %s; %s", e.filename or workdir, e.strerror,
                 checkpoint.resume_hint(newest))
    _exit_quietly(EXIT_SAVE_FAILED)
  if "eval/accuracy" in row:
    logger.info("Finished: eval/accuracy %.4f", row["eval/accuracy"])


def _check_classes(workdir: str, names: tuple[str, ...] | None) -> None:
  """Raises DatasetError when a resumed run's class names (classes.txt) differ from the data's."""
  from vit_jax.data.types import DatasetError
  from vit_jax.io import runs

  stored = runs.class_names(workdir)
  if not names or stored is None:
    return
  if stored != list(names):
    changed = sorted(set(stored) ^ set(names)) or ["their order"]
    path = os.path.join(workdir, runs.CLASSES)
    raise DatasetError(f"the dataset's classes differ from those this run started with ({path}): "
                       f"{', '.join(changed[:5])}; restore the class folders or use a new "
                       "--workdir")


def _exit_quietly(status: int) -> None:
  """Exits after a failed write without the tracebacks its abandoned background I/O prints.

  The other writes of a failed checkpoint finish after Orbax's event loop has closed and report
  "Event loop is closed" as unraisable exceptions, dozens of them. Those raised while the run
  goes on are logged to train.log (`metrics`); those raised during the exit, when logging has
  shut down, are dropped: the run's one-line error has said what happened.
  """
  sys.unraisablehook = lambda unraisable: None
  sys.exit(status)


def run() -> None:
  """Console entry point."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
