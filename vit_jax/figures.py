"""Figures as PNG files: sweep bar charts, position-embedding similarity, training curves, the
principal components of the patch-embedding filters (the paper's Figure 7, left), and attention
maps and mean attention distances (Figures 6 and 7, right; vit_jax.figures_attention).

  python -m vit_jax.figures similarity --workdir RUN --out posemb.png
  python -m vit_jax.figures curves --workdir RUN --out curves.png
  python -m vit_jax.figures filters --workdir RUN --out filters.png
  python -m vit_jax.figures attention (--workdir RUN | --params FILE.npz --model PRESET) \
      --image IMAGE --out maps.png
  python -m vit_jax.figures distance --workdir RUN [--images 128] --out distance.png
  python -m vit_jax.figures sweep --workdir SWEEP_DIR --out results.png \
      [--sweep_config configs/sweeps/posemb.py --table 1]   (reads results.csv)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vit_jax import figures_attention, results, sweep_config  # noqa: E402


def sweep_bars(rows: list[dict[str, Any]], table: dict[str, Any], path: str) -> None:
  """Grouped bars (rows x columns of `table`) of eval and k-shot accuracy, std error bars."""
  metrics = ["eval/accuracy"] + results.shot_keys(rows)[-1:]
  where = table.get("where", {})
  row_values = list(dict.fromkeys(str(r.get(table["rows"])) for r in rows
                                  if results.matches(r, where)))
  col_values = list(dict.fromkeys(str(r.get(table["cols"])) for r in rows
                                  if results.matches(r, where))) if table["cols"] else [""]
  fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
  width = 0.8 / len(col_values)
  for ax, metric in zip(axes[0], metrics, strict=True):
    groups = results.cells(rows, table, metric)
    for j, col in enumerate(col_values):
      stats = [results.mean_std(groups[(r, col)]) if (r, col) in groups else (np.nan, 0.0)
               for r in row_values]
      x = np.arange(len(row_values)) + (j - (len(col_values) - 1) / 2) * width
      ax.bar(x, [s[0] for s in stats], width, yerr=[s[1] for s in stats], capsize=3,
             label=col or None)
    finite = [v for g in groups.values() for v in g]
    if finite:
      low, high = min(finite), max(finite)
      ax.set_ylim(max(0.0, low - 0.1 * (high - low + 1e-3) - 0.01), min(1.0, high + 0.01))
    ax.set_xticks(np.arange(len(row_values)), row_values)
    ax.set_xlabel(table["rows"])
    ax.set_ylabel(metric)
    ax.grid(axis="y", alpha=0.3)
  if table["cols"]:
    axes[0][0].legend(title=table["cols"], fontsize=8)
  fig.suptitle(table.get("title", ""), fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def similarity_grid(table: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """(gh, gw, gh, gw): cosine similarity of each patch's embedding with every other patch's."""
  unit = table / np.maximum(np.linalg.norm(table, axis=-1, keepdims=True), 1e-12)
  return (unit @ unit.T).reshape(*grid, *grid)


def plot_similarity(sim: np.ndarray, path: str, title: str = "") -> None:
  """One small map per patch (row i, column j): its similarity to every patch, as in Figure 7."""
  gh, gw = sim.shape[:2]
  fig, axes = plt.subplots(gh, gw, figsize=(1.1 * gw + 1, 1.1 * gh), squeeze=False)
  for i in range(gh):
    for j in range(gw):
      image = axes[i][j].imshow(sim[i, j], vmin=-1, vmax=1, cmap="viridis")
      axes[i][j].set_xticks([])
      axes[i][j].set_yticks([])
  fig.colorbar(image, ax=axes, shrink=0.6, label="cosine similarity")
  fig.suptitle(title, fontsize=9)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run_similarity(workdir: str, path: str) -> None:
  """The similarity grid of the first position table of a run's newest checkpoint."""
  from vit_jax.io import runs
  from vit_jax.models import posemb

  with runs.Run(workdir) as run:
    config, params, grid = run.config, run.params(), run.grid()
  model = config["model"]
  if "posemb" not in model:
    raise ValueError(f"{workdir} trained {model['name']}, which has no position embedding; "
                     "the similarity figure needs a ViT or hybrid run")
  kind = model["posemb"]
  module = params.get("Transformer", {}).get("posembed_input", {})
  table = posemb.patch_table(kind, module, grid, model["hidden_size"])
  plot_similarity(similarity_grid(table, grid), path,
                  f"{kind} ({model['posemb_mode']}): position-embedding similarity")


def filter_components(kernel: np.ndarray, count: int = 28) -> tuple[np.ndarray, np.ndarray]:
  """The top principal components of the patch-embedding filters and their variance shares.

  `kernel` is the patch convolution (p, p, C, D): D filters of p*p*C values. Returns components
  (k, p, p, C), unit vectors in filter space, best first, and the share of the filters' variance
  each explains.
  """
  p, q, c, d = kernel.shape
  filters = kernel.reshape(p * q * c, d).T.astype(np.float64)  # (D, p*p*C)
  filters = filters - filters.mean(axis=0)
  _, singular, components = np.linalg.svd(filters, full_matrices=False)
  k = min(count, len(singular))
  share = singular**2 / np.sum(singular**2)
  return components[:k].reshape(k, p, q, c), share[:k]


def plot_filters(workdir: str, path: str, count: int = 28) -> None:
  """The top principal components of a run's first filters, as a grid of images.

  The filters of the convolution that sees the pixels: the ViT's patch embedding, a Mixer's
  stem, a hybrid's 7x7 ResNet root.
  """
  from vit_jax.io import runs

  with runs.Run(workdir) as run:
    params = run.params()
  # The convolution that sees the pixels: a hybrid's ResNet root, a Mixer's stem, else the ViT's
  # patch embedding.
  first = next(name for name in ("conv_root", "stem", "embedding") if name in params)
  kernel = np.asarray(params[first]["kernel"])
  components, share = filter_components(kernel, count)
  cols = min(7, len(components))
  rows = -(-len(components) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows + 0.5), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for i, (component, ax) in enumerate(zip(components, axes.flat, strict=False)):
    low, high = component.min(), component.max()
    image = (component - low) / (high - low + 1e-12)  # each component on its own scale
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray",
              interpolation="nearest")
    ax.set_title(f"{i + 1}: {100 * share[i]:.1f}%", fontsize=7)
  what = {"conv_root": "ResNet root", "stem": "Mixer stem"}.get(first, "patch-embedding")
  fig.suptitle(f"{what} filters: principal components ({kernel.shape[0]}x"
               f"{kernel.shape[1]}x{kernel.shape[2]}, {kernel.shape[3]} filters)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def training_curves(workdir: str, path: str) -> None:
  """Training loss, and evaluation / few-shot accuracy, against step from metrics.jsonl."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  train = [r for r in rows if "train/loss" in r]
  left.plot([r["step"] for r in train], [r["train/loss"] for r in train])
  left.set_yscale("log")
  left.set_xlabel("step")
  left.set_ylabel("train/loss")
  for key in ["eval/accuracy", *results.shot_keys(rows)]:
    points = [r for r in rows if key in r]
    right.plot([r["step"] for r in points], [r[key] for r in points], "o-", label=key)
  right.set_xlabel("step")
  right.set_ylabel("accuracy")
  right.legend(fontsize=8)
  for ax in (left, right):
    ax.grid(alpha=0.3)
  fig.suptitle(os.path.basename(os.path.normpath(workdir)), fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _read_csv(path: str) -> list[dict[str, Any]]:
  with open(path) as f:
    rows = list(csv.DictReader(f))
  for row in rows:
    for key, value in row.items():
      if key.startswith(("eval/", "fewshot/")) and value:
        row[key] = float(value)
  return rows


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vit_jax.figures")
  parser.add_argument("figure", choices=["similarity", "curves", "filters", "sweep",
                                         *figures_attention.FIGURES])
  parser.add_argument("--workdir", default=None, help="a training run's (or sweep's) directory")
  parser.add_argument("--out", required=True, help="PNG file to write")
  parser.add_argument("--sweep_config", default="", help="sweep config whose tables to use")
  parser.add_argument("--table", type=int, default=0, help="which of its tables to plot")
  figures_attention.add_arguments(parser)
  args = parser.parse_args(argv)
  if args.figure in figures_attention.FIGURES:
    problem = figures_attention.check_arguments(args)
  else:
    problem = None if args.workdir else (f"{args.figure} needs --workdir DIR (a training run's "
                                         "directory; for sweep, the sweep's)")
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    return 2
  try:
    if args.figure in figures_attention.FIGURES:
      figures_attention.run(args)
    elif args.figure == "similarity":
      run_similarity(args.workdir, args.out)
    elif args.figure == "curves":
      training_curves(args.workdir, args.out)
    elif args.figure == "filters":
      plot_filters(args.workdir, args.out)
    else:
      rows = _read_csv(os.path.join(args.workdir, "results.csv"))
      table = {"rows": "model.posemb", "cols": "model.posemb_mode", "where": {}}
      if args.sweep_config:
        table = sweep_config.load_sweep(args.sweep_config).get_tables()[args.table]
      sweep_bars(rows, table, args.out)
  except (OSError, ValueError, KeyError, IndexError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
