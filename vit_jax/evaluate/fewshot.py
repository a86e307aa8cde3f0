"""Few-shot linear evaluation of frozen features (the paper's Section 4 / Table 8 metric).

The model's pre-logit (or pooled) features of k training examples per class are regressed onto
+-1 class targets by closed-form L2-regularised least squares; the accuracy of that linear
classifier on the evaluation split is averaged over a few random draws of the k examples.

`python -m vit_jax.evaluate --workdir DIR` runs it (and the classification metrics) on a saved
checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from vit_jax.models.family import FEATURES
from vit_jax.train import chunks


def ridge_fit(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, np.ndarray]:
  """Weights (F, C) and bias (C,) minimising |x w + b - y|^2 + l2 |w|^2 (the bias is free)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  x_mean, y_mean = x.mean(0), y.mean(0)
  xc, yc = x - x_mean, y - y_mean
  if xc.shape[0] < xc.shape[1]:  # fewer examples than features: solve the n x n system
    w = xc.T @ np.linalg.solve(xc @ xc.T + l2 * np.eye(xc.shape[0]), yc)
  else:
    w = np.linalg.solve(xc.T @ xc + l2 * np.eye(xc.shape[1]), xc.T @ yc)
  return w, y_mean - x_mean @ w


def draw_shots(labels: np.ndarray, shots: int, rng: np.random.Generator) -> np.ndarray:
  """Indices of `shots` random examples of every class present (fewer where a class has fewer)."""
  picked = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    picked.append(rng.choice(members, min(shots, len(members)), replace=False))
  return np.concatenate(picked)


def fewshot_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                     test_y: np.ndarray, *, num_classes: int, shots: Sequence[int], draws: int,
                     l2: float, seed: int = 0) -> dict[int, float]:
  """Mean test accuracy over `draws` draws of k examples per class, for each k in `shots`."""
  result = {}
  for k in shots:
    accuracies = []
    for draw in range(draws):
      idx = draw_shots(train_y, k, np.random.default_rng([seed, k, draw]))
      targets = 2.0 * np.eye(num_classes)[train_y[idx]] - 1.0
      w, b = ridge_fit(train_x[idx], targets, l2)
      accuracies.append(float(np.mean(np.argmax(test_x @ w + b, -1) == test_y)))
    result[k] = float(np.mean(accuracies))
  return result


def make_feature_step(model: nn.Module, images_per_pass: int | None = None,
                      devices: int = 1) -> Callable[[Any, dict], dict]:
  """Returns f(params, batch) -> {"features", "label", "mask"} using the sown features.

  Forward passes of at most `images_per_pass` images per device, as in the evaluation step.
  """

  def step(params: Any, batch: dict) -> dict:
    def features_of(images: jax.Array) -> jax.Array:
      _, state = model.apply({"params": params}, images, train=False, mutable=["intermediates"])
      return state["intermediates"][FEATURES][0].astype("float32")

    features = chunks.sharded_apply(features_of, batch["image"], images_per_pass, devices)
    return {"features": features, "label": batch["label"], "mask": batch["mask"]}

  return step


def extract(feature_step: Callable, params: Any, batches: Iterable[dict],
            place: Callable[[Any], Any] = lambda b: b) -> tuple[np.ndarray, np.ndarray]:
  """Features and labels of every real (mask 1) example of `batches`."""
  features, labels = [], []
  for batch in batches:
    out = jax.device_get(feature_step(params, place(batch)))
    keep = np.asarray(out["mask"]) > 0
    features.append(np.asarray(out["features"])[keep])
    labels.append(np.asarray(out["label"])[keep])
  return np.concatenate(features), np.concatenate(labels)


def evaluate(feature_step: Callable, params: Any, data: Any, settings: Any,
             place: Callable[[Any], Any] = lambda b: b) -> dict[str, float]:
  """{"fewshot/<k>shot_accuracy": ...} for a Dataset and a config's `fewshot` section."""
  if data.pool_batches is None:
    raise ValueError("this dataset offers no training pool for few-shot evaluation")
  train_x, train_y = extract(feature_step, params, data.pool_batches(settings.pool), place)
  test_x, test_y = extract(feature_step, params, data.eval_batches(), place)
  accuracy = fewshot_accuracy(train_x, train_y, test_x, test_y, num_classes=data.num_classes,
                              shots=settings.shots, draws=settings.draws, l2=settings.l2)
  return {f"fewshot/{k}shot_accuracy": v for k, v in accuracy.items()}
