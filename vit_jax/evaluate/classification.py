"""Top-1 accuracy and mean loss over a whole evaluation split."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax


def evaluate(eval_step: Callable[[Any, Any], dict], params: Any, batches: Iterable[Any],
             place: Callable[[Any], Any] = lambda b: b) -> dict[str, float]:
  """Runs `eval_step` over every batch and returns {"accuracy", "loss", "count"}.

  `eval_step(params, batch)` returns masked sums {"loss", "correct", "count"}; padded examples
  carry mask 0, so each real example counts exactly once. `place` puts a host batch on devices.
  """
  totals = None
  for batch in batches:
    sums = eval_step(params, place(batch))
    totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
  if totals is None:
    raise ValueError("the evaluation split is empty")
  totals = jax.device_get(totals)
  count = float(totals["count"])
  return {"accuracy": float(totals["correct"]) / count, "loss": float(totals["loss"]) / count,
          "count": count}
