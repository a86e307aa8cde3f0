"""TNT against timm's PyTorch TNT (non-legacy): the same names and the same logits.

Needs torch and timm (`pip install -e .[torch]`); skipped without them. On a CPU-only PyTorch,
pin torchvision to the torch release's own version (e.g. `pip install timm torchvision==0.28.0`
for torch 2.13), or pip pulls CUDA builds. Even so, `import timm` may then fail with
"RuntimeError: operator torchvision::nms does not exist": torchvision's compiled ops (`_C.so`)
do not load against the CPU torch, and `torchvision/_meta_registrations.py` registers fake
kernels for two of them at import. Comment out its two decorator lines
`@torch.library.register_fake("torchvision::nms")` and
`@torch.library.register_fake("torchvision::qnms")` (timm uses neither op); this module skips
with that error until then.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from vit_jax.io import pretrained, torch_state
from vit_jax.models import tnt

torch = pytest.importorskip("torch")
try:
  from timm.models import tnt as timm_tnt
except ImportError:
  pytest.skip("timm is not installed", allow_module_level=True)
except RuntimeError as e:  # torchvision's fake-op registrations, see the docstring
  pytest.skip(f"timm cannot be imported: {e}", allow_module_level=True)


def perturbed(model, seed):
  """`model` with noise on every tensor, so that zero biases and unit norms are no special case."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.2)
  return model.eval()


def numpy_state(model):
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def shapes(tree):
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}


def check_against_timm(reference, ours, image_size, batch, seed):
  state = numpy_state(reference)
  params = torch_state.to_flax(torch_state.without_ignored(state, "TNT"))
  images = jnp.zeros((1, image_size, image_size, 3))
  want_shapes = shapes(jax.eval_shape(ours.init, jax.random.key(0), images)["params"])
  assert shapes(params) == want_shapes  # timm's keys are our names under the generic rule
  x = np.random.default_rng(seed).uniform(-1, 1, (batch, image_size, image_size, 3))
  x = x.astype(np.float32)
  with torch.no_grad():
    want = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  got = np.asarray(jax.jit(ours.apply)({"params": params}, x))
  assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
  assert np.abs(want).max() > 0.1  # a head that discriminates, not one near zero


def small_pair():
  """timm's TNT and ours for 28x28 images: 4x4 patches of 7x7 pixels, 4x4 inner tokens each."""
  reference = timm_tnt.TNT(img_size=28, patch_size=7, in_chans=3, num_classes=10, embed_dim=32,
                           inner_dim=8, depth=1, num_heads_inner=2, num_heads_outer=4,
                           first_stride=2)
  ours = tnt.TNT(num_classes=10, patch_size=7, inner_dim=8, hidden_size=32, num_layers=1,
                 inner_heads=2, num_heads=4, inner_mlp_dim=32, mlp_dim=128, inner_stride=2)
  return reference, ours


def test_a_small_custom_tnt_computes_timms_logits():
  reference, ours = small_pair()
  check_against_timm(perturbed(reference, 0), ours, 28, 3, 1)
  # The defaults are timm's: every LayerNorm's epsilon, the erf GELU of every MLP.
  norms = [m for m in reference.modules() if isinstance(m, torch.nn.LayerNorm)]
  assert len(norms) == 9 and {m.eps for m in norms} == {tnt.DEFAULTS["layernorm_epsilon"]}
  gelus = [m for m in reference.modules() if isinstance(m, torch.nn.GELU)]
  assert len(gelus) == 2 and {m.approximate for m in gelus} == {"none"}
  assert tnt.DEFAULTS["gelu"] == "exact"


def test_the_authors_unused_outer_tokens_is_the_only_tensor_left_out():
  reference, ours = small_pair()
  state = numpy_state(reference) | {"outer_tokens": np.zeros((1, 16, 32), np.float32)}
  names = jax.eval_shape(ours.init, jax.random.key(0), jnp.zeros((1, 28, 28, 3)))["params"]
  torch_names = set(torch_state.from_flax(jax.tree.map(lambda s: np.zeros(s.shape), names)))
  assert set(state) - torch_names == {"outer_tokens"} and torch_names <= set(state)


def test_a_file_in_the_authors_names_loads_to_timms_logits(tmp_path):
  """timm's weights renamed as the TNT authors' module names them (inner_pos (1, h*w, c)) and
  saved as .safetensors: init_from's loader gives back timm's function."""
  from safetensors.numpy import save_file

  reference, ours = small_pair()
  reference = perturbed(reference, 4)
  authors = {new: old for old, new in torch_state.TNT_AUTHOR_NAMES.items()}
  state = {}
  for key, value in numpy_state(reference).items():
    if key == "pixel_pos":  # (1, c, h, w) -> (1, h*w, c)
      key, value = "inner_pos", value.reshape(1, value.shape[1], -1).transpose(0, 2, 1)
    state[".".join(authors.get(part, part) for part in key.split("."))] = value
  assert {"patch_embed.proj.weight", "outer_pos", "blocks.0.inner_attn.qk.weight",
          "blocks.0.outer_mlp.fc2.bias", "proj_norm1.weight"} <= set(state)
  state["outer_tokens"] = np.zeros((1, 16, 32), np.float32)
  path = str(tmp_path / "tnt_authors.safetensors")
  save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, path)
  loaded = pretrained.load(path)
  assert loaded.grid == (4, 4)
  x = np.random.default_rng(5).uniform(-1, 1, (2, 28, 28, 3)).astype(np.float32)
  with torch.no_grad():
    want = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  got = np.asarray(jax.jit(ours.apply)({"params": loaded.params}, x))
  assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.slow
def test_tnt_s_computes_timms_logits():
  reference = perturbed(timm_tnt.tnt_s_patch16_224(pretrained=False), 2)
  model = {"name": "TNT-S", **tnt.PRESETS["TNT-S"], **tnt.DEFAULTS}
  check_against_timm(reference, tnt.build(model, 1000), 224, 2, 3)
