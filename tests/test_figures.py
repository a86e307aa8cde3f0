import json

import numpy as np

from vit_jax import figures
from vit_jax.models import posemb


def is_png(path) -> bool:
  return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_similarity_grid_is_cosine_similarity_per_patch(tmp_path):
  table = posemb.sincos2d_table((3, 4), 16)
  sim = figures.similarity_grid(table, (3, 4))
  assert sim.shape == (3, 4, 3, 4)
  unit = table / np.linalg.norm(table, axis=1, keepdims=True)
  np.testing.assert_allclose(sim[1, 2].reshape(-1), unit @ unit[1 * 4 + 2], atol=1e-6)
  np.testing.assert_allclose([sim[i, j, i, j] for i in range(3) for j in range(4)], 1, atol=1e-6)
  figures.plot_similarity(sim, str(tmp_path / "sim.png"), "sincos2d")
  assert is_png(tmp_path / "sim.png")


def test_training_curves_and_sweep_bars_are_written(tmp_path):
  metrics = [{"step": s, "train/loss": 2.0 / s} for s in (1, 2, 3)]
  metrics[-1].update({"eval/accuracy": 0.5, "fewshot/5shot_accuracy": 0.4})
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
  figures.training_curves(str(tmp_path), str(tmp_path / "curves.png"))
  assert is_png(tmp_path / "curves.png")
  rows = [{"model.posemb": k, "model.posemb_mode": m, "eval/accuracy": a,
           "fewshot/5shot_accuracy": a - 0.1}
          for k, m, a in [("none", "stem", 0.6), ("learn1d", "stem", 0.8),
                          ("learn1d", "every_layer", 0.82), ("learn1d", "stem", 0.84)]]
  table = {"title": "t", "rows": "model.posemb", "cols": "model.posemb_mode", "where": {}}
  figures.sweep_bars(rows, table, str(tmp_path / "bars.png"))
  assert is_png(tmp_path / "bars.png")
