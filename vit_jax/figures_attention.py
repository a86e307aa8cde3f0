"""The attention figures of `python -m vit_jax.figures` (computed by vit_jax.attention_maps).

  python -m vit_jax.figures attention --workdir RUN --image IMAGE --out maps.png
  python -m vit_jax.figures attention --params FILE.npz --model PRESET --image IMAGE --out maps.png
  python -m vit_jax.figures distance --workdir RUN [--images 128] --out distance.png

`attention`: the image as the model sees it (the run's evaluation preprocessing, as
vit_jax.predict does), its attention rollout overlaid on it (the paper's Figure 6), and every head
of the last layer overlaid on it. `distance`: the mean attention distance of every head against
the layer (Figure 7, right), averaged over the first N images of the run's evaluation split; it
needs a run (--workdir), whose config says which dataset and preprocessing to use.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

FIGURES = ("attention", "distance")
CHUNK = 32  # images per forward pass of the distance figure (bounds the memory of the weights)
DEFAULT_IMAGES = 128


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The options of the attention figures (--workdir and --out are the command's own)."""
  parser.add_argument("--params", default=None, help="attention: an original-format .npz file "
                      "instead of --workdir (needs --model)")
  parser.add_argument("--model", default=None, help="the preset of --params, e.g. ViT-B/16")
  parser.add_argument("--image_size", type=int, default=None, help="resolution for --params")
  parser.add_argument("--image", default=None, help="attention: the image file to inspect")
  parser.add_argument("--images", type=int, default=DEFAULT_IMAGES,
                      help=f"distance: evaluation images to average over ({DEFAULT_IMAGES})")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")


def check_arguments(args: argparse.Namespace) -> str | None:
  """Why the arguments of an attention figure cannot be used (None when they can)."""
  if args.figure == "distance":
    if not args.workdir:
      return ("distance needs --workdir (a training run: its config names the evaluation data); "
              "--params files carry no dataset")
    if args.images <= 0:
      return f"--images must be positive, got {args.images}"
    return None
  if bool(args.workdir) == bool(args.params):
    return "attention needs either --workdir RUN or --params FILE.npz --model PRESET"
  if args.params and not args.model:
    return "--params needs --model (the preset its parameters belong to, e.g. ViT-B/16)"
  if not args.image:
    return "attention needs --image (an image file to inspect)"
  return None


def run(args: argparse.Namespace) -> None:
  """Writes the figure `args.figure` asks for to `args.out`; one-line ValueError when it cannot."""
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax logs every restore at INFO
  if args.figure == "distance":
    distance_figure(args.workdir, args.images, args.out, args.step)
  else:
    attention_figure(args, args.out)


def _source(args: argparse.Namespace) -> tuple[dict[str, Any], Any, list[str] | None, str]:
  from vit_jax import predict

  if args.workdir:
    setup, params, names = predict.from_run(args.workdir, args.step)
    return setup, params, names, os.path.basename(os.path.normpath(args.workdir))
  setup, params = predict.from_params(args.params, args.model, args.image_size)
  return setup, params, None, f"{args.model} ({os.path.basename(args.params)})"


def attention_figure(args: argparse.Namespace, path: str) -> None:
  """Rollout and last-layer head maps of one image file (`args.image`), written to `path`."""
  import jax

  from vit_jax import attention_maps, predict

  setup, params, names, label = _source(args)
  attention_maps.layout(setup["model"], setup["image_size"], setup["image_size"])  # has attention?
  images = predict.read_images([args.image], setup)
  probabilities = predict.predict(images, setup, params)  # also: do the parameters fit?
  best = predict.top_k(probabilities, 1, names)[0][0]
  params = jax.device_put(params)
  inspector = attention_maps.make_inspector(setup["model"], setup["num_classes"])
  weights = np.asarray(inspector(params, images)[1])[:, 0]  # (L, H, T, T) of the one image
  where = attention_maps.layout(setup["model"], *images.shape[1:3])
  title = (f"{label}: {os.path.basename(args.image)}, predicted {best['name']} "
           f"({best['probability']:.2f})")
  plot_attention(images[0], attention_maps.rollout_map(weights, where),
                 attention_maps.head_maps(weights, where), path, title, len(weights))


def _overlay(ax: Any, image: np.ndarray, patch_map: np.ndarray | None, title: str) -> None:
  from vit_jax import attention_maps

  grey = image.shape[-1] == 1
  ax.imshow(image[..., 0] if grey else image, cmap="gray" if grey else None, vmin=0, vmax=255)
  if patch_map is not None:
    heat = attention_maps.upsample(patch_map, image.shape[0], image.shape[1])
    ax.imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=float(heat.max()))
  ax.set_title(title, fontsize=8)
  ax.set_xticks([])
  ax.set_yticks([])


def plot_attention(image: np.ndarray, rollout: np.ndarray, heads: np.ndarray, path: str,
                   title: str = "", layers: int | None = None) -> None:
  """The image (uint8 H, W, C), its rollout map (gh, gw) and the head maps (H, gh, gw) of the
  last of `layers` layers, each overlaid on the image."""
  panels = [(None, f"input ({image.shape[0]}x{image.shape[1]})"),
            (rollout, f"rollout ({layers} layers)" if layers else "attention rollout")]
  layer = f"layer {layers}" if layers else "last layer"
  panels += [(m, f"{layer}, head {h + 1}") for h, m in enumerate(heads)]
  cols = min(len(panels), 6)
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows + 0.6), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, (patch_map, name) in zip(axes.flat, panels, strict=False):
    ax.axis("on")
    _overlay(ax, image, patch_map, name)
  fig.suptitle(f"{title}\n(colour from 0 to each map's maximum; {rollout.shape[0]}x"
               f"{rollout.shape[1]} patch maps upsampled to the image)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def evaluation_images(workdir: str, count: int) -> tuple[np.ndarray, str]:
  """The first `count` images (uint8, preprocessed) of a run's evaluation split, and its name."""
  from ml_collections import ConfigDict

  from vit_jax.data import pipeline
  from vit_jax.data.types import Feed
  from vit_jax.io import runs

  with runs.Run(workdir) as run:
    config = ConfigDict(run.config)
  data = pipeline.load(config, Feed.from_config(config))
  taken, total = [], 0
  with contextlib.closing(data.eval_batches()) as batches:
    for batch in batches:
      images = batch["image"][batch["mask"] > 0][:count - total]
      taken.append(images)
      total += len(images)
      if total >= count:
        break
  if not total:
    raise ValueError(f"the evaluation split '{data.splits[1]}' of {workdir} has no images")
  return np.concatenate(taken), data.splits[1]


def mean_distances(setup: dict[str, Any], params: Any, images: np.ndarray) -> np.ndarray:
  """(L, H): the mean attention distance in pixels of every head, averaged over `images`."""
  import jax

  from vit_jax import attention_maps

  inspector = attention_maps.make_inspector(setup["model"], setup["num_classes"])
  where = attention_maps.layout(setup["model"], *images.shape[1:3])
  distances = jax.jit(lambda p, x: attention_maps.mean_distance(inspector(p, x)[1], where))
  params = jax.device_put(params)
  chunk = min(CHUNK, len(images))
  total = 0.0
  for start in range(0, len(images), chunk):
    part = images[start:start + chunk]
    valid = len(part)
    part = np.concatenate([part, np.zeros((chunk - valid, *part.shape[1:]), part.dtype)])
    total = total + np.asarray(distances(params, part), np.float64)[:, :valid].sum(axis=1)
  return total / len(images)


def distance_figure(workdir: str, count: int, path: str, step: int | None = None) -> None:
  """Mean attention distance per head and layer of a run, over `count` evaluation images."""
  from vit_jax import attention_maps, predict

  setup, params, _ = predict.from_run(workdir, step)
  attention_maps.layout(setup["model"], setup["image_size"], setup["image_size"])  # has attention?
  images, split = evaluation_images(workdir, count)
  where = attention_maps.layout(setup["model"], *images.shape[1:3])
  gh, gw = where.grid
  title = (f"{os.path.basename(os.path.normpath(workdir))}: {len(images)} '{split}' images, "
           f"{gh}x{gw} patches of {where.patch_size} px")
  plot_distance(mean_distances(setup, params, images), path,
                attention_maps.uniform_distance(where), title)


def plot_distance(distances: np.ndarray, path: str, uniform: float | None = None,
                  title: str = "") -> None:
  """Scatter of the mean attention distance (L, H) in pixels: x the layer (1-based), one point
  per head; `uniform` (a dashed line) is the distance of a head attending to all patches alike."""
  layers, heads = distances.shape
  fig, ax = plt.subplots(figsize=(5.5, 4))
  offsets = (np.arange(heads) - (heads - 1) / 2) * min(0.06, 0.5 / max(heads, 1))
  for h in range(heads):
    ax.scatter(np.arange(1, layers + 1) + offsets[h], distances[:, h], s=18, alpha=0.8,
               color="tab:blue", edgecolors="none", label="one head" if h == 0 else None)
  if uniform is not None:
    ax.axhline(uniform, color="gray", linestyle="--", linewidth=1,
               label=f"uniform attention ({uniform:.1f} px)")
  top = max(float(np.max(distances)), uniform or 0.0)
  ax.set_ylim(0, 1.15 * top + 1e-6)
  ax.set_xlim(0.5, layers + 0.5)
  ax.set_xticks(np.arange(1, layers + 1))
  ax.set_xlabel("network depth (layer)")
  ax.set_ylabel("mean attention distance (pixels)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="best")
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
