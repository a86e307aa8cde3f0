"""Global batches as a function of (seed, step), prepared ahead by worker threads.

Training batch b holds positions b*B ... b*B+B-1 of an endless stream of per-epoch
permutations of the split; row r of batch b is augmented with randomness seeded by
(seed, b, r). Which examples a step sees, in which order and how they are augmented therefore
depends on neither the number of processes nor on where the run was restarted: starting at
batch b computes one permutation and reads nothing before it. Each process prepares only its
own rows of every global batch, reading only those examples.

Evaluation batches cover a split exactly once in order; the last one is padded and the padding
has mask 0. An unreadable example is either skipped (its row gets mask 0, so the other rows stay
what they would have been) or stops the run, as `Feed.bad_images` says.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Callable, Iterator
from concurrent import futures

import numpy as np

from vit_jax.data import preprocess
from vit_jax.data.types import Batch, Dataset, DatasetError, Examples, Feed

LOGGER = "vit_jax.data"  # under the trainer's logger, so its lines reach train.log



def cores() -> int:
  """CPU cores this process may use."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


class IndexedSource:
  """Training, evaluation and few-shot pool batches over two random-access splits."""

  def __init__(self, train: Examples, evaluation: Examples, feed: Feed, num_classes: int,
               splits: tuple[str, str], class_names: tuple[str, ...] | None = None):
    if feed.augment not in preprocess.AUGMENTS:
      raise DatasetError(f"unknown augment '{feed.augment}'; use one of {preprocess.AUGMENTS}")
    if not len(train) or not len(evaluation):
      raise DatasetError(f"split '{splits[0] if not len(train) else splits[1]}' is empty")
    self.train, self.evaluation, self.feed = train, evaluation, feed
    self.num_classes, self.splits, self.class_names = num_classes, splits, class_names
    self._perms: dict[int, np.ndarray] = {}
    self._pool: futures.ThreadPoolExecutor | None = None
    self._count = 0
    self._log = logging.getLogger(LOGGER)

  # Which examples.

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      # A batch spans at most two epochs, so keeping the newest two avoids recomputation.
      self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}
      self._perms[epoch] = np.random.default_rng([self.feed.seed, epoch]).permutation(
          len(self.train))
    return self._perms[epoch]

  def train_indices(self, batch_index: int) -> np.ndarray:
    """Example indices of global training batch `batch_index`, in row order."""
    n, b = len(self.train), self.feed.batch_size
    epochs, positions = np.divmod(batch_index * b + np.arange(b), n)
    indices = np.empty(b, np.int64)
    for epoch in np.unique(epochs):
      here = epochs == epoch
      indices[here] = self._permutation(int(epoch))[positions[here]]
    return indices

  # Preparing them.

  def _workers(self) -> futures.ThreadPoolExecutor:
    if self._pool is None:
      self._count = self.feed.workers or cores()
      self._pool = futures.ThreadPoolExecutor(self._count, thread_name_prefix="vit_jax-data")
    return self._pool

  def _fill(self, examples: Examples, indices: np.ndarray, rows: range, out: Batch,
            prepare: Callable[[bytes | np.ndarray, int], np.ndarray]) -> None:
    """Writes rows `rows` of `out`; `indices[j]` < 0 marks padding (left at mask 0)."""
    for j in rows:
      if indices[j] < 0:
        continue
      try:
        raw, label = examples.read(int(indices[j]))
        out["image"][j] = prepare(raw, j)
      except (preprocess.UnreadableImage, OSError) as e:
        name = examples.name(int(indices[j]))
        if self.feed.bad_images == "stop":
          raise DatasetError(f"cannot read image {name} ({e}); fix or remove it, or set "
                             "--config.bad_images=skip to skip unreadable images") from None
        self._log.warning("skipped unreadable image %s (%s)", name, e)
        continue
      out["label"][j], out["mask"][j] = label, 1.0

  def _submit(self, examples: Examples, indices: np.ndarray,
              prepare: Callable[[bytes | np.ndarray, int], np.ndarray]
              ) -> tuple[Batch, list[futures.Future]]:
    f = self.feed
    n = len(indices)
    out = {"image": np.zeros((n, f.image_size, f.image_size, f.channels), np.uint8),
           "label": np.zeros((n,), np.int32), "mask": np.zeros((n,), np.float32)}
    pool = self._workers()
    chunk = max(1, -(-n // (4 * self._count)))  # a few chunks per worker: load balance
    jobs = [pool.submit(self._fill, examples, indices, range(s, min(s + chunk, n)), out, prepare)
            for s in range(0, n, chunk)]
    return out, jobs

  def _ahead(self, batches: Iterator[tuple[Examples, np.ndarray, Callable]]) -> Iterator[Batch]:
    """Prepares `prefetch` batches beyond the one being consumed."""
    pending: collections.deque = collections.deque()
    try:
      for spec in batches:
        pending.append(self._submit(*spec))
        if len(pending) <= self.feed.prefetch:
          continue
        yield _finish(*pending.popleft())
      while pending:
        yield _finish(*pending.popleft())
    finally:
      for _, jobs in pending:
        for job in jobs:
          job.cancel()

  def train_batches(self, start: int = 0) -> Iterator[Batch]:
    """This process's rows of training batches `start`, `start` + 1, ... (endless)."""
    f = self.feed
    local = f.local(f.batch_size)

    def specs():
      b = start
      while True:
        indices = self.train_indices(b)[local]

        def prepare(raw, j, b=b):
          rng = np.random.default_rng([f.seed, b, local.start + j])
          return preprocess.train_image(raw, f.image_size, f.channels, f.augment, rng)

        yield self.train, indices, prepare
        b += 1

    return self._ahead(specs())

  def _padded(self, examples: Examples, order: np.ndarray) -> Iterator[Batch]:
    f = self.feed
    size, local = f.eval_batch_size, f.local(f.eval_batch_size)

    def prepare(raw, j):
      return preprocess.eval_image(raw, f.image_size, f.channels, f.eval_resize_small)

    def specs():
      for s in range(0, len(order), size):
        indices = np.full(size, -1, np.int64)
        part = order[s:s + size]
        indices[:len(part)] = part
        yield examples, indices[local], prepare

    return self._ahead(specs())

  def eval_batches(self) -> Iterator[Batch]:
    """The evaluation split once, in order; the last batch padded with mask 0."""
    return self._padded(self.evaluation, np.arange(len(self.evaluation)))

  def pool_batches(self, size: int) -> Iterator[Batch]:
    """A fixed random `size` training examples (the same for every seed), unaugmented."""
    order = np.random.default_rng(0).permutation(len(self.train))[:size]
    return self._padded(self.train, order)

  def dataset(self) -> Dataset:
    """The trainer's view of this source."""
    return Dataset(self.num_classes, len(self.train), len(self.evaluation), self.train_batches,
                   self.eval_batches, self.splits, self.pool_batches, self.class_names)


def _finish(out: Batch, jobs: list[futures.Future]) -> Batch:
  for job in jobs:
    job.result()  # raises what a worker raised (DatasetError with bad_images=stop)
  return out
