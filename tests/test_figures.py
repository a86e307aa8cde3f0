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


def test_filter_components_find_the_pattern_the_filters_share():
  rng = np.random.default_rng(0)
  pattern = rng.normal(size=(4, 4, 3))
  weights = rng.normal(size=32) * 10  # 32 filters: multiples of one pattern, plus small noise
  kernel = pattern[..., None] * weights + 0.01 * rng.normal(size=(4, 4, 3, 32))
  components, share = figures.filter_components(kernel, count=5)
  assert components.shape == (5, 4, 4, 3) and share[0] > 0.99
  first = components[0].ravel()
  cosine = abs(first @ pattern.ravel()) / np.linalg.norm(pattern)
  assert cosine > 0.999
  flat = components.reshape(5, -1)
  np.testing.assert_allclose(flat @ flat.T, np.eye(5), atol=1e-9)  # orthonormal
  assert np.all(np.diff(share) <= 0)


def test_the_filters_figure_of_a_run_is_written(tmp_path):
  from vit_jax.train import checkpoint

  kernel = np.random.default_rng(1).normal(size=(7, 7, 1, 16)).astype(np.float32)
  (tmp_path / "config.json").write_text(json.dumps({"image_size": 28,
                                                    "model": {"patch_size": 7}}))
  saver = checkpoint.Checkpointer(str(tmp_path), 1, 1)
  saver.save(1, {"step": np.int32(1), "params": {"embedding": {"kernel": kernel}},
                 "opt_state": {}}, force=True)
  saver.close()
  out = tmp_path / "filters.png"
  assert figures.main(["filters", "--workdir", str(tmp_path), "--out", str(out)]) == 0
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
