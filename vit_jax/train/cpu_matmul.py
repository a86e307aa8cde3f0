"""Which library XLA:CPU multiplies with: a training step's weight gradients in oneDNN or in
XLA's own kernels, a forward pass's products in Eigen or in YNNPACK.

jaxlib releases built with oneDNN hand 2-D `dot`s to oneDNN's matmul when compiled with the
option `xla_cpu_experimental_onednn_custom_call`. In a ViT's training step XLA:CPU then
rewrites the products its own fused kernels do not take: the dense layers' weight gradients
(contracting over the tokens), with the sum of the independent parts' gradients fused in. On an
Intel Xeon (family 6, model 207) with jax 0.12.0.1 that made the ViT-Ti/16 and ViT-S/16
training steps 6-9% faster (docs/performance.md); jax 0.10.2 accepts the option but rewrites
nothing. Being an experimental option, it is asked for per compilation (`jax.jit(...,
compiler_options=...)`), where a release that does not know it fails with a catchable error
instead of aborting the process, and only after a probe compilation showed that it takes effect.

Executables with oneDNN calls are not written to JAX's persistent compilation cache (jax
0.12.0.1 warns `std::bad_alloc`, 0.12.1 that its oneDNN fusions cannot be serialised) and are
compiled again in the next process.

oneDNN's matmul is not faster at every shape: on a 2-core Intel Xeon (family 6, model 167) it
ran the (784 x 768)^T by (784 x 3072) weight gradient of a width-768 MLP at about half XLA's
rate (its rate falls at some output widths, 3072 among them, and not at others), and the
ViT-B/16 and R50+ViT-B/16 training steps took 3-5% longer with it.

Inference (`inference_options`): XLA:CPU's default hands a lone 2-D product to YNNPACK; given
its fusion types as a list without `LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT` (per compilation: the
`-TYPE` form is refused there), YNNPACK keeps its reductions and the products go to Eigen. On
the model-167 Xeon that made the CPU table's forward passes 1-8% faster (Mixer-B/16 and
R50+ViT-B/16 the most; ViT-Ti/16 at batch 8 with jax 0.10.2 unchanged), with jax 0.10.2 and
0.12.0.1 alike, as Eigen's `x @ w` is the faster at most dense-layer shapes there; in training
it is not (Eigen's `g @ w.T` is slow), so only forward passes ask for it.

Convolutions (`compiler_options` under `auto`): XLA's default list of YNNPACK's fusion types
also hands it every lone convolution big enough (`LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION`).
On the model-167 Xeon, XLA's own convolutions (Eigen's) computed the weight gradients of the
hybrid's ResNet stem 1.2-4.3x faster than YNNPACK's, with jax 0.10.2 and 0.12.0.1 alike (56 x
56 x 64 at batch 8: 11.2 against 47.7 ms), and its forward passes and input gradients at
0.85-1.8x YNNPACK's speed. A hybrid's training step under `auto` is therefore compiled with the
list without it, products and reductions staying where they were (`AUTO_XLA_CONVOLUTIONS`); in
the other families the patch embedding is the only convolution, and the list made TNT-S's step
15% slower with jax 0.12.0.1 and ViT's and the Mixer's no faster. Forward passes already leave
convolutions out, with the lone products.

oneDNN's fusions (`inference_options`): jaxlib 0.10 also hands each lone product to oneDNN
when compiled with `xla_cpu_use_onednn` and oneDNN's fusion type
`LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT`. On the model-167 Xeon with jax 0.10.2 that made ViT-Ti/16's
and ViT-S/16's forward passes 3.5-5% faster than Eigen's products, left the width-768 families
within 1.5%, and made T2T-ViT_t-14's 6% and the quickstart's TNT 10% slower; with jax 0.12.0.1
it made no ViT faster and the Mixer-B/16 and R50+ViT-B/16 passes 34-63% slower. So `auto` asks
for it only in ViT forward passes up to `AUTO_MAX_WIDTH`, with jaxlib releases before
`AUTO_ONEDNN_FUSIONS_BEFORE`. (Its wider type `LIBRARY_FUSION_TYPE_DOT` aborts the process with
"partition compile failed" on a product whose operand is computed in the same fusion, and in
training the lone products made ViT-Ti/16's step slower: neither is used.)

jax 0.12.1's YNNPACK takes the weight gradients (`a.T @ b`) too, before oneDNN's custom call
can, so the custom call's option rewrites nothing there. oneDNN's fusions take every lone
product instead, weight gradients included: on the model-167 Xeon with jax 0.12.1 they made the
training steps of ViT-Ti/16 at batch 32, ViT-S/16 at 8 and 32, TNT-S and T2T-ViT-14 3.7-9.1%
faster (ViT-Ti/16 at batch 8 and T2T-ViT_t-14 within 1.1%), and those of Mixer-B/16 and
ViT-B/16 11-22% slower. So a training step asks for them (`training_onednn`) within the custom
call's limits (`AUTO_MAX_WIDTH`, `AUTO_SKIPS`) where the probe `ynnpack_weight_gradients` shows
YNNPACK taking weight gradients. With jax 0.10.2 and 0.12.0.1 they moved it within 2.5-4%
(at batch 32 with jax 0.10.2, 5-7% faster in one process one day, yet not measurably so against
timm in the benchmark; docs/performance.md), so those releases keep XLA's defaults.

On a 2-core AMD EPYC (family 25, model 17) oneDNN's fusions made the ViT-Ti/16 and ViT-S/16
training steps at batch 8 and 32 faster with jax 0.10.2 and with 0.12.1: 2-4% in one process in
seven of the eight pairs (ViT-S/16 at batch 32 with jax 0.10.2 2% slower there), and 3-15% more
img/s against timm in the benchmark with jax 0.10.2; TNT-S and T2T-ViT-14 moved within 1.1%
with jax 0.10.2. So on AMD's processors `auto` asks for the fusions in training, with
`AUTO_AMD_FUSION_RELEASE` or where YNNPACK takes the weight gradients, within the same widths
and families; neither the custom call (jax 0.12.0) nor the hybrid's convolutions (XLA's made
its training step 1-2% slower there, medians, with both releases) are asked for. In forward
passes there, Eigen's products made the hybrid's and the Mixer's faster in every run with both
releases, and moved the ViTs', TNT-S's and the T2T-ViTs' both ways or made them slower;
oneDNN's fusions made the ViTs' faster with jax 0.12.1 only. So `auto` asks for Eigen's
products in the forward passes of `AUTO_AMD_EIGEN_FAMILIES` there, and for nothing else
(docs/performance.md).

Modes: `onednn` asks for it wherever the probe succeeds; `xla` never does; `auto` does on Intel
and AMD CPUs, where it was measured, for the widths it made faster there (hidden size up to
`AUTO_MAX_WIDTH`) except for the families it made slower (`AUTO_SKIPS`), and leaves other CPUs
(not measured), wider models and accelerators alone; only `auto` asks for Eigen's products in
inference (every family on Intel CPUs, `AUTO_AMD_EIGEN_FAMILIES` on AMD's) and its convolutions
in training (on Intel CPUs). In inference `onednn` asks for oneDNN's fusions wherever the
probe succeeds, `auto` as said above.
"""

from __future__ import annotations

import functools
from typing import Any

MODES = ("auto", "onednn", "xla")
INTEL, AMD = "GenuineIntel", "AuthenticAMD"  # /proc/cpuinfo's vendor_id

_OPTION = "xla_cpu_experimental_onednn_custom_call"
_MARK = "__onednn$matmul"  # the custom call's target in the compiled HLO
_FUSION_TYPES = "xla_cpu_experimental_ynn_fusion_type"
# XLA's default list is INDIVIDUAL_DOT and REDUCE: without the former a lone product is Eigen's.
_NO_LONE_PRODUCTS = "LIBRARY_FUSION_TYPE_REDUCE"
# XLA's default list without INDIVIDUAL_CONVOLUTION (which jaxlib 0.10 and 0.12 add to it):
# lone products and reductions stay YNNPACK's, convolutions go to XLA's own kernels.
_NO_CONVOLUTIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
_YNN = "ynn_fusion"  # YNNPACK's fusions' names in the compiled HLO
# Families whose training step the option made slower (Intel Xeon, jax 0.12.0.1, batch 8):
# Mixer-B/16 (its token-mixing weight gradients contract over batch x channels, and its
# channel MLP's have 3072 columns, one of oneDNN's slow widths: the module's docstring).
AUTO_SKIPS = ("Mixer",)
# The widest hidden size whose training step the option made faster: 384 (ViT-S/16; TNT-S and
# T2T-ViT-14 on the model-207 Xeon). At 768 (ViT-B/16, R50+ViT-B/16) it made the step slower.
AUTO_MAX_WIDTH = 384
# Families whose training step XLA's own convolutions made faster (Intel Xeon, batch 8): the
# hybrid, whose ResNet stem's 3x3 weight gradients YNNPACK computes slowly (the docstring).
AUTO_XLA_CONVOLUTIONS = ("ResNet+ViT",)
# Forward passes whose products oneDNN's fusions made faster (Intel Xeon, jax 0.10.2), and the
# first jaxlib release (major, minor) measured without the gain (0.12.0.1; 0.11 not measured).
AUTO_ONEDNN_FUSION_FAMILIES = ("ViT",)
AUTO_ONEDNN_FUSIONS_BEFORE = (0, 11)
# On an AMD EPYC (family 25, model 17) oneDNN's fusions made the training steps faster with jax
# 0.12.1 (where `ynnpack_weight_gradients`) and with this release (major, minor), 0.10.2; jax 0.11
# and 0.12.0 were not measured there.
AUTO_AMD_FUSION_RELEASE = (0, 10)
# Families whose forward passes Eigen's products made faster in every run on that AMD EPYC, with
# jax 0.10.2 and 0.12.1 (R50+ViT-B/16 1.8-5.9%, Mixer-B/16 2.0-2.8%); the ViTs', TNT-S's and the
# T2T-ViTs' were slower in some run.
AUTO_AMD_EIGEN_FAMILIES = ("ResNet+ViT", "Mixer")
_ONEDNN_FUSIONS = {"xla_cpu_use_onednn": True,
                   "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
_ONEDNN_FUSION = "__onednn_fusion"  # the fusions' kind in the compiled HLO


def check_mode(mode: str) -> str | None:
  """Why `mode` is not a cpu_matmul setting (None when it is)."""
  if mode not in MODES:
    return f"cpu_matmul '{mode}' is not one of {', '.join(MODES)}"
  return None


def cpu_fields(cpuinfo: str = "/proc/cpuinfo") -> dict[str, str]:
  """The first processor's fields in Linux's /proc/cpuinfo (empty where it is unreadable)."""
  fields: dict[str, str] = {}
  try:
    with open(cpuinfo) as f:
      for line in f:
        if not line.strip():
          break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
  except OSError:
    pass
  return fields


def cpu_vendor(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The host processor's `vendor_id` (`INTEL`, `AMD`, ...; "" where /proc/cpuinfo is
  unreadable)."""
  return cpu_fields(cpuinfo).get("vendor_id", "")


@functools.cache
def onednn_available() -> bool:
  """Whether this jaxlib compiles a CPU matrix product to oneDNN when asked (probed once)."""
  import jax
  import jax.numpy as jnp

  operand = jax.ShapeDtypeStruct((256, 256), jnp.float32)
  try:
    # A product over the rows of both operands, as a weight gradient is: XLA:CPU keeps products
    # its own fused kernels can take (e.g. a plain a @ b), so those would not show the rewrite.
    lowered = jax.jit(lambda a, b: a.T @ b).lower(operand, operand)
    return _MARK in lowered.compile({_OPTION: True}).as_text()
  except Exception:  # an unknown option (INVALID_ARGUMENT), or no CPU backend
    return False


def uses_onednn(mode: str, backend: str, family: str, width: int) -> bool:
  """Whether a training step of a model of `family` (a registry family's name, e.g. "ViT") and
  hidden size `width`, compiled for `backend` in this mode, runs its weight-gradient products
  in oneDNN: its custom call's, or oneDNN's fusions' (`training_onednn`)."""
  return training_onednn(mode, backend, family, width) is not None


def training_onednn(mode: str, backend: str, family: str, width: int) -> dict[str, Any] | None:
  """The compiler options that put a training step's weight gradients in oneDNN (None: they
  stay where XLA:CPU puts them): its custom call where this jaxlib rewrites products to it,
  else oneDNN's fusions, which take every lone product. Under `auto` only on Intel and AMD CPUs,
  up to `AUTO_MAX_WIDTH` and outside `AUTO_SKIPS`, and the fusions only with releases whose
  YNNPACK takes the weight gradients (`ynnpack_weight_gradients`), where they were measured
  faster; on AMD's never the custom call, and the fusions also with `AUTO_AMD_FUSION_RELEASE`."""
  problem = check_mode(mode)
  if problem:
    raise ValueError(problem)
  if backend != "cpu" or mode == "xla":
    return None
  vendor = cpu_vendor() if mode == "auto" else ""
  if mode == "auto" and (family in AUTO_SKIPS or width > AUTO_MAX_WIDTH
                         or vendor not in (INTEL, AMD)):
    return None
  if vendor == AMD:  # measured there with oneDNN's fusions only, not the custom call
    measured = jaxlib_release() == AUTO_AMD_FUSION_RELEASE or ynnpack_weight_gradients()
    return dict(_ONEDNN_FUSIONS) if measured and onednn_fusions_available() else None
  if onednn_available():
    return {_OPTION: True}
  if (mode == "onednn" or ynnpack_weight_gradients()) and onednn_fusions_available():
    return dict(_ONEDNN_FUSIONS)
  return None


@functools.cache
def ynnpack_weight_gradients() -> bool:
  """Whether this jaxlib hands a lone weight-gradient-shaped product (`a.T @ b`, contracting
  over both operands' rows) to YNNPACK by default (probed once; jax 0.12.1 does, earlier
  releases leave it to XLA's own kernels)."""
  import jax
  import jax.numpy as jnp

  operand = jax.ShapeDtypeStruct((256, 256), jnp.float32)
  try:
    return _YNN in jax.jit(lambda a, b: a.T @ b).lower(operand, operand).compile().as_text()
  except Exception:  # no CPU backend
    return False


def compiler_options(mode: str, backend: str, family: str, width: int
                     ) -> dict[str, Any] | None:
  """`jax.jit`'s `compiler_options` for a training step (None: XLA's defaults): oneDNN's weight
  gradients where `uses_onednn` says so, and under `auto`, on an Intel CPU, the convolutions of
  the families in `AUTO_XLA_CONVOLUTIONS` in XLA's own kernels instead of YNNPACK's."""
  options: dict[str, Any] = training_onednn(mode, backend, family, width) or {}
  if (mode == "auto" and backend == "cpu" and family in AUTO_XLA_CONVOLUTIONS
      and cpu_vendor() == INTEL and eigen_convolutions_available()):
    options[_FUSION_TYPES] = _NO_CONVOLUTIONS
  return options or None


@functools.cache
def eigen_convolutions_available() -> bool:
  """Whether this jaxlib gives a lone convolution to YNNPACK by default and to XLA's own kernels
  when compiled with the fusion types `_NO_CONVOLUTIONS` (probed once)."""
  import jax
  import jax.numpy as jnp

  # Big enough for YNNPACK to take it (it leaves, e.g., 8 channels to XLA anyway).
  image = jax.ShapeDtypeStruct((1, 16, 16, 32), jnp.float32)
  kernel = jax.ShapeDtypeStruct((3, 3, 32, 32), jnp.float32)
  return _leaves_ynnpack(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")), (image, kernel),
      _NO_CONVOLUTIONS)


@functools.cache
def eigen_products_available() -> bool:
  """Whether this jaxlib gives a lone product to YNNPACK by default and to Eigen when compiled
  without YNNPACK's lone products (probed once)."""
  import jax
  import jax.numpy as jnp

  operand = jax.ShapeDtypeStruct((256, 256), jnp.float32)
  return _leaves_ynnpack(lambda a, b: a @ b, (operand, operand), _NO_LONE_PRODUCTS)


def _leaves_ynnpack(fn: Any, operands: tuple[Any, ...], fusion_types: str) -> bool:
  """Whether `fn` compiles to a YNNPACK fusion by default and to none with `fusion_types`."""
  import jax

  try:
    lowered = jax.jit(fn).lower(*operands)
    return (_YNN in lowered.compile().as_text()
            and _YNN not in lowered.compile({_FUSION_TYPES: fusion_types}).as_text())
  except Exception:  # an unknown option or value (INVALID_ARGUMENT), or no CPU backend
    return False


def inference_options(mode: str, backend: str, family: str, width: int
                      ) -> dict[str, Any] | None:
  """`jax.jit`'s `compiler_options` for a forward pass of a model of `family` and hidden size
  `width` (None: XLA's defaults): under `auto`, on an Intel CPU or for the AMD families measured
  faster so, its 2-D products in Eigen instead of YNNPACK, or in oneDNN where
  `uses_onednn_fusions` says so."""
  problem = check_mode(mode)
  if problem:
    raise ValueError(problem)
  if backend != "cpu" or mode == "xla":
    return None
  options: dict[str, Any] = {}
  if mode == "auto" and _eigen_forward(family) and eigen_products_available():
    options[_FUSION_TYPES] = _NO_LONE_PRODUCTS
  if uses_onednn_fusions(mode, backend, family, width):
    options.update(_ONEDNN_FUSIONS)
  return options or None


def _eigen_forward(family: str) -> bool:
  """Whether `auto` gives a forward pass's lone products to Eigen on this CPU: every family's
  on Intel's, `AUTO_AMD_EIGEN_FAMILIES`' on AMD's."""
  vendor = cpu_vendor()
  return vendor == INTEL or (vendor == AMD and family in AUTO_AMD_EIGEN_FAMILIES)


def uses_onednn_fusions(mode: str, backend: str, family: str, width: int) -> bool:
  """Whether a forward pass of a model of `family` and hidden size `width` runs its products in
  oneDNN's fusions: under `onednn` wherever this jaxlib has them, under `auto` where measured
  faster (the module's docstring)."""
  problem = check_mode(mode)
  if problem:
    raise ValueError(problem)
  if backend != "cpu" or mode == "xla":
    return False
  if mode == "auto" and (family not in AUTO_ONEDNN_FUSION_FAMILIES or width > AUTO_MAX_WIDTH
                         or cpu_vendor() != INTEL
                         or jaxlib_release() >= AUTO_ONEDNN_FUSIONS_BEFORE):
    return False
  return onednn_fusions_available()


def jaxlib_release() -> tuple[int, int]:
  """This jaxlib's (major, minor) version."""
  import jaxlib.version

  major, minor = jaxlib.version.__version__.split(".")[:2]
  return int(major), int(minor)


@functools.cache
def onednn_fusions_available() -> bool:
  """Whether this jaxlib hands a lone product to a oneDNN fusion when asked (probed once)."""
  import jax
  import jax.numpy as jnp

  operand = jax.ShapeDtypeStruct((256, 256), jnp.float32)
  try:
    lowered = jax.jit(lambda a, b: a @ b).lower(operand, operand)
    return (_ONEDNN_FUSION not in lowered.compile().as_text()
            and _ONEDNN_FUSION in lowered.compile(_ONEDNN_FUSIONS).as_text())
  except Exception:  # an unknown option or value (INVALID_ARGUMENT), or no CPU backend
    return False
