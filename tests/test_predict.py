import json
import os
import subprocess
import sys

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs.models import model_config
from vit_jax import predict
from vit_jax.data import bundled
from vit_jax.evaluate import cpu_devices
from vit_jax.io import npz
from vit_jax.models import registry
from vit_jax.train import checkpoint

MODEL = model_config("ViT-custom", patch_size=7, hidden_size=16, num_layers=1, num_heads=2,
                     mlp_dim=16, pool="gap").to_dict()


def trained_like_run(workdir, seed=0, model=MODEL, image_size=28, channels=1):
  """A run's workdir with a checkpoint of random (nonzero-head) parameters, like a trained one."""
  module = registry.build(model, 10)
  params = jax.device_get(jax.jit(module.init)(
      jax.random.key(seed), jnp.zeros((1, image_size, image_size, channels)))["params"])
  rng = np.random.default_rng(seed + 1)  # NumPy: JAX compiles its draws for every shape
  params = jax.tree.map(lambda x: x + 0.3 * rng.standard_normal(x.shape, np.float32), params)
  config = {"model": model, "num_classes": 10, "loss": "softmax_xent",
            "image_size": image_size, "image_channels": channels, "eval_resize_small": 0}
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps(config))
  saver = checkpoint.Checkpointer(str(workdir), 1, 1)
  saver.save(7, {"step": np.int32(7), "params": params, "opt_state": {}}, force=True)
  saver.close()
  return module, params


def digit_files(tmp_path, count=3):
  images, labels = bundled.load_split("test")
  paths = []
  for i in range(count):
    path = tmp_path / f"digit_{i}.png"
    # Other sizes and modes than the model's: RGB at 40x40.
    Image.fromarray(images[i * 100, ..., 0]).convert("RGB").resize((40, 40)).save(path)
    paths.append(str(path))
  return paths


def expected_probabilities(module, params, paths):
  """Softmax of the model's logits on the evaluation preprocessing, computed here directly."""
  images = []
  for path in paths:
    grey = Image.open(path).convert("L")  # ITU-R 601 luma, as the pipeline converts
    array = np.asarray(grey)[..., None]
    images.append(cv2.resize(array, (28, 28), interpolation=cv2.INTER_LINEAR)[..., None])
  x = np.stack(images).astype(np.float32) / 127.5 - 1.0
  logits = np.asarray(module.apply({"params": params}, x), np.float64)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.mark.slow
def test_a_runs_top_classes_with_names_and_probabilities(tmp_path, capsys):
  module, params = trained_like_run(tmp_path / "run")
  (tmp_path / "run" / "classes.txt").write_text("\n".join(f"digit-{d}" for d in range(10)))
  paths = digit_files(tmp_path)
  assert predict.main(["--workdir", str(tmp_path / "run"), "--top_k", "10", "--json",
                       *paths]) == 0
  records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  want = expected_probabilities(module, params, paths)
  for record, path, p in zip(records, paths, want, strict=True):
    assert record["image"] == path
    got = {t["class"]: t["probability"] for t in record["top"]}
    np.testing.assert_allclose([got[c] for c in range(10)], p, rtol=2e-3, atol=1e-6)
    probs = [t["probability"] for t in record["top"]]
    assert probs == sorted(probs, reverse=True)
    assert [t["name"] for t in record["top"]] == [f"digit-{t['class']}" for t in record["top"]]


def test_files_in_several_batches_predict_as_in_one(tmp_path, capsys):
  trained_like_run(tmp_path / "run")
  paths = digit_files(tmp_path, 5)
  outputs = []
  for batch in ("64", "2"):  # one pass; three passes, the last one padded
    assert predict.main(["--workdir", str(tmp_path / "run"), "--json", "--top_k", "10",
                         "--batch", batch, *paths]) == 0
    outputs.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
  assert [r["image"] for r in outputs[1]] == paths
  for one, many in zip(*outputs, strict=True):
    assert [t["class"] for t in one["top"]] == [t["class"] for t in many["top"]]
    np.testing.assert_allclose([t["probability"] for t in many["top"]],
                               [t["probability"] for t in one["top"]], rtol=1e-5, atol=1e-7)


def test_a_batch_below_one_is_refused(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    predict.main(["--workdir", str(tmp_path), "--batch", "0", str(tmp_path / "a.png")])
  assert exit_info.value.code == 2
  assert "--batch must be positive, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_an_exported_npz_predicts_what_its_run_predicts(tmp_path, capsys):
  model = registry.section("ViT-Ti/16")
  trained_like_run(tmp_path / "run", model=model, image_size=32, channels=3)
  from vit_jax.io import runs

  with runs.Run(str(tmp_path / "run")) as run:
    npz.save(str(tmp_path / "params.npz"), run.params())
  paths = digit_files(tmp_path, 2)
  outputs = []
  for source in (["--workdir", str(tmp_path / "run")],
                 ["--params", str(tmp_path / "params.npz"), "--model", "ViT-Ti/16"]):
    assert predict.main([*source, "--json", *paths]) == 0
    outputs.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
  assert outputs[0] == outputs[1] and len(outputs[0]) == 2
  assert predict.main(["--workdir", str(tmp_path / "run"), paths[0]]) == 0
  assert capsys.readouterr().out.startswith(f"{paths[0]}: ")


@pytest.mark.parametrize("case, message", [
    ("not an image", "is not an image this command can read"),
    ("missing image", "cannot read"),
    ("no run", "config.json not found"),
    ("wrong class count", "3 class names for a model of 10 classes"),
    ("unknown preset", "--model 'ViT-Q/9' is not a registered model"),
    ("another architecture", "the parameters do not fit ViT-S/16"),
    ("another family", "holds a ViT model's parameters but --model Mixer-B/16 is a Mixer "
                       "model; name a ViT preset such as ViT-B/16"),
])
def test_bad_input_is_one_error_line_and_status_2(tmp_path, capsys, case, message):
  trained_like_run(tmp_path / "run")
  good = digit_files(tmp_path, 1)
  args = ["--workdir", str(tmp_path / "run")]
  if case == "not an image":
    (tmp_path / "notes.png").write_text("not an image")
    args += [str(tmp_path / "notes.png")]
  elif case == "missing image":
    args += [str(tmp_path / "nothing.png")]
  elif case == "no run":
    args = ["--workdir", str(tmp_path / "empty"), *good]
    (tmp_path / "empty").mkdir()
  elif case == "wrong class count":
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    args += ["--classes", str(tmp_path / "three.txt"), *good]
  elif case == "unknown preset":
    _, params = trained_like_run(tmp_path / "run2")
    npz.save(str(tmp_path / "p.npz"), params)
    args = ["--params", str(tmp_path / "p.npz"), "--model", "ViT-Q/9", *good]
  elif case == "another architecture":  # the small custom model's file named as ViT-S/16
    _, params = trained_like_run(tmp_path / "run2")
    npz.save(str(tmp_path / "p.npz"), params)
    args = ["--params", str(tmp_path / "p.npz"), "--model", "ViT-S/16", "--image_size", "32",
            *good]
  elif case == "another family":  # a ViT's file named as a Mixer
    _, params = trained_like_run(tmp_path / "run2")
    npz.save(str(tmp_path / "p.npz"), params)
    args = ["--params", str(tmp_path / "p.npz"), "--model", "Mixer-B/16", *good]
  assert predict.main(args) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
  assert not (tmp_path / "run" / "predictions").exists()


@pytest.mark.slow
def test_a_1000_class_npz_without_names_is_shown_with_imagenet_names(tmp_path, capsys):
  pytest.importorskip("tensorflow_datasets")
  module = registry.build(registry.section("ViT-Ti/16"), 1000)
  params = module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  params = jax.device_get(params)
  params["head"]["bias"] = np.zeros(1000, np.float32)
  params["head"]["bias"][281] = 50.0  # every image: "tabby"
  npz.save(str(tmp_path / "in1k.npz"), params)
  paths = digit_files(tmp_path, 1)
  assert predict.main(["--params", str(tmp_path / "in1k.npz"), "--model", "ViT-Ti/16", "--json",
                       "--top_k", "1", *paths]) == 0
  top = json.loads(capsys.readouterr().out)["top"][0]
  assert (top["class"], top["name"]) == (281, "tabby") and top["probability"] > 0.99


def test_a_batch_split_over_devices_predicts_as_on_one(tmp_path):
  module, params = trained_like_run(tmp_path / "run")
  setup, params, _ = predict.from_run(str(tmp_path / "run"), None)
  images = predict.read_images(digit_files(tmp_path, 3), setup)
  forward = predict.make_forward(setup)
  assert forward.devices == len(jax.devices()) == 8  # 3 images: padded to 8, one each
  one_device = predict.Forward(jax.jit(lambda p, x: module.apply({"params": p}, x)), 1)
  np.testing.assert_allclose(predict.predict(images, setup, params, forward),
                             predict.predict(images, setup, params, one_device),
                             rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_the_command_splits_a_cpu_and_predicts_the_same(tmp_path, capsys, monkeypatch):
  trained_like_run(tmp_path / "run")
  paths = digit_files(tmp_path, 8)
  command = ["--workdir", str(tmp_path / "run"), "--json", "--top_k", "10", *paths]
  assert predict.main(command) == 0  # in this process: JAX already runs on 8 devices
  here = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  probe = ("import sys; from vit_jax import predict; code = predict.main(sys.argv[1:]); "
           "import jax; print(len(jax.devices()), file=sys.stderr); sys.exit(code)")
  done = subprocess.run([sys.executable, "-c", probe, *command], env=env, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  monkeypatch.setenv("XLA_FLAGS", "")  # as the fresh process: no device count set
  expected = cpu_devices.plan(0, 8, inference=True, cores=cpu_devices.usable_cores(),
                              platforms="cpu")
  assert int(done.stderr.split()[-1]) == expected  # 2 on a 2-core machine
  fresh = [json.loads(line) for line in done.stdout.splitlines()]
  for a, b in zip(here, fresh, strict=True):
    assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
    np.testing.assert_allclose([t["probability"] for t in b["top"]],
                               [t["probability"] for t in a["top"]], rtol=1e-5, atol=1e-7)
