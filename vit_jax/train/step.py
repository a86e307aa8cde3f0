"""The train state and the jitted training and evaluation steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from vit_jax.io import layers
from vit_jax.train import chunks, mix

LOSSES = ("softmax_xent", "sigmoid_xent")


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint must hold to continue training."""

  step: jax.Array  # number of updates applied so far
  params: Any
  opt_state: Any


def soft_targets(labels: jax.Array, num_classes: int, label_smoothing: float = 0.0) -> jax.Array:
  """One-hot targets (B, K) of integer labels, smoothed: one_hot * (1 - ls) + ls / K."""
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing == 0:
    return one_hot
  return one_hot * (1.0 - label_smoothing) + label_smoothing / num_classes


def per_example_loss(logits: jax.Array, labels: jax.Array, kind: str) -> jax.Array:
  """Loss of each example, (B,), for integer labels (B,) or soft targets (B, K).

  Soft targets are class probabilities for softmax_xent and per-class targets of the K binary
  problems for sigmoid_xent.
  """
  soft = labels.ndim == logits.ndim
  if kind == "softmax_xent":
    if soft:
      return optax.softmax_cross_entropy(logits, labels)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if kind == "sigmoid_xent":
    targets = labels if soft else jax.nn.one_hot(labels, logits.shape[-1])
    return optax.sigmoid_binary_cross_entropy(logits, targets).sum(-1)
  raise ValueError(f"unknown loss '{kind}'; choose one of: {', '.join(LOSSES)}")


def init_state(model: nn.Module, tx: optax.GradientTransformation, image_shape: tuple[int, ...],
               seed: int) -> TrainState:
  """Initial parameters and optimizer state (call under jit to place them on the mesh).

  A model with `scan_layers` gets the same initial weights as without, drawn per layer and
  stacked, so the layout does not change the run.
  """
  scanned = getattr(model, "scan_layers", False)
  per_layer = model.clone(scan_layers=False) if scanned else model
  images = jnp.zeros((1, *image_shape), jnp.float32)
  params = per_layer.init(jax.random.key(seed), images)["params"]
  if scanned:
    params = layers.to_scanned(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def _is_count(path: tuple[Any, ...]) -> bool:
  """Whether an optimizer-state leaf is one of Optax's step counts (schedules, bias correction)."""
  return getattr(path[-1], "name", None) == "count"


def _split_micro(x: jax.Array, accum_steps: int) -> jax.Array:
  # Micro-batch k takes rows k, k+A, k+2A, ...: each device's rows spread evenly over the
  # micro-batches, so no micro-batch has to move between devices.
  return x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    *, loss: str, accum_steps: int, seed: int, label_smoothing: float = 0.0,
                    mixing: mix.Settings = mix.OFF, grad_shardings: Any = None,
                    skip_nonfinite: bool = False, chains: int = 1) -> Callable:
  """Returns step(state, batch) -> (state, metrics); accumulation happens inside the step.

  The batch is split into `accum_steps` micro-batches whose gradients are summed by a
  `lax.scan`, so memory holds one micro-batch's activations however many there are. The
  summed gradients are kept in `grad_shardings` (the parameters' placement) when given.
  With `chains` > 1, each (micro-)batch is split further into that many parts whose gradients
  are computed as independent computations in the same program (not a loop) and summed: the
  same gradient, but XLA:CPU can run one part's kernels while another's leave a core idle
  (`vit_jax.train.chunks.train_chains`).
  With `label_smoothing` or `mixing`, the labels become soft targets (`soft_targets`), and the
  whole batch is mixed (`mix.mix_batch`, from `mix.step_key(seed, step)`) before it is split, so
  the micro-batches sum to the full batch's gradient; the logged loss is that of these targets.
  With `skip_nonfinite`, a step whose loss or gradient norm is not finite leaves the parameters
  and the optimizer's moments as they were, while the step counter and Optax's step counts
  advance: the learning rate applied after a skip is `schedule(step)`, the one logged.
  """

  def loss_fn(params, images, labels, mask, rng, count):
    logits = model.apply({"params": params}, images, train=True, rngs={"dropout": rng})
    return jnp.sum(per_example_loss(logits, labels, loss) * mask) / count

  single_fn = jax.value_and_grad(loss_fn)

  def grad_fn(params, images, labels, mask, rng, count):
    if chains == 1:
      return single_fn(params, images, labels, mask, rng, count)
    parts = [_split_micro(x, chains) for x in (images, labels, mask)]
    results = [single_fn(params, im, lb, mk, jax.random.fold_in(rng, j), count)
               for j, (im, lb, mk) in enumerate(zip(*parts, strict=True))]
    return jax.tree.map(lambda *xs: sum(xs[1:], xs[0]), *results)

  soft = label_smoothing > 0 or mixing.enabled

  def prepare(batch: dict[str, jax.Array], step: jax.Array) -> dict[str, jax.Array]:
    """The batch with soft (smoothed, mixed) targets as its labels, where those are on."""
    if not soft:
      return batch
    labels = soft_targets(batch["label"], model.num_classes, label_smoothing)
    images = batch["image"]
    if mixing.enabled:
      images, labels = mix.mix_batch(mix.step_key(seed, step), images, labels, batch["mask"],
                                     mixing)
    return {"image": images, "label": labels, "mask": batch["mask"]}

  def step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    batch = prepare(batch, state.step)
    # The mean over the examples of the whole batch that were read (mask 1): rows of images the
    # input pipeline could not read carry mask 0 and count for nothing.
    count = jnp.maximum(jnp.sum(batch["mask"]), 1.0)
    if accum_steps == 1:
      value, grads = grad_fn(state.params, batch["image"], batch["label"], batch["mask"], rng,
                             count)
    else:
      micro_batches = [_split_micro(batch[k], accum_steps) for k in ("image", "label", "mask")]

      def micro(carry, xs):
        k, im, lb, mk = xs
        v, g = grad_fn(state.params, im, lb, mk, jax.random.fold_in(rng, k), count)
        total_v, total_g = carry
        return (total_v + v, jax.tree.map(jnp.add, total_g, g)), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      if grad_shardings is not None:
        zeros = jax.lax.with_sharding_constraint(zeros, grad_shardings)
      (value, grads), _ = jax.lax.scan(
          micro, (jnp.zeros((), jnp.float32), zeros), (jnp.arange(accum_steps), *micro_batches))
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if skip_nonfinite:
      finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
      params = jax.tree.map(lambda new, old: jnp.where(finite, new, old), params, state.params)
      opt_state = jax.tree_util.tree_map_with_path(
          lambda path, new, old: new if _is_count(path) else jnp.where(finite, new, old),
          opt_state, state.opt_state)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    metrics = {"train/loss": value, "train/lr": schedule(state.step), "train/grad_norm": grad_norm}
    return new_state, metrics

  return step


def make_eval_step(model: nn.Module, *, loss: str, images_per_pass: int | None = None,
                   devices: int = 1) -> Callable:
  """Returns eval(params, batch) -> masked sums {"loss", "correct", "count"} for the batch.

  The forward pass runs in chunks of at most `images_per_pass` images per device (None: the
  whole batch) for a batch split over `devices` (`vit_jax.train.chunks`).
  """

  def step(params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    logits = chunks.sharded_apply(
        lambda x: model.apply({"params": params}, x, train=False), batch["image"],
        images_per_pass, devices)
    mask = batch["mask"]
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {
        "loss": jnp.sum(per_example_loss(logits, batch["label"], loss) * mask),
        "correct": jnp.sum(correct * mask),
        "count": jnp.sum(mask),
    }

  return step
