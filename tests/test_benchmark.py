import json
import platform
import re

import jax
import pytest

from vit_jax.benchmark import __main__ as bench
from vit_jax.benchmark import hardware, measure, timm_side
from vit_jax.train import cpu_matmul

# `release`: the allocator setting is process-wide, and these run inside the test process.
SMALL = ["--model", "ViT-Ti/16", "--image_size", "32", "--num_classes", "10", "--batch", "8",
         "--warmup", "1", "--steps", "2", "--timm", "off", "--host_memory", "release"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["train", "infer"])
def test_benchmark_reports_consistent_figures(tmp_path, capsys, mode):
  out = tmp_path / "result.json"
  bench.main([*SMALL, "--mode", mode, "--peak_tflops", "2.0", "--rounds", "2", "--json",
              str(out)])
  result = json.loads(out.read_text())
  assert result["steps"] == 2 and result["rounds"] == 2
  assert "| img_per_sec |" in capsys.readouterr().out
  assert result["mode"] == mode and result["devices"] == 8 and result["compile_s"] > 0
  assert result["img_per_sec"] == pytest.approx(8 / (result["step_ms"] / 1e3), rel=0.01)
  tflops = result["model_gflops_per_image"] * result["img_per_sec"] / 1e3
  assert result["tflops_per_sec"] == pytest.approx(tflops, rel=0.01)
  assert result["mfu"] == pytest.approx(result["tflops_per_sec"] / (2.0 * 8), rel=0.01)
  assert result["planned_memory_bytes"] > 0 and result["host_memory"] == "release"
  # Which XLA ran it: tables from different releases must not be mixed.
  assert result["jax_version"] == jax.__version__
  assert result["python_version"] == platform.python_version()
  assert result["host_cpu"] == hardware.host_cpu() and result["host_cores"] >= 1
  if mode == "train":
    assert result["onednn_matmul"] == cpu_matmul.uses_onednn(
        "auto", jax.default_backend(), "ViT", 192)  # ViT-Ti/16's width
    assert result["compiler_options"] == (cpu_matmul.compiler_options(
        "auto", jax.default_backend(), "ViT", 192) or {})
  else:  # the forward pass's own options, oneDNN's fusions among them where asked for
    assert result["compiler_options"] == (cpu_matmul.inference_options(
        "auto", jax.default_backend(), "ViT", 192) or {})


@pytest.mark.slow
def test_accumulation_plans_memory_for_one_micro_batch(tmp_path):
  planned = {}
  for accum in (1, 2, 8):
    out = tmp_path / f"r{accum}.json"
    bench.main([*SMALL, "--image_size", "64", "--batch", "512", "--accum_steps", str(accum),
                "--compile_only", "--json", str(out)])
    result = json.loads(out.read_text())
    assert "img_per_sec" not in result  # compiled, not run
    planned[accum] = result["planned_memory_bytes"]
  # XLA's plan: a fixed part (parameters, optimizer state, the batch) and the activations of one
  # micro-batch. Fitted on 1 and 2 micro-batches, the activations are a real share and the fit
  # predicts the plan for 8.
  activations = 2 * (planned[1] - planned[2])
  fixed = planned[1] - activations
  assert activations > 0.3 * planned[1]
  assert planned[8] <= fixed + activations / 8 + 0.05 * activations


@pytest.mark.parametrize("args,message", [
    (["--model", "ViT-Z/3"], "error: --model 'ViT-Z/3' is not a registered model"),
    (["--batch", "7"], "--batch 7 must be a multiple of --accum_steps x devices = 1 x 8"),
    (["--batch", "16", "--accum_steps", "3"], "must be a multiple of --accum_steps x devices"),
    (["--batch", "0"], "--batch must be positive, got 0"),
    (["--num_classes", "0"], "--num_classes must be positive, got 0"),
    (["--fsdp", "3"], "--fsdp 3 does not divide the 8 devices"),
    (["--image_size", "30"], "--image_size 30 is not divisible by model.patch_size 16"),
    (["--attention", "foo"], "--attention 'foo' is not one of"),
    (["--attention", "cudnn"], "--attention 'cudnn' needs a GPU"),
    (["--remat", "most"], "--remat 'most' is not one of"),
    (["--t2t_repo", "/nowhere"], "--t2t_repo /nowhere has no models/t2t_vit.py; give the root"),
])
def test_bad_settings_are_one_line_errors(args, message):
  with pytest.raises(SystemExit, match=re.escape(message)):
    bench.main([*SMALL, *args])


@pytest.mark.parametrize("flag", ["--steps", "--rounds"])
def test_zero_timed_steps_is_refused_by_the_parser(capsys, flag):
  with pytest.raises(SystemExit):
    bench.main([*SMALL, flag, "0"])
  assert f"{flag}: must be at least 1, got 0" in capsys.readouterr().err


def test_interleaved_rounds_take_turns_and_alternate_who_starts():
  calls = []

  def clock(name):
    def one_step():
      calls.append(name)
      return float(len(calls))  # "seconds": the call's position, so the test sees which

    return one_step

  times = measure.interleave({"a": clock("a"), "b": clock("b")}, warmup=1, steps=2, rounds=3)
  assert "".join(calls) == "ab" + "aabb" + "bbaa" + "aabb"
  assert times == {"a": [3.0, 4.0, 9.0, 10.0, 11.0, 12.0], "b": [5.0, 6.0, 7.0, 8.0, 13.0, 14.0]}


@pytest.mark.slow
def test_timm_comparison_in_rounds_reports_the_ratio_of_medians(tmp_path):
  reason = timm_side.unavailable_reason("ViT-Ti/16")
  if reason:
    pytest.skip(reason)
  out = tmp_path / "result.json"
  bench.main([*SMALL, "--timm", "on", "--mode", "infer", "--steps", "1", "--rounds", "3",
              "--json", str(out)])
  result = json.loads(out.read_text())
  assert result["rounds"] == 3 and result["torch_threads"] >= 1
  assert result["timm_img_per_sec"] == pytest.approx(8 / (result["timm_step_ms"] / 1e3), rel=0.01)
  assert result["ratio_vs_timm"] == pytest.approx(
      result["timm_step_ms"] / result["step_ms"], rel=0.01)


def test_host_cpu_names_the_processor_and_its_model_numbers(tmp_path):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n"
                     "model\t\t: 17\nmodel name\t: AMD EPYC 9R14 96-Core Processor\n\n"
                     "processor\t: 1\nmodel name\t: another\n")
  assert hardware.host_cpu(str(cpuinfo)) == "AMD EPYC 9R14 96-Core Processor (family 25, model 17)"
  assert hardware.host_cpu(str(tmp_path / "missing"))  # falls back to what platform knows


def test_known_peaks_and_unknown_devices():
  assert hardware.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
  assert hardware.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
  assert hardware.peak_tflops("cpu", "float32") is None


@pytest.mark.slow
def test_timm_comparison_is_skipped_with_its_reason_when_unavailable(monkeypatch):
  assert "no counterpart" in timm_side.unavailable_reason("ViT-custom")
  monkeypatch.setitem(__import__("sys").modules, "timm", None)  # import timm now fails
  assert "torch/timm not importable" in timm_side.unavailable_reason("ViT-Ti/16")
  with pytest.raises(SystemExit, match="--timm=on but torch/timm not importable"):
    bench.main([*SMALL, "--timm", "on"])


def test_data_benchmark_reports_rates_per_core(tmp_path, capsys):
  from vit_jax.data import bundled

  bundled.write_folder(str(tmp_path / "digits"), "jpg", per_class=4)
  out = tmp_path / "data.json"
  bench.main(["data", "--dataset", f"folder:{tmp_path / 'digits'}", "--image_size", "32",
              "--batch", "8", "--batches", "3", "--workers", "2", "--json", str(out)])
  result = json.loads(out.read_text())
  assert "| img_per_sec_per_core |" in capsys.readouterr().out
  assert result["img_per_sec_one_thread"] > 0 and result["workers"] == 2
  assert result["img_per_sec_per_core"] == pytest.approx(
      result["img_per_sec_all_workers"] / min(2, result["cores"]), rel=0.01)


@pytest.mark.slow
def test_data_benchmark_measures_the_input_wait_of_training(tmp_path):
  from vit_jax.data import bundled

  bundled.write_folder(str(tmp_path / "digits"), "jpg", per_class=4)
  out = tmp_path / "data.json"
  bench.main(["data", "--dataset", f"folder:{tmp_path / 'digits'}", "--image_size", "32",
              "--batch", "8", "--batches", "2", "--train_steps", "3", "--json", str(out)])
  result = json.loads(out.read_text())
  assert result["model"] == "ViT-Ti/16" and result["train_steps"] == 3
  assert 0 <= result["input_wait_fraction"] < 1 and result["train_img_per_sec"] > 0


def test_data_benchmark_names_a_missing_folder(tmp_path):
  with pytest.raises(SystemExit, match=r"error: image folder .*nowhere does not exist"):
    bench.main(["data", "--dataset", f"folder:{tmp_path / 'nowhere'}"])


@pytest.mark.parametrize("model", sorted(timm_side.TIMM_NAMES))
def test_each_timm_counterpart_has_our_parameter_count(model):
  """The timm model a comparison times is the same size as ours (1000 classes, 224 px)."""
  torch = pytest.importorskip("torch")
  if timm_side.unavailable_reason(model):
    pytest.skip(timm_side.unavailable_reason(model))
  import timm

  from vit_jax.models import registry

  with torch.device("meta"):  # shapes only: no memory for ViT-H's weights
    net = timm.create_model(timm_side.TIMM_NAMES[model], pretrained=False, num_classes=1000)
  theirs = sum(p.numel() for p in net.parameters())
  assert theirs == registry.param_count(registry.section(model), 1000, 224)


FAKE_T2T = {
    # The authors' package __init__ imports their other variants: it must not run.
    "__init__.py": "raise RuntimeError('the package __init__ ran')\n",
    "widths.py": "WIDTH = 8\n",
    "t2t_vit.py": """
from .widths import WIDTH


def t2t_vit_7(pretrained=False, **kwargs):
    print('adopt performer encoder for tokens-to-token')
    import torch
    size, classes = kwargs["img_size"], kwargs["num_classes"]
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * size * size, WIDTH),
                               torch.nn.GELU(), torch.nn.Linear(WIDTH, classes))
""",
}


def fake_t2t_repo(root, width=8):
  (root / "models").mkdir(parents=True)
  for name, text in FAKE_T2T.items():
    (root / "models" / name).write_text(text.replace("WIDTH = 8", f"WIDTH = {width}"))
  return str(root)


def test_t2t_vit_is_compared_with_the_authors_model_only_given_their_repository(tmp_path):
  assert "pass --t2t_repo with a clone of" in timm_side.unavailable_reason("T2T-ViT-14")
  assert "has no models/t2t_vit.py" in timm_side.unavailable_reason("T2T-ViT-14", str(tmp_path))
  # A ViT keeps timm's model whatever the repository.
  assert timm_side.reference_name("ViT-Ti/16", str(tmp_path)) == "timm vit_tiny_patch16_224"
  with pytest.raises(SystemExit, match="--timm=on but timm has no T2T-ViT; pass --t2t_repo"):
    bench.main([*SMALL, "--model", "T2T-ViT-7", "--timm", "on"])


def test_the_authors_module_is_imported_from_the_clone_under_a_name_of_its_own(tmp_path,
                                                                               monkeypatch):
  sentinel = object()
  monkeypatch.setitem(__import__("sys").modules, "models", sentinel)  # someone else's `models`
  one = timm_side.authors_t2t(fake_t2t_repo(tmp_path / "one", width=8))
  two = timm_side.authors_t2t(fake_t2t_repo(tmp_path / "two", width=5))
  assert (one.WIDTH, two.WIDTH) == (8, 5)  # relative imports resolve within each clone
  assert __import__("sys").modules["models"] is sentinel
  assert timm_side.authors_t2t(str(tmp_path / "one")) is one


def test_the_authors_model_takes_training_steps_as_timm_models_do(tmp_path, capsys):
  torch = pytest.importorskip("torch")
  repo = fake_t2t_repo(tmp_path)
  step = timm_side.make_step("T2T-ViT-7", mode="train", batch=2, image_size=8, num_classes=3,
                             dtype="float32", t2t_repo=repo)
  net = timm_side.authors_t2t(repo)  # the module; the network is inside the closure
  assert net.WIDTH == 8 and "adopt performer" not in capsys.readouterr().out
  cell = next(c.cell_contents for c in step.__closure__
              if isinstance(c.cell_contents, torch.nn.Module))
  before = [p.detach().clone() for p in cell.parameters()]
  step()
  assert all(not torch.equal(a, b) for a, b in zip(before, cell.parameters(), strict=True))
  assert cell.training


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(timm_side.T2T_AUTHORS_NAMES))
def test_the_t2t_authors_models_have_our_parameter_counts(model):
  """Against a real clone of the authors' repository, named by VIT_JAX_T2T_REPO."""
  repo = __import__("os").environ.get("VIT_JAX_T2T_REPO")
  if not repo:
    pytest.skip("VIT_JAX_T2T_REPO names no clone of " + timm_side.T2T_AUTHORS_REPO)
  pytest.importorskip("torch")
  if timm_side.unavailable_reason(model, repo):
    pytest.skip(timm_side.unavailable_reason(model, repo))
  from vit_jax.models import registry

  build = getattr(timm_side.authors_t2t(repo), timm_side.T2T_AUTHORS_NAMES[model])
  net = build(pretrained=False, num_classes=1000, img_size=224)
  theirs = sum(p.numel() for p in net.parameters())  # pos_embed and the performers' w too
  assert theirs == registry.param_count(registry.section(model), 1000, 224)
