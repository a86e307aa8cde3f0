import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

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


@pytest.mark.parametrize("first,model", [
    ("embedding", {"name": "ViT-B/16", "patch_size": 7}),
    pytest.param("conv_root", {"name": "R50+ViT-B/16", "patch_size": 1}, marks=pytest.mark.slow),
    pytest.param("stem", {"name": "Mixer-B/16", "patch_size": 7}, marks=pytest.mark.slow),
])
def test_the_filters_figure_of_a_run_is_written(tmp_path, first, model):
  from vit_jax.train import checkpoint

  # The convolution that sees the pixels; a hybrid's 1x1 embedding is not an image.
  kernel = np.random.default_rng(1).normal(size=(7, 7, 1, 16)).astype(np.float32)
  params = {first: {"kernel": kernel}}
  if first == "conv_root":
    params["embedding"] = {"kernel": np.ones((1, 1, 1024, 16), np.float32)}
  (tmp_path / "config.json").write_text(json.dumps({"image_size": 28, "model": model}))
  saver = checkpoint.Checkpointer(str(tmp_path), 1, 1)
  saver.save(1, {"step": np.int32(1), "params": params, "opt_state": {}}, force=True)
  saver.close()
  out = tmp_path / "filters.png"
  assert figures.main(["filters", "--workdir", str(tmp_path), "--out", str(out)]) == 0
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digit_run(tmp_path_factory):
  """A run of a tiny class-token model on the bundled digits: the config as the trainer writes
  it, and a checkpoint of random parameters (like a trained one: nothing is flat or zero)."""
  from configs import quickstart
  from vit_jax import configuration
  from vit_jax.models import registry
  from vit_jax.train import checkpoint

  workdir = tmp_path_factory.mktemp("digit_run")
  c = quickstart.get_config()
  c.model.update(patch_size=7, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=16,
                 pool="token")
  c = configuration.resolve_model(c)
  c = configuration.resolve_data(c, num_train=4000, num_classes=10, splits=("train", "test"))
  (workdir / "config.json").write_text(configuration.to_json(c))
  module = registry.build(c.model.to_dict(), 10)
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), shapes)
  saver = checkpoint.Checkpointer(str(workdir), 1, 1)
  saver.save(5, {"step": np.int32(5), "params": params, "opt_state": {}}, force=True)
  saver.close()
  return workdir


def digit_file(tmp_path):
  """A hand-drawn 7 as a 40x40 RGB PNG (not the model's size or mode)."""
  from PIL import ImageDraw

  image = Image.new("RGB", (40, 40))
  ImageDraw.Draw(image).line([(8, 8), (32, 8), (16, 34)], fill=(255, 255, 255), width=4)
  path = tmp_path / "digit.png"
  image.save(path)
  return str(path)


def test_the_attention_figure_of_a_run_and_an_image_file_is_written(digit_run, tmp_path):
  out = tmp_path / "maps.png"
  assert figures.main(["attention", "--workdir", str(digit_run), "--image", digit_file(tmp_path),
                       "--out", str(out)]) == 0
  assert is_png(out)


def test_mean_distances_are_averaged_over_padded_chunks(digit_run, tmp_path, monkeypatch):
  from vit_jax import attention_maps, figures_attention, predict

  monkeypatch.setattr(figures_attention, "CHUNK", 16)  # 40 images: 3 passes, the last padded
  images = np.random.default_rng(0).integers(0, 256, (40, 28, 28, 1)).astype(np.uint8)
  setup, params, _ = predict.from_run(str(digit_run), None)
  got = figures_attention.mean_distances(setup, params, images)
  _, weights = attention_maps.make_inspector(setup["model"], 10)(params, images)
  where = attention_maps.layout(setup["model"], 28, 28)
  want = np.asarray(attention_maps.mean_distance(weights, where)).mean(axis=1)
  assert got.shape == (2, 2)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  figures_attention.plot_distance(got, str(tmp_path / "d.png"),
                                  attention_maps.uniform_distance(where), "t")
  assert is_png(tmp_path / "d.png")


@pytest.mark.slow
def test_the_distance_figure_of_a_run_reads_its_evaluation_split(digit_run, tmp_path):
  from vit_jax import figures_attention

  out = tmp_path / "distance.png"
  assert figures.main(["distance", "--workdir", str(digit_run), "--images", "40",
                       "--out", str(out)]) == 0
  assert is_png(out)
  images, split = figures_attention.evaluation_images(str(digit_run), 40)
  assert images.shape == (40, 28, 28, 1) and images.dtype == np.uint8 and split == "test"


@pytest.mark.parametrize("case, message", [
    ("not an image", "is not an image this command can read"),
    ("missing workdir", "config.json not found"),
    ("no checkpoint", "has no checkpoint yet"),
    ("distance of an npz", "distance needs --workdir"),
    ("no image", "attention needs --image"),
    ("workdir and npz", "either --workdir RUN or --params"),
    ("npz without preset", "--params needs --model"),
    ("no images", "--images must be positive"),
])
def test_bad_input_to_the_attention_figures_is_one_error_line(digit_run, tmp_path, capsys, case,
                                                              message):
  out = tmp_path / "figure.png"
  run = ["--workdir", str(digit_run)]
  image = ["--image", digit_file(tmp_path)]
  args = {
      "not an image": ["attention", *run, "--image", str(tmp_path / "notes.png")],
      "missing workdir": ["attention", "--workdir", str(tmp_path / "nowhere"), *image],
      "no checkpoint": ["distance", "--workdir", str(tmp_path / "fresh")],
      "distance of an npz": ["distance", "--params", "p.npz", "--model", "ViT-B/16"],
      "no image": ["attention", *run],
      "workdir and npz": ["attention", *run, "--params", "p.npz", "--model", "ViT-B/16", *image],
      "npz without preset": ["attention", "--params", "p.npz", *image],
      "no images": ["distance", *run, "--images", "0"],
  }[case]
  (tmp_path / "notes.png").write_text("not an image")
  (tmp_path / "fresh").mkdir()
  (tmp_path / "fresh" / "config.json").write_text((digit_run / "config.json").read_text())
  assert figures.main([*args, "--out", str(out)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
  assert not out.exists()


@pytest.mark.slow
def test_the_attention_figure_of_an_npz_file(tmp_path):
  from vit_jax.io import npz
  from vit_jax.models import registry

  model = registry.section("ViT-Ti/16")
  module = registry.build(model, 10)
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  rng = np.random.default_rng(0)
  npz.save(str(tmp_path / "p.npz"),
           jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32), shapes))
  out = tmp_path / "maps.png"
  assert figures.main(["attention", "--params", str(tmp_path / "p.npz"), "--model", "ViT-Ti/16",
                       "--image_size", "32", "--image", digit_file(tmp_path),
                       "--out", str(out)]) == 0
  assert is_png(out)
