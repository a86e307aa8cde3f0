"""A batch in chunks on CPUs: inference in cache-sized passes, training in independent parts.

On a CPU a forward pass over the whole batch streams activations that no longer fit in the
cache, and small models then run markedly slower per image at batch 32 than at batch 8
(docs/performance.md has the figures). Evaluation, few-shot features and the benchmark's
inference therefore split each device's share of the batch into chunks of at most
`images_per_pass` images and run them one after another inside the same compiled step
(`jax.lax.map`). Each image's result is the same function of that image; only the grouping of
rows in the matrix products changes.

`auto` picks, on a CPU, the number of images whose largest token activation (a module's output
of shape batch x tokens x features, e.g. the MLP's hidden layer) holds about `CACHE_ELEMENTS`
float32 values, but at least `MIN_IMAGES`; on GPUs and TPUs it keeps the whole batch, whose
larger products run faster there.

Training splits each device's (micro-)batch into `train_chains` parts whose gradients are
computed side by side in one program and summed (`vit_jax.train.step`). On a 2-core CPU,
XLA:CPU leaves one core idle during some kernels of a pass (attention's batched products run
on one thread); with independent parts it can run another part's kernels there, and each
part's activations are smaller. GPUs and TPUs keep the whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Float32 elements of the largest activation of one pass (5 MB): 8 images of ViT-Ti/16 at 224
# (197 tokens x 768 MLP units), 4 of ViT-S/16, where this CPU's inference is fastest.
CACHE_ELEMENTS = 1_250_000
# Fewer images leave the matrix products too few rows (4 x 197 tokens at 224) to run at full
# rate: measured slower for R50+ViT-B/16 (1 image) and T2T-ViT-14 (2 images) than one pass.
MIN_IMAGES = 4


def largest_activation(model: nn.Module, image_shape: tuple[int, ...]) -> int:
  """Elements per image of the largest token activation of `model` (shapes only).

  Token activations are the modules' outputs of rank 3 (batch, tokens, features) or 2 (batch
  and tokens flattened, as the MLP's products take them); convolutions' feature maps are not.
  `image_shape` is (height, width, channels). Nothing is computed: the model is traced at batch
  1 and 2, and each output's per-image size is what follows its batch axis (the first that
  grows; TNT's inner tokens merge batch and patches). A model with scanned layers is measured
  unscanned (the same activations; a scan hides its layers' outputs).
  """
  if getattr(model, "scan_layers", False):
    model = model.clone(scan_layers=False)
  def outputs(batch: int) -> list[jax.ShapeDtypeStruct]:
    images = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
    variables = jax.eval_shape(
        lambda x: model.init(jax.random.key(0), x, train=False, capture_intermediates=True,
                             mutable=True), images)
    return jax.tree.leaves(variables.get("intermediates", {}))

  largest = 1
  for one, two in zip(outputs(1), outputs(2), strict=True):
    if len(one.shape) not in (2, 3):
      continue
    grown = [i for i, (a, b) in enumerate(zip(one.shape, two.shape, strict=True)) if a != b]
    if grown:
      largest = max(largest, math.prod(two.shape[grown[0]:]) // 2)
  return largest


def images_per_pass(setting: int, model: nn.Module, image_shape: tuple[int, ...],
                    backend: str) -> int | None:
  """Images per forward pass and device: `setting` when positive; for 0 (auto) the cache-sized
  count (at least `MIN_IMAGES`) on a CPU, None (the whole batch) elsewhere."""
  if setting < 0:
    raise ValueError(f"infer_chunk {setting} is negative; use 0 (auto) or images per pass")
  if setting:
    return setting
  if backend != "cpu":
    return None
  return max(MIN_IMAGES, CACHE_ELEMENTS // largest_activation(model, image_shape))


def count(per_device: int, per_pass: int | None) -> int:
  """The fewest chunks that split `per_device` images evenly, with at most `per_pass` each.

  A batch that splits evenly only into chunks of less than half `per_pass` (e.g. 7 images, 4
  per pass: 7 chunks of 1) runs whole: such small passes cost more than the cache saves.
  """
  if not per_pass or per_pass >= per_device:
    return 1
  k = next(k for k in range(-(-per_device // per_pass), per_device + 1) if per_device % k == 0)
  return k if 2 * (per_device // k) >= per_pass else 1


def apply(fn: Callable[[jax.Array], Any], images: jax.Array, chunks: int) -> Any:
  """`fn(images)` computed as `chunks` passes, for an `fn` that treats images independently.

  Chunk j takes images j, j + chunks, j + 2 * chunks ...: every device's contiguous share of a
  batch-sharded array contributes equally to each chunk, so no image changes device. `chunks`
  must divide each device's share (`count` gives such a number).
  """
  if chunks == 1:
    return fn(images)
  batch = images.shape[0]
  if batch % chunks:
    raise ValueError(f"a batch of {batch} images cannot be split into {chunks} equal chunks")
  parts = images.reshape(batch // chunks, chunks, *images.shape[1:]).swapaxes(0, 1)
  out = jax.lax.map(fn, parts)
  return jax.tree.map(lambda y: y.swapaxes(0, 1).reshape(batch, *y.shape[2:]), out)


def sharded_apply(fn: Callable[[jax.Array], Any], images: jax.Array, per_pass: int | None,
                  devices: int) -> Any:
  """`apply` with the chunk count for a batch split over `devices` (the whole batch: 1 chunk)."""
  if images.shape[0] % devices:
    return fn(images)
  return apply(fn, images, count(images.shape[0] // devices, per_pass))


# Measured fastest on a 2-core CPU (ViT-Ti/16 and ViT-S/16, docs/performance.md): parts of 4
# images at 8 images per device, parts of 8 at 32. More parts compile longer (each is a copy of
# the forward and backward pass in the program), so there are at most MAX_CHAINS.
MAX_CHAINS = 4


def train_chains(setting: int, model: nn.Module, image_shape: tuple[int, ...], per_device: int,
                 backend: str) -> int:
  """Independent parts per (micro-)batch of `per_device` images in a training step.

  `setting` when positive (it must divide `per_device`). For 0 (auto), on a CPU: the most parts,
  up to `MAX_CHAINS`, that split the batch evenly into parts of at least half an inference
  pass (`images_per_pass`) and at least `MIN_IMAGES` images; 1 (the whole batch) elsewhere.
  For ViT-Ti/16 at 224 that is 2 parts at 8 images and 4 at 32; a model with few tokens (the
  quickstart's) keeps its whole batch.
  """
  if setting < 0:
    raise ValueError(f"train_chains {setting} is negative; use 0 (auto) or a number of parts")
  if setting:
    if per_device % setting:
      raise ValueError(f"train_chains {setting} does not divide the {per_device} images per "
                       f"device and micro-batch; choose a divisor or 0 (auto)")
    return setting
  if backend != "cpu":
    return 1
  least = max(MIN_IMAGES, images_per_pass(0, model, image_shape, backend) // 2)
  return next((n for n in range(MAX_CHAINS, 1, -1)
               if per_device % n == 0 and per_device // n >= least), 1)
