import re

import jax
import ml_collections
import numpy as np
import pytest

from vit_jax.models import registry
from vit_jax.models.mixer import MlpMixer
from vit_jax.models.vit import VisionTransformer
from vit_jax.train import cpu_matmul, sharding
from vit_jax.train.optim import make_optimizer, make_schedule
from vit_jax.train.step import init_state, make_train_step

INTEL = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 207\n"
AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
OTHER = "CentaurHauls"  # a vendor none of auto's choices was measured on
ONEDNN_FUSIONS = {"xla_cpu_use_onednn": True,
                  "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
# jaxlib 0.12.1 aborts the process ("Check failed: available_.size() == num_created_" in XLA's
# object_pool.h) when an executable with oneDNN fusions is destroyed while a worker thread is
# still handing a fusion's runtime back to its pool, just after the outputs became ready. So
# the executables these tests run are kept until the session ends, not dropped on return.
_RAN: list = []


def test_modes_are_checked():
  assert cpu_matmul.check_mode("auto") is None
  with pytest.raises(ValueError, match="cpu_matmul 'fast' is not one of auto, onednn, xla"):
    cpu_matmul.compiler_options("fast", "cpu", "ViT", 192)


@pytest.mark.parametrize("text,expected", [
    (INTEL, cpu_matmul.INTEL), (AMD, cpu_matmul.AMD), (None, "")])
def test_cpu_vendor_reads_the_vendor(tmp_path, text, expected):
  path = tmp_path / "cpuinfo"
  if text is not None:
    path.write_text(text)
  assert cpu_matmul.cpu_vendor(str(path)) == expected


def test_only_cpu_steps_and_only_measured_cases_ask_for_onednn(monkeypatch):
  monkeypatch.setattr(cpu_matmul, "onednn_available", lambda: True)
  monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda: OTHER)
  assert cpu_matmul.compiler_options("auto", "cpu", "ViT", 384) is None  # not measured on others
  assert cpu_matmul.compiler_options("onednn", "cpu", "ViT", 384) == {
      "xla_cpu_experimental_onednn_custom_call": True}
  assert cpu_matmul.compiler_options("onednn", "gpu", "ViT", 384) is None
  monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda: cpu_matmul.INTEL)
  assert cpu_matmul.uses_onednn("auto", "cpu", "TNT", 384)
  assert not cpu_matmul.uses_onednn("xla", "cpu", "ViT", 384)
  assert not cpu_matmul.uses_onednn("auto", "cpu", "Mixer", 384)  # measured slower
  assert cpu_matmul.uses_onednn("onednn", "cpu", "Mixer", 768)  # asked for explicitly
  monkeypatch.setattr(cpu_matmul, "onednn_available", lambda: False)  # e.g. jax 0.10
  monkeypatch.setattr(cpu_matmul, "onednn_fusions_available", lambda: False)
  assert cpu_matmul.compiler_options("onednn", "cpu", "ViT", 384) is None


@pytest.mark.parametrize("name,expected", [
    ("ViT-Ti/16", True), ("ViT-S/16", True), ("TNT-S", True), ("T2T-ViT-14", True),
    ("ViT-B/16", False), ("R50+ViT-B/16", False), ("Mixer-B/16", False)])
def test_training_asks_for_onednn_fusions_where_ynnpack_takes_weight_gradients(
    monkeypatch, name, expected):
  """Where the custom call rewrites nothing, oneDNN's fusions take the weight gradients; under
  `auto` only where YNNPACK would take them (measured faster there, jax 0.12.1) and within the
  custom call's width and families."""
  monkeypatch.setattr(cpu_matmul, "onednn_available", lambda: False)
  monkeypatch.setattr(cpu_matmul, "onednn_fusions_available", lambda: True)
  monkeypatch.setattr(cpu_matmul, "ynnpack_weight_gradients", lambda: True)
  monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda: cpu_matmul.INTEL)
  family, width = registry.family_of(name).name, registry.section(name)["hidden_size"]
  options = cpu_matmul.compiler_options("auto", "cpu", family, width) or {}
  assert (ONEDNN_FUSIONS.items() <= options.items()) is expected
  assert "xla_cpu_experimental_onednn_custom_call" not in options
  assert cpu_matmul.uses_onednn("auto", "cpu", family, width) is expected
  assert cpu_matmul.training_onednn("onednn", "cpu", family, width) == ONEDNN_FUSIONS
  assert cpu_matmul.training_onednn("xla", "cpu", family, width) is None
  assert cpu_matmul.training_onednn("auto", "gpu", family, width) is None
  monkeypatch.setattr(cpu_matmul, "ynnpack_weight_gradients", lambda: False)  # jax 0.10, 0.12.0
  assert not cpu_matmul.uses_onednn("auto", "cpu", family, width)
  assert cpu_matmul.training_onednn("onednn", "cpu", family, width) == ONEDNN_FUSIONS
  monkeypatch.setattr(cpu_matmul, "ynnpack_weight_gradients", lambda: True)
  monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda: OTHER)
  assert not cpu_matmul.uses_onednn("auto", "cpu", family, width)  # not measured on others
  monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda: cpu_matmul.INTEL)
  monkeypatch.setattr(cpu_matmul, "onednn_available", lambda: True)  # the custom call first
  assert cpu_matmul.training_onednn("onednn", "cpu", family, width) == {
      "xla_cpu_experimental_onednn_custom_call": True}


@pytest.mark.parametrize("release,ynnpack,expected", [
    ((0, 10), False, True), ((0, 12), True, True),  # jax 0.10.2 and 0.12.1: measured faster
    ((0, 11), False, False), ((0, 12), False, False)])  # 0.11, 0.12.0: not measured
def test_auto_on_amd_cpus_asks_only_for_what_was_measured_there(monkeypatch, release, ynnpack,
                                                                  expected):
  """Measured on an AMD EPYC: oneDNN's fusions made the ViT training steps faster and Eigen's
  products the hybrid's and the Mixer's forward passes; nothing made the ViTs' forward passes
  faster with both releases, XLA's convolutions made the hybrid's training step slower, and the
  custom call was not measured there."""
  monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda: cpu_matmul.AMD)
  monkeypatch.setattr(cpu_matmul, "jaxlib_release", lambda: release)
  monkeypatch.setattr(cpu_matmul, "ynnpack_weight_gradients", lambda: ynnpack)
  for probe in ("onednn_available", "onednn_fusions_available", "eigen_products_available",
                "eigen_convolutions_available"):
    monkeypatch.setattr(cpu_matmul, probe, lambda: True)
  fusions = ONEDNN_FUSIONS if expected else None
  assert cpu_matmul.compiler_options("auto", "cpu", "ViT", 192) == fusions
  assert cpu_matmul.compiler_options("auto", "cpu", "ViT", 384) == fusions
  assert cpu_matmul.compiler_options("auto", "cpu", "ViT", 768) is None  # wider: slower on Intel
  assert cpu_matmul.compiler_options("auto", "cpu", "Mixer", 384) is None
  assert cpu_matmul.compiler_options("auto", "cpu", "ResNet+ViT", 768) is None
  assert cpu_matmul.inference_options("auto", "cpu", "ViT", 192) is None
  for family in ("TNT", "T2T-ViT"):
    assert cpu_matmul.inference_options("auto", "cpu", family, 384) is None
  eigen = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
  assert cpu_matmul.inference_options("auto", "cpu", "ResNet+ViT", 768) == eigen
  assert cpu_matmul.inference_options("auto", "cpu", "Mixer", 768) == eigen
  assert cpu_matmul.inference_options("onednn", "cpu", "Mixer", 768) == ONEDNN_FUSIONS
  assert cpu_matmul.compiler_options("auto", "gpu", "ViT", 192) is None
  assert cpu_matmul.inference_options("auto", "gpu", "Mixer", 768) is None
  # Asked for explicitly, the modes behave as on any CPU.
  assert cpu_matmul.compiler_options("onednn", "cpu", "ViT", 192) == {
      "xla_cpu_experimental_onednn_custom_call": True}
  assert cpu_matmul.compiler_options("xla", "cpu", "ViT", 192) is None
  monkeypatch.setattr(cpu_matmul, "onednn_fusions_available", lambda: False)
  assert cpu_matmul.compiler_options("auto", "cpu", "ViT", 192) is None


def test_the_weight_gradient_probe_agrees_with_the_compiler():
  """True exactly when XLA:CPU's default puts a lone `a.T @ b` in a YNNPACK fusion."""
  operand = jax.ShapeDtypeStruct((256, 256), np.float32)
  text = jax.jit(lambda a, b: a.T @ b).lower(operand, operand).compile().as_text()
  assert cpu_matmul.ynnpack_weight_gradients() is (_ynn_2d_products(text) == 1)


@pytest.mark.parametrize("name,expected", [
    ("ViT-Ti/16", True), ("ViT-S/16", True), ("TNT-S", True), ("T2T-ViT-14", True),
    ("ViT-B/16", False), ("R50+ViT-B/16", False), ("ViT-L/16", False), ("Mixer-B/16", False)])
def test_auto_asks_for_onednn_only_up_to_the_width_measured_faster(monkeypatch, name, expected):
  """Measured on an Intel Xeon: faster up to width 384, slower at 768 (docs/performance.md)."""
  monkeypatch.setattr(cpu_matmul, "onednn_available", lambda: True)
  monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda: cpu_matmul.INTEL)
  width = registry.section(name)["hidden_size"]
  family = registry.family_of(name).name
  assert cpu_matmul.uses_onednn("auto", "cpu", family, width) is expected
  assert cpu_matmul.uses_onednn("onednn", "cpu", family, width)  # asked for, always


def test_the_probe_agrees_with_the_compiler():
  """Available exactly when the option rewrites a weight-gradient-shaped product."""
  operand = jax.ShapeDtypeStruct((256, 256), np.float32)
  lowered = jax.jit(lambda a, b: a.T @ b).lower(operand, operand)
  try:
    rewritten = "__onednn$matmul" in lowered.compile(
        {"xla_cpu_experimental_onednn_custom_call": True}).as_text()
  except Exception:  # a release that does not know the option
    rewritten = False
  assert cpu_matmul.onednn_available() is rewritten
  assert "__onednn$matmul" not in lowered.compile().as_text()


def _one_step(options, **model_settings):
  settings = dict(num_classes=10, patch_size=8, hidden_size=64, num_layers=2, num_heads=2,
                  mlp_dim=256)
  model = VisionTransformer(**{**settings, **model_settings})
  cfg = ml_collections.ConfigDict(dict(optimizer="sgd", grad_clip_norm=0.0, momentum=0.0,
                                       weight_decay=0.0))
  schedule = make_schedule(1.0, 0, 100, "constant")
  tx = make_optimizer(cfg, schedule)
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  repl, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  state = jax.jit(lambda: init_state(model, tx, (64, 64, 3), seed=0), out_shardings=repl)()
  step = jax.jit(make_train_step(model, tx, schedule, loss="softmax_xent", accum_steps=1,
                                 seed=0, chains=2),
                 in_shardings=(repl, data), out_shardings=(repl, repl), compiler_options=options)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(16, 64, 64, 3)).astype(np.float32),
           "label": rng.integers(0, 10, 16).astype(np.int32), "mask": np.ones(16, np.float32)}
  batch = sharding.global_batch(batch, mesh)
  compiled = step.lower(state, batch).compile()
  _RAN.append(compiled)
  new, _ = compiled(state, batch)
  # With SGD at learning rate 1 the update is minus the gradient.
  grads = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), state.params, new.params)
  return grads, compiled.as_text()


@pytest.mark.skipif(not cpu_matmul.onednn_available(),
                    reason="this jaxlib does not rewrite products to oneDNN (jax 0.10, 0.12.1)")
def test_onednn_products_give_the_same_gradients():
  ours, text = _one_step(None)
  theirs, rewritten = _one_step({"xla_cpu_experimental_onednn_custom_call": True})
  # the option took effect, on the weight gradients
  assert text.count("__onednn$matmul") == 0 and rewritten.count("__onednn$matmul") > 0
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


@pytest.mark.skipif(not cpu_matmul.onednn_fusions_available(),
                    reason="this jaxlib has no oneDNN fusions")
def test_onednn_fusions_give_the_same_gradients():
  """A training step's products, weight gradients included, in oneDNN's fusions: only rounding
  changes."""
  ours, text = _one_step(None)
  theirs, fused = _one_step(ONEDNN_FUSIONS)
  assert "__onednn_fusion" not in text
  # Per layer: q/k/v, out and the MLP's two products, each forward, input and weight gradient.
  assert fused.count("__onednn_fusion") >= 2 * 4 * 3
  # No matrix product outside a fusion; a LayerNorm's gradient may leave a matrix-vector
  # product with its scale (one column) to XLA's own kernels.
  assert not _MATRIX_PRODUCT.search(fused.split("ENTRY")[-1])
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


def test_inference_asks_for_eigen_only_under_auto_on_intel_cpus(monkeypatch):
  monkeypatch.setattr(cpu_matmul, "eigen_products_available", lambda: True)
  monkeypatch.setattr(cpu_matmul, "onednn_fusions_available", lambda: False)
  monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda: cpu_matmul.INTEL)
  eigen = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
  assert cpu_matmul.inference_options("auto", "cpu", "ViT", 192) == eigen
  assert cpu_matmul.inference_options("xla", "cpu", "ViT", 192) is None
  assert cpu_matmul.inference_options("onednn", "cpu", "ViT", 192) is None  # measured under auto
  assert cpu_matmul.inference_options("auto", "gpu", "ViT", 192) is None
  with pytest.raises(ValueError, match="cpu_matmul 'fast' is not one of"):
    cpu_matmul.inference_options("fast", "cpu", "ViT", 192)
  monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda: OTHER)
  assert cpu_matmul.inference_options("auto", "cpu", "ViT", 192) is None  # not measured on others
  monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda: cpu_matmul.INTEL)
  monkeypatch.setattr(cpu_matmul, "eigen_products_available", lambda: False)
  assert cpu_matmul.inference_options("auto", "cpu", "ViT", 192) is None


@pytest.mark.parametrize("name,release,expected", [
    ("ViT-Ti/16", (0, 10), True), ("ViT-S/16", (0, 10), True),
    ("ViT-Ti/16", (0, 12), False),  # measured no faster there
    ("ViT-B/16", (0, 10), False), ("Mixer-B/16", (0, 10), False), ("R50+ViT-B/16", (0, 10), False),
    ("TNT-S", (0, 10), False), ("T2T-ViT_t-14", (0, 10), False)])
def test_auto_asks_for_onednn_fusions_only_where_measured_faster(monkeypatch, name, release,
                                                                 expected):
  """Measured on an Intel Xeon: ViT forward passes up to width 384 faster with jax 0.10.2."""
  monkeypatch.setattr(cpu_matmul, "eigen_products_available", lambda: True)
  monkeypatch.setattr(cpu_matmul, "onednn_fusions_available", lambda: True)
  monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda: cpu_matmul.INTEL)
  monkeypatch.setattr(cpu_matmul, "jaxlib_release", lambda: release)
  family, width = registry.family_of(name).name, registry.section(name)["hidden_size"]
  eigen = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
  assert cpu_matmul.inference_options("auto", "cpu", family, width) == (
      {**eigen, **ONEDNN_FUSIONS} if expected else eigen)
  assert cpu_matmul.inference_options("onednn", "cpu", family, width) == ONEDNN_FUSIONS
  assert cpu_matmul.inference_options("xla", "cpu", family, width) is None
  assert not cpu_matmul.uses_onednn_fusions("auto", "gpu", family, width)
  monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda: OTHER)
  assert not cpu_matmul.uses_onednn_fusions("auto", "cpu", family, width)
  monkeypatch.setattr(cpu_matmul, "onednn_fusions_available", lambda: False)
  assert cpu_matmul.inference_options("onednn", "cpu", family, width) is None


def test_jaxlib_release_is_the_installed_one():
  import jaxlib.version

  assert ".".join(map(str, cpu_matmul.jaxlib_release())) + "." in jaxlib.version.__version__ + "."


def test_the_onednn_fusion_probe_agrees_with_the_compiler():
  """Available exactly when the options put a lone product in a oneDNN fusion."""
  operand = jax.ShapeDtypeStruct((256, 256), np.float32)
  lowered = jax.jit(lambda a, b: a @ b).lower(operand, operand)
  try:
    fused = "__onednn_fusion" in lowered.compile(ONEDNN_FUSIONS).as_text()
  except Exception:  # a release that does not know the options
    fused = False
  assert cpu_matmul.onednn_fusions_available() is fused
  assert "__onednn_fusion" not in lowered.compile().as_text()


def test_training_asks_for_xla_convolutions_only_under_auto_on_intel_cpus(monkeypatch):
  monkeypatch.setattr(cpu_matmul, "eigen_convolutions_available", lambda: True)
  monkeypatch.setattr(cpu_matmul, "onednn_available", lambda: True)
  monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda: cpu_matmul.INTEL)
  convolutions = {"xla_cpu_experimental_ynn_fusion_type":
                  "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
  onednn = {"xla_cpu_experimental_onednn_custom_call": True}
  assert cpu_matmul.compiler_options("auto", "cpu", "ResNet+ViT", 768) == convolutions
  assert cpu_matmul.compiler_options("auto", "cpu", "ResNet+ViT", 384) == {**onednn,
                                                                          **convolutions}
  assert registry.family_of("R50+ViT-B/16").name in cpu_matmul.AUTO_XLA_CONVOLUTIONS
  # Only the hybrid's were measured faster (TNT-S's step slower).
  assert cpu_matmul.compiler_options("auto", "cpu", "ViT", 384) == onednn
  assert cpu_matmul.compiler_options("auto", "cpu", "TNT", 384) == onednn
  assert cpu_matmul.compiler_options("auto", "cpu", "Mixer", 768) is None
  assert cpu_matmul.compiler_options("onednn", "cpu", "ViT", 768) == onednn  # asked for: oneDNN
  assert cpu_matmul.compiler_options("xla", "cpu", "ResNet+ViT", 768) is None
  assert cpu_matmul.compiler_options("auto", "gpu", "ResNet+ViT", 768) is None
  monkeypatch.setattr(cpu_matmul, "eigen_convolutions_available", lambda: False)
  assert cpu_matmul.compiler_options("auto", "cpu", "ResNet+ViT", 768) is None


def test_the_convolution_probe_agrees_with_the_compiler():
  """Available exactly when a lone convolution leaves YNNPACK with the option."""
  image = jax.ShapeDtypeStruct((2, 16, 16, 64), np.float32)
  kernel = jax.ShapeDtypeStruct((3, 3, 64, 64), np.float32)
  lowered = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))).lower(image, kernel)
  try:
    moved = (_ynn_holding(lowered.compile().as_text(), _CONVOLUTION) > 0
             and _ynn_holding(lowered.compile({
                 "xla_cpu_experimental_ynn_fusion_type":
                 "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}).as_text(),
                 _CONVOLUTION) == 0)
  except Exception:  # a release that does not know the option or its values
    moved = False
  assert cpu_matmul.eigen_convolutions_available() is moved


@pytest.mark.skipif(not cpu_matmul.eigen_convolutions_available(),
                    reason="this jaxlib does not give lone convolutions to YNNPACK")
def test_xla_convolutions_give_the_same_gradients():
  """The hybrid's option moves a training step's convolutions (here a small hybrid's ResNet
  stem's forward pass and gradients) out of YNNPACK, keeps its products where they were and
  changes only rounding."""
  hybrid = dict(patch_size=1, resnet_layers=(1,), resnet_width=32)
  ours, text = _one_step(None, **hybrid)
  theirs, moved = _one_step({"xla_cpu_experimental_ynn_fusion_type":
                             "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"},
                            **hybrid)
  assert _ynn_holding(text, _CONVOLUTION) > 0 and _ynn_holding(moved, _CONVOLUTION) == 0
  assert _ynn_holding(moved, _PRODUCT) == _ynn_holding(text, _PRODUCT) > 0
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


_PRODUCT = re.compile(r"= f32\[\d+,\d+\]\S* dot\(")
_MATRIX_PRODUCT = re.compile(r"= f32\[\d+,(?!1\])\d+\]\S* dot\(")  # two columns or more
_CONVOLUTION = re.compile(r"= f32\[[\d,]+\]\S* convolution\(")


def _ynn_2d_products(hlo_text: str) -> int:
  """How many of the compiled module's YNNPACK fusions hold a 2-D product."""
  return _ynn_holding(hlo_text, _PRODUCT)


def _ynn_holding(hlo_text: str, instruction: re.Pattern) -> int:
  """How many of the compiled module's YNNPACK fusions hold an instruction matching the pattern."""
  bodies, current = {}, None
  for line in hlo_text.splitlines():
    if line and not line.startswith(" ") and line.endswith("{"):
      current = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
      bodies[current] = []
    elif current is not None:
      bodies[current].append(line)
  called = re.findall(r"%ynn_fusion[.\d]* = .*calls=%([\w.\-]+)", hlo_text)
  return sum(any(instruction.search(line) for line in bodies.get(name, [])) for name in called)


def _forward_text_and_logits(options, model=None):
  model = model or VisionTransformer(num_classes=10, patch_size=8, hidden_size=64, num_layers=2,
                                     num_heads=2, mlp_dim=256)
  images = np.random.default_rng(0).normal(size=(4, 64, 64, 3)).astype(np.float32)
  params = model.init(jax.random.key(0), images[:1])["params"]
  params = jax.tree.map(lambda p: p + 0.02 * np.random.default_rng(1).normal(size=p.shape), params)
  compiled = jax.jit(lambda p, x: model.apply({"params": p}, x),
                     compiler_options=options).lower(params, images).compile()
  _RAN.append(compiled)
  return compiled.as_text(), np.asarray(compiled(params, images))


@pytest.mark.skipif(not cpu_matmul.eigen_products_available(),
                    reason="this jaxlib does not give lone products to YNNPACK")
@pytest.mark.parametrize("family", ["ViT", "ResNet+ViT", "Mixer"])
def test_eigen_products_give_the_same_logits(family):
  """The option moves the forward pass's lone products out of YNNPACK, and changes only rounding
  (in the families `auto` gives it to on AMD CPUs too)."""
  model = {"ViT": None,
           "ResNet+ViT": VisionTransformer(num_classes=10, patch_size=1, hidden_size=64,
                                           num_layers=2, num_heads=2, mlp_dim=128,
                                           resnet_layers=(1,), resnet_width=32),
           "Mixer": MlpMixer(num_classes=10, patch_size=8, hidden_size=64, num_layers=2,
                             tokens_mlp_dim=32, channels_mlp_dim=128)}[family]
  ours, logits = _forward_text_and_logits(None, model)
  theirs, eigen_logits = _forward_text_and_logits(
      {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}, model)
  assert _ynn_2d_products(ours) > 0 and _ynn_2d_products(theirs) == 0
  np.testing.assert_allclose(eigen_logits, logits, rtol=0, atol=1e-5 * np.abs(logits).max())


@pytest.mark.skipif(not cpu_matmul.onednn_fusions_available(),
                    reason="this jaxlib has no oneDNN fusions")
@pytest.mark.parametrize("settings", [
    {}, {"pool": "gap", "posemb": "sincos2d"}, {"posemb": "relative"}, {"pool": "map"},
    {"representation_size": 32, "posemb": "learn2d", "posemb_mode": "every_layer"}])
def test_onednn_fusions_give_the_same_logits(settings):
  """Every product of a ViT's forward pass goes to oneDNN, which changes only rounding."""
  base = {"num_classes": 10, "patch_size": 8, "hidden_size": 64, "num_layers": 2,
          "num_heads": 2, "mlp_dim": 256}
  model = VisionTransformer(**base, **settings)
  ours, logits = _forward_text_and_logits(None, model)
  theirs, onednn_logits = _forward_text_and_logits(
      {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE", **ONEDNN_FUSIONS},
      model)
  assert "__onednn_fusion" not in ours
  assert theirs.count("__onednn_fusion") >= 2 * 6  # q/k/v, out, the MLP's two, per layer
  assert not _PRODUCT.search(theirs.split("ENTRY")[-1])  # no 2-D product outside a fusion
  np.testing.assert_allclose(onednn_logits, logits, rtol=0, atol=1e-5 * np.abs(logits).max())
