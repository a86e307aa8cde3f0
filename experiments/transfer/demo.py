"""Transfer end to end on real data that ships with the packages: pretrain, export, fine-tune.

  pip install scikit-learn          # the target data (its 1,797 8x8 digits); not a dependency
  python -m experiments.transfer.demo WORKDIR

1. Pretrains the quickstart model (configs/quickstart.py) on the bundled MNIST digits, 28x28.
2. Exports it to the original `.npz` format (vit_jax.io.npz).
3. Writes scikit-learn's 8x8 digits (another dataset: other writers, 16 grey levels) as an image
   folder `digits_10`: 10 training images per class and 500 test images (50 per class); the
   input pipeline upsamples them to 56x56 (patch grid 4x4 -> 8x8). (`folders` in `main` also
   takes `digits`, all 1,297 remaining images as training data.)
4. Runs the transfer sweep (configs/sweeps/transfer.py) on the folder from the `.npz`: the
   learning rate chosen on a 10% minival, then trained on all training images and tested.
5. Runs the same sweep from scratch (no init_from), and the quickstart's own recipe (AdamW,
   weight decay, its learning rate) from scratch for the same number of steps.
6. Measures the few-shot accuracy of the source's features on the target at the source's own
   resolution (28x28; one step of fine-tuning, whose step-0 row is the unchanged source), to
   compare with step 0 of the 56x56 fine-tuning (resampled position table).
7. Writes WORKDIR/summary.json and transfer_vs_scratch.png.
Every step skips what is already complete, so the command can be run again after a stop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS, BATCH, WARMUP, SIZE = 100, 64, 10, 56  # the fine-tuning budget, at 56x56
TEST_PER_CLASS = 50
SHOTS = "(1, 5, 10)"


def run(*args: str) -> None:
  print("$", " ".join(args), flush=True)
  subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def write_sklearn_digits(root: str, per_class: int | None) -> None:
  """8x8 digits as PNG files (0..16 scaled to 0..255): a fixed, stratified train/test split."""
  from PIL import Image
  from sklearn.datasets import load_digits

  if os.path.isdir(os.path.join(root, "test")):
    return
  digits = load_digits()
  rng = np.random.default_rng(0)
  for label in range(10):
    order = rng.permutation(np.flatnonzero(digits.target == label))
    parts = {"test": order[:TEST_PER_CLASS], "train": order[TEST_PER_CLASS:]}
    if per_class is not None:
      parts["train"] = parts["train"][:per_class]
    for split, indices in parts.items():
      folder = os.path.join(root, split, str(label))
      os.makedirs(folder, exist_ok=True)
      for i in indices:
        pixels = np.round(digits.images[i] * (255 / 16)).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{i:04d}.png"))


def finished(workdir: str) -> bool:
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      total = json.load(f)["total_steps"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      return json.loads(f.read().splitlines()[-1]).get("step") == total
  except (OSError, ValueError, IndexError, KeyError):
    return False


def rows(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def main(work: str) -> None:
  work = os.path.abspath(work)
  os.makedirs(work, exist_ok=True)
  pretrain, npz = os.path.join(work, "pretrain"), os.path.join(work, "quickstart.npz")
  if not finished(pretrain):
    run("-m", "vit_jax.main", "--config", "configs/quickstart.py", "--workdir", pretrain,
        f"--config.fewshot.shots={SHOTS}")
  if not os.path.exists(npz):
    run("-m", "vit_jax.io.npz", "--workdir", pretrain, "--out", npz)
  folders = {"digits_10": 10}  # add "digits": None for all 1,297 training images (2x the time)
  for name, per_class in folders.items():
    write_sklearn_digits(os.path.join(work, name), per_class)
  datasets = ",".join(f"folder:{os.path.join(work, name)}" for name in folders)
  budget = [f"--config.image_size={SIZE}", f"--config.total_steps={STEPS}",
            f"--config.batch_size={BATCH}", f"--config.warmup_steps={WARMUP}",
            "--config.eval_every=0", f"--config.checkpoint_every={STEPS}",
            f"--config.fewshot.shots={SHOTS}", "--config.fewshot.pool=1000"]
  sweep = ["-m", "vit_jax.sweep", "--config", f"configs/sweeps/transfer.py:quickstart,{datasets}"]
  run(*sweep, "--workdir", os.path.join(work, "transfer"), *budget, f"--config.init_from={npz}")
  run(*sweep, "--workdir", os.path.join(work, "scratch_sgd"), *budget)
  for name in folders:  # the quickstart's own recipe, from scratch, for the same steps
    adam = os.path.join(work, "scratch_adam", name)
    if not finished(adam):
      run("-m", "vit_jax.main", "--config", "configs/quickstart.py", "--workdir", adam,
          f"--config.dataset=folder:{os.path.join(work, name)}", *budget,
          "--config.augment=inception_crop_flip")
  for name in folders:  # the source's own features on the target, at its resolution (28)
    same = os.path.join(work, "source_features_28", name)
    if not finished(same):
      run("-m", "vit_jax.main", "--config", f"configs/finetune.py:quickstart,folder:"
          f"{os.path.join(work, name)}", "--workdir", same, f"--config.init_from={npz}",
          *budget[1:], "--config.image_size=28", "--config.total_steps=1",
          "--config.warmup_steps=0", "--config.checkpoint_every=1")
  summarize(work, list(folders))


def summarize(work: str, names: list[str]) -> None:
  """summary.json and transfer_vs_scratch.png from the runs' metrics."""
  import csv

  summary: dict[str, dict] = {}
  for name in names:
    entry = {}
    for kind in ("transfer", "scratch_sgd"):
      with open(os.path.join(work, kind, "results.csv")) as f:
        table = [r for r in csv.DictReader(f) if r["config_arg"].endswith(f"/{name}")]
      final = next(r for r in table if r["phase"] == "final")
      entry[kind] = {"lr": float(final["lr"]), "test_accuracy": float(final["eval/accuracy"]),
                     "minival": {r["lr"]: float(r["eval/accuracy"]) for r in table
                                 if r["phase"] == "select"},
                     "run": final["run"]}
    adam = rows(os.path.join(work, "scratch_adam", name))
    entry["scratch_adam"] = {"test_accuracy": adam[-1]["eval/accuracy"]}
    first = rows(os.path.join(work, "transfer", "runs", entry["transfer"]["run"]))[0]
    entry["transfer"]["fewshot_step0"] = {k: v for k, v in first.items() if "shot" in k}
    same = rows(os.path.join(work, "source_features_28", name))[0]
    entry["source_features_28"] = {k: v for k, v in same.items() if "shot" in k}
    summary[name] = entry
  source = rows(os.path.join(work, "pretrain"))[-1]
  summary["source"] = {"eval_accuracy_mnist": source["eval/accuracy"],
                       "fewshot_mnist": {k: v for k, v in source.items() if "shot" in k}}
  with open(os.path.join(work, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  plot(summary, names, os.path.join(work, "transfer_vs_scratch.png"))
  print(json.dumps(summary, indent=1))


def plot(summary: dict, names: list[str], path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  kinds = [("transfer", "fine-tuned from the .npz (SGD)"), ("scratch_sgd", "scratch, same recipe"),
           ("scratch_adam", "scratch, quickstart's AdamW")]
  fig, ax = plt.subplots(figsize=(6, 3.6))
  width = 0.8 / len(kinds)
  for j, (kind, label) in enumerate(kinds):
    values = [summary[n][kind]["test_accuracy"] for n in names]
    x = np.arange(len(names)) + (j - 1) * width
    bars = ax.bar(x, values, width, label=label)
    for bar, v in zip(bars, values, strict=True):
      ax.annotate(f"{v:.3f}", (bar.get_x() + bar.get_width() / 2, v), ha="center",
                  va="bottom", fontsize=7)
  ax.set_xticks(np.arange(len(names)), [f"{n} ({'10/class' if n.endswith('10') else 'all'})"
                                        for n in names])
  ax.set_ylim(0, 1.08)
  ax.set_ylabel("test accuracy (500 images)")
  ax.set_title(f"scikit-learn digits at {SIZE}x{SIZE}, {STEPS} steps of batch {BATCH}",
               fontsize=9)
  ax.legend(fontsize=7, loc="lower right")
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit("usage: python -m experiments.transfer.demo WORKDIR")
  main(sys.argv[1])
