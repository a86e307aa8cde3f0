"""The fault-injection experiment in reduced form: a small model, two signals of each kind."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--config.total_steps=200", "--config.warmup_steps=1", "--config.batch_size=16",
         "--config.log_every=10", "--config.eval_every=0", "--config.checkpoint_every=10",
         "--config.model.hidden_size=32", "--config.model.num_layers=1",
         "--config.model.num_heads=2", "--config.model.mlp_dim=32"]


def load_experiment():
  path = ROOT / "experiments" / "reliability" / "fault_injection.py"
  spec = importlib.util.spec_from_file_location("fault_injection", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_runs_killed_or_stopped_and_restarted_end_bit_identical_to_an_uninterrupted_run(tmp_path):
  experiment = load_experiment()
  # One reference run serves both signals (the experiment reuses it from the same folder).
  for sig in ("KILL", "TERM"):
    # run() raises when the final states or the logged losses differ; here: what was exercised.
    report = experiment.run("configs/quickstart.py", tmp_path, SMALL, sig, kills=2, seed=0,
                            say=lambda *_: None)
    assert report["final_step"] == 200 and report["arrays_compared"] > 0
    signalled = [e for e in report["events"] if e["signal"] == sig]
    assert signalled, report["events"]
    if sig == "TERM":
      stopped = [e for e in signalled if "stopped_at" in e]
      assert stopped and all(e["status"] == 75 for e in stopped)
      assert all(e["newest_checkpoint"] == e["stopped_at"] for e in stopped)


FAMILIES = {
    "hybrid": ["--config.model.hidden_size=32", "--config.model.num_layers=1",
               "--config.model.num_heads=2", "--config.model.mlp_dim=32"],
    "mixer": ["--config.model.hidden_size=32", "--config.model.num_layers=1",
              "--config.model.tokens_mlp_dim=16", "--config.model.channels_mlp_dim=32"],
    # The performer T2T layers always draw dropout: the resumed run must redraw the same. At
    # the digits' own 28x28, soft splits of strides 2, 2, 1 give 7x7 tokens.
    "t2t": ["--config.image_size=28", "--config.model.t2t_strides=(2, 2, 1)",
            "--config.model.hidden_size=32", "--config.model.num_layers=1",
            "--config.model.num_heads=2", "--config.model.mlp_dim=32",
            "--config.model.token_dim=16", "--config.model.drop_path=0.1"],
    "tnt": ["--config.model.hidden_size=32", "--config.model.num_layers=1",
            "--config.model.num_heads=2", "--config.model.mlp_dim=32",
            "--config.model.inner_dim=8", "--config.model.inner_heads=2",
            "--config.model.inner_mlp_dim=16", "--config.model.drop_path=0.1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(FAMILIES))
def test_the_other_families_resume_bit_identically_after_sigkill(tmp_path, variant):
  experiment = load_experiment()
  extra = [*SMALL[:6], "--config.total_steps=60", *FAMILIES[variant]]
  # Seed 1 draws the kill at 13% of the reference run's training time: well inside the run.
  report = experiment.run(f"configs/quickstart.py:{variant}", tmp_path, extra, "KILL", kills=1,
                          seed=1, say=lambda *_: None)
  assert report["final_step"] == 60 and report["arrays_compared"] > 0
  assert [e for e in report["events"] if e["signal"] == "KILL"], report["events"]
