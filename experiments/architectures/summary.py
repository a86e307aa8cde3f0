"""The architecture study's table and plot, from a finished configs/sweeps/architectures.py sweep.

  python -m experiments.architectures.summary SWEEP_DIR [--out experiments/architectures]

For each architecture: test accuracy and 10-shot accuracy (mean and sample standard deviation
over seeds), parameters and forward FLOPs per image (from `vit_jax.models.registry`, for the
runs' own classes and channels), and the median training throughput the runs logged
(`--no_speed` leaves it out, for runs that shared the CPU with other work). Writes
summary.json, table.md and accuracy.png to `--out`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from configs import quickstart  # noqa: E402
from configs.sweeps import architectures  # noqa: E402
from vit_jax.models import registry  # noqa: E402

NAMES = {"vit": "ViT", "hybrid": "ResNet+ViT", "t2t": "T2T-ViT", "tnt": "TNT", "mixer": "Mixer"}
SHOT = "fewshot/10shot_accuracy"


def model_facts(arch: str, num_classes: int, channels: int) -> dict[str, float]:
  """Parameters and forward MFLOPs of the architecture's quickstart model."""
  config = quickstart.get_config(arch)
  model = registry.section(config.model.name, **{
      k: v for k, v in config.model.to_dict().items()
      if k != "name" and k in registry.keys(registry.family_of(config.model.name))})
  size = config.image_size
  return {"params": registry.param_count(model, num_classes, size, channels),
          "mflops": registry.forward_flops(model, num_classes, size, channels) / 1e6,
          "image_size": size}


def run_config(run_dir: str) -> dict:
  """The resolved config a run wrote (config.json)."""
  with open(os.path.join(run_dir, "config.json")) as f:
    return json.load(f)


def throughput(run_dir: str) -> float | None:
  """The median `train/img_per_sec` a run logged (None if it logged none)."""
  rates = []
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line) if line.strip() else {}
      if "train/img_per_sec" in row:
        rates.append(row["train/img_per_sec"])
  return statistics.median(rates) if rates else None


def summarise(sweep_dir: str, speed: bool = True) -> list[dict]:
  """One entry per architecture with its metrics over seeds."""
  with open(os.path.join(sweep_dir, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  out = []
  for arch in architectures.ARCHITECTURES:
    mine = [r for r in rows if r["config_arg"] == arch]
    if not mine:
      continue
    acc = [float(r["eval/accuracy"]) for r in mine]
    shot = [float(r[SHOT]) for r in mine if r.get(SHOT)]
    rates = [throughput(os.path.join(sweep_dir, "runs", r["run"])) for r in mine] if speed else []
    rates = [r for r in rates if r]
    config = run_config(os.path.join(sweep_dir, "runs", mine[0]["run"]))
    out.append({
        "arch": arch, "name": NAMES[arch], "seeds": len(mine), "dataset": config["dataset"],
        **model_facts(arch, config["num_classes"], config["image_channels"]),
        "acc_mean": statistics.mean(acc), "acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
        "shot10_mean": statistics.mean(shot) if shot else None,
        "shot10_std": statistics.stdev(shot) if len(shot) > 1 else 0.0,
        "img_per_sec": statistics.median(rates) if rates else None,
    })
  return out


def table(entries: list[dict]) -> str:
  """A Markdown table of the entries."""
  lines = ["| model | params | MFLOPs/image | test acc | 10-shot acc | train img/s | seeds |",
           "|---|---|---|---|---|---|---|"]
  for e in entries:
    shot = "n/a" if e["shot10_mean"] is None else f"{e['shot10_mean']:.3f} ± {e['shot10_std']:.3f}"
    rate = "n/a" if e["img_per_sec"] is None else f"{e['img_per_sec']:.0f}"
    lines.append(f"| {e['name']} | {e['params']:,} | {e['mflops']:.1f} | {e['acc_mean']:.3f} ± "
                 f"{e['acc_std']:.3f} | {shot} | {rate} | {e['seeds']} |")
  return "\n".join(lines) + "\n"


def plot(entries: list[dict], path: str, title: str) -> None:
  """Test accuracy (mean ± std over seeds) against forward FLOPs, one point per architecture."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for e in entries:
    ax.errorbar(e["mflops"], e["acc_mean"], yerr=e["acc_std"], fmt="o", capsize=3)
    ax.annotate(f"{e['name']} ({e['params'] / 1e3:.0f}k)", (e["mflops"], e["acc_mean"]),
                textcoords="offset points", xytext=(5, 5), fontsize=8)
  ax.set_xlabel("forward MFLOPs per image")
  ax.set_ylabel("test accuracy (mean ± std over seeds)")
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("sweep_dir")
  parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
  parser.add_argument("--no_speed", action="store_true", help="leave out the logged img/s")
  args = parser.parse_args()
  entries = summarise(args.sweep_dir, speed=not args.no_speed)
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump(entries, f, indent=1)
  with open(os.path.join(args.out, "table.md"), "w") as f:
    f.write(table(entries))
  dataset = entries[0]["dataset"] if entries else ""
  plot(entries, os.path.join(args.out, "accuracy.png"),
       f"Architectures at quickstart size, same recipe and steps\n({dataset})")
  print(table(entries))


if __name__ == "__main__":
  main()
