import json

import pytest

from vit_jax.benchmark import __main__ as bench
from vit_jax.benchmark import hardware, timm_side

SMALL = ["--model", "ViT-Ti/16", "--image_size", "32", "--num_classes", "10", "--batch", "8",
         "--warmup", "1", "--steps", "2", "--timm", "off"]


@pytest.mark.parametrize("mode", ["train", "infer"])
def test_benchmark_reports_consistent_figures(tmp_path, capsys, mode):
  out = tmp_path / "result.json"
  bench.main([*SMALL, "--mode", mode, "--peak_tflops", "2.0", "--json", str(out)])
  result = json.loads(out.read_text())
  assert "| img_per_sec |" in capsys.readouterr().out
  assert result["mode"] == mode and result["devices"] == 8 and result["compile_s"] > 0
  assert result["img_per_sec"] == pytest.approx(8 / (result["step_ms"] / 1e3), rel=0.01)
  tflops = result["model_gflops_per_image"] * result["img_per_sec"] / 1e3
  assert result["tflops_per_sec"] == pytest.approx(tflops, rel=0.01)
  assert result["mfu"] == pytest.approx(result["tflops_per_sec"] / (2.0 * 8), rel=0.01)
  assert result["planned_memory_bytes"] > 0


def test_accumulation_is_measured_in_the_train_step(tmp_path):
  out = tmp_path / "r.json"
  bench.main([*SMALL, "--batch", "32", "--accum_steps", "4", "--compile_only", "--json",
              str(out)])
  result = json.loads(out.read_text())
  assert result["accum_steps"] == 4 and "img_per_sec" not in result


def test_bad_model_is_a_one_line_error():
  with pytest.raises(SystemExit, match="error: unknown model 'ViT-Z/3'"):
    bench.main([*SMALL, "--model", "ViT-Z/3"])


def test_known_peaks_and_unknown_devices():
  assert hardware.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
  assert hardware.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
  assert hardware.peak_tflops("cpu", "float32") is None


def test_timm_comparison_is_skipped_with_its_reason_when_unavailable(monkeypatch):
  assert "no counterpart" in timm_side.unavailable_reason("ViT-quickstart/7")
  monkeypatch.setitem(__import__("sys").modules, "timm", None)  # import timm now fails
  assert "torch/timm not importable" in timm_side.unavailable_reason("ViT-Ti/16")
  with pytest.raises(SystemExit, match="--timm=on but torch/timm not importable"):
    bench.main([*SMALL, "--timm", "on"])
