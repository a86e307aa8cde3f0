"""`python -m vit_jax.predict (--workdir RUN | --params FILE --model NAME) IMAGE...`.

Prints the top-k classes of each image with their probabilities, by name where names are known
(`--classes FILE`, else the run's `classes.txt`; a 1,000-class ImageNet model's names come from
tensorflow-datasets), as text or with `--json` one JSON line per image. Images of any size and
mode are preprocessed as the run's evaluation does (resize, or `eval_resize_small` and a central
crop). A run's newest checkpoint is used unless `--step` names
another; the run is only read. With `--params` (an original-format `.npz` file) the number of
classes, the pre-logits width and the input channels are read off the parameters and the
resolution off the position table (or `--image_size`). Files run `--batch` at a time (64), so
memory holds one batch of images whatever their number. Exit status 2 with one `error:` line
for anything that cannot be read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from typing import Any

import numpy as np


class PredictError(ValueError):
  """Something given to the command cannot be used; the message is one line."""


def from_run(workdir: str, step: int | None) -> tuple[dict[str, Any], Any, list[str] | None]:
  """(setup, per-layer params, class names or None) of checkpoint `step` (None: the newest).

  `setup` holds what predicting needs: the model section, num_classes, loss, image_size,
  channels and resize_small (the evaluation preprocessing).
  """
  from vit_jax.io import runs

  with runs.Run(workdir) as run:
    config = run.config
    if run.latest_step() is None:
      raise PredictError(f"{workdir} has no checkpoint yet")
    params = run.params(step)
  names = runs.class_names(workdir)
  model = {**config["model"], "scan_layers": False}  # checkpoints hold per-layer parameters
  setup = {"model": model, "num_classes": config["num_classes"], "loss": config["loss"],
           "image_size": config["image_size"], "channels": config["image_channels"],
           "resize_small": config.get("eval_resize_small", 0)}
  return setup, params, names


def from_params(path: str, name: str, image_size: int | None) -> tuple[dict[str, Any], Any]:
  """(setup, params) of an original-format .npz file of preset `name` (see `from_run`)."""
  from vit_jax.io import pretrained
  from vit_jax.models import registry

  source = pretrained.load(path)
  params = source.params
  try:
    model = registry.section(name)
  except registry.ModelNameError as e:
    raise PredictError(str(e).replace("model.name", "--model", 1)) from None
  family = registry.family_of(name)
  if "head" not in params or registry.family_of_params(params) is None:
    raise PredictError(f"{path} has no head or is no ViT, hybrid or Mixer classifier")
  if source.gelu is not None:  # a format that fixes it (timm: the exact GELU)
    model["gelu"] = source.gelu
  if "pre_logits" in params:
    model["representation_size"] = int(params["pre_logits"]["bias"].shape[0])
  if "cls" not in params and "pool" in model:  # pooled by a probe (MAP) or by the average
    model["pool"] = "map" if "MAPHead_0" in params else "gap"
  if image_size is None:
    if source.grid is None:
      raise PredictError(f"{path} has no learned position table to read the resolution off; "
                         "give --image_size")
    image_size = source.grid[0] * family.token_stride(model)
  problem = registry.source_problem(model, params, source.grid, image_size, path)
  if problem:  # name this command's flags
    raise PredictError(problem.replace("--config.image_size=", "--image_size ").replace(
        "model.name ", "--model ").replace("set --config.--model to", "name"))
  first = params.get("conv_root") or params.get("embedding") or params["stem"]
  setup = {"model": model, "num_classes": int(params["head"]["bias"].shape[0]),
           "loss": "softmax_xent", "image_size": image_size,
           "channels": int(first["kernel"].shape[-2]), "resize_small": 0}
  return setup, params


def read_images(paths: list[str], setup: dict[str, Any]) -> np.ndarray:
  """uint8 (N, size, size, channels): image files preprocessed as the evaluation does."""
  from vit_jax.data import preprocess

  images = []
  for path in paths:
    try:
      with open(path, "rb") as f:
        raw = f.read()
      images.append(preprocess.eval_image(raw, setup["image_size"], setup["channels"],
                                          setup["resize_small"]))
    except OSError as e:
      raise PredictError(f"cannot read {path} ({e.strerror or e})") from None
    except preprocess.UnreadableImage as e:
      raise PredictError(f"{path} is not an image this command can read ({e})") from None
  return np.stack(images)


def predict(images: np.ndarray, setup: dict[str, Any], params: Any,
            forward: Callable[[Any, np.ndarray], Any] | None = None) -> np.ndarray:
  """Class probabilities (N, classes): softmax, or per-class sigmoid for a sigmoid-loss model.

  `forward(params, images)` (from `make_forward`) computes the logits; passing the same one for
  every batch compiles the model once.
  """
  from flax.errors import FlaxError

  forward = forward or make_forward(setup)
  try:
    logits = np.asarray(forward(params, images))
  except FlaxError as e:  # parameters of another architecture than the named one
    first = str(e).strip().splitlines()[0][:200]
    raise PredictError(f"the parameters do not fit {setup['model']['name']}: {first}") from None
  if setup["loss"] == "sigmoid_xent":
    return 1.0 / (1.0 + np.exp(-logits))
  shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return shifted / shifted.sum(axis=-1, keepdims=True)


def make_forward(setup: dict[str, Any]) -> Forward:
  """The compiled forward pass of `setup`'s model, (params, uint8 images) -> logits, split over
  this process's devices and, on a CPU, run in cache-sized chunks as evaluation is."""
  import jax

  from vit_jax.models import registry
  from vit_jax.train import chunks, cpu_matmul, sharding

  model = registry.build(setup["model"], setup["num_classes"])
  mesh = sharding.make_mesh()
  image_shape = (setup["image_size"],) * 2 + (setup["channels"],)
  per_pass = chunks.images_per_pass(0, model, image_shape, jax.default_backend())
  forward = jax.jit(
      lambda p, x: chunks.sharded_apply(lambda part: model.apply({"params": p}, part), x,
                                        per_pass, mesh.size),
      in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
      compiler_options=cpu_matmul.inference_options(
          "auto", jax.default_backend(), *registry.family_and_width(setup["model"])))
  return Forward(forward, mesh.size)


@dataclasses.dataclass(frozen=True)
class Forward:
  """A compiled forward pass, (params, images) -> logits, over `devices` devices; a batch that
  does not split evenly over them is padded, and the padding's rows dropped."""

  apply: Callable[[Any, np.ndarray], Any]
  devices: int

  def __call__(self, params: Any, images: np.ndarray) -> Any:
    real = len(images)
    spare = -real % self.devices
    if spare:
      images = np.concatenate([images, np.zeros((spare, *images.shape[1:]), images.dtype)])
    return self.apply(params, images)[:real]


def predict_files(paths: list[str], setup: dict[str, Any], params: Any,
                  batch: int) -> np.ndarray:
  """Probabilities for image files, read and run `batch` at a time.

  When there is more than one batch, the last is padded to `batch` images (their rows
  dropped), so the model compiles once; memory holds one batch of images at a time.
  """
  forward = make_forward(setup)
  out = []
  for start in range(0, len(paths), batch):
    images = read_images(paths[start:start + batch], setup)
    real = len(images)
    if start and real < batch:
      images = np.concatenate([images, np.zeros((batch - real, *images.shape[1:]), images.dtype)])
    out.append(predict(images, setup, params, forward)[:real])
  return np.concatenate(out)


def top_k(probabilities: np.ndarray, k: int, names: list[str] | None) -> list[list[dict]]:
  """Per image, the k most probable classes: {"class", "name", "probability"}, best first."""
  out = []
  for row in probabilities:
    best = np.argsort(-row, kind="stable")[:k]
    out.append([{"class": int(i), "name": names[i] if names else str(int(i)),
                 "probability": float(row[i])} for i in best])
  return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
  """The predictions the arguments ask for, one record per image."""
  if args.workdir:
    setup, params, names = from_run(args.workdir, args.step)
  else:
    setup, params = from_params(args.params, args.model, args.image_size)
    names = None
  if args.classes:
    try:
      with open(args.classes) as f:
        names = f.read().splitlines()
    except OSError as e:
      raise PredictError(f"cannot read --classes {args.classes} ({e.strerror})") from None
  if names is not None and len(names) != setup["num_classes"]:
    raise PredictError(f"{len(names)} class names for a model of {setup['num_classes']} classes")
  if not args.classes:  # ImageNet synsets, or an unnamed 1,000-class head: readable names
    from vit_jax.data import class_names

    names = class_names.readable(names, setup["num_classes"])
  probabilities = predict_files(args.images, setup, params, args.batch)
  best = top_k(probabilities, min(args.top_k, setup["num_classes"]), names)
  return [{"image": path, "top": top} for path, top in zip(args.images, best, strict=True)]


def parse(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m vit_jax.predict", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", help="a training run's directory")
  source.add_argument("--params", help="an original-format .npz file (needs --model)")
  p.add_argument("--model", help="the preset of --params, e.g. ViT-B/16")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
  p.add_argument("--image_size", type=int, default=None, help="resolution for --params")
  p.add_argument("--classes", default=None, help="a file of class names, one per line")
  p.add_argument("--top_k", type=int, default=5)
  p.add_argument("--batch", type=int, default=64,
                 help="images per forward pass (more files run in several passes)")
  p.add_argument("--json", action="store_true", help="one JSON line per image")
  p.add_argument("images", nargs="+", help="image files")
  args = p.parse_args(argv)
  if args.params and not args.model:
    p.error("--params needs --model (the preset its parameters belong to)")
  if args.top_k <= 0:
    p.error(f"--top_k must be positive, got {args.top_k}")
  if args.batch <= 0:
    p.error(f"--batch must be positive, got {args.batch}")
  return args


def main(argv: list[str] | None = None) -> int:
  args = parse(sys.argv[1:] if argv is None else argv)
  from absl import logging as absl_logging

  from vit_jax.evaluate import cpu_devices
  from vit_jax.io.pretrained import PretrainedError
  from vit_jax.io.runs import RunError

  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax logs every restore at INFO
  # On a CPU-only host, a forward pass runs faster split over one device per core
  # (vit_jax/evaluate/cpu_devices.py); the count is fixed before JAX starts.
  cpu_devices.split_for_inference(min(args.batch, len(args.images)))
  try:
    records = run(args)
  except (PredictError, RunError, PretrainedError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for record in records:
    if args.json:
      print(json.dumps(record))
    else:
      best = "  ".join(f"{t['name']} {t['probability']:.3f}" for t in record["top"])
      print(f"{record['image']}: {best}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
