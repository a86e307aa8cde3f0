"""timm's VisionTransformer state dict (its `.safetensors` files), converted to our parameter names.

timm (huggingface/pytorch-image-models, `timm/models/vision_transformer.py`) reads the original
`.npz` format in `_load_weights`; this module inverts that correspondence:

  patch_embed.proj.weight|bias (D, C, p, p)  embedding/kernel (p, p, C, D) | bias
  cls_token (1, 1, D)                        cls
  pos_embed (1, T, D)                        Transformer/posembed_input/pos_embedding
  blocks.{i}.norm1|norm2                     Transformer/encoderblock_{i}/LayerNorm_0|LayerNorm_2
  blocks.{i}.attn.qkv (3D, D) + (3D,)        .../MultiHeadDotProductAttention_1/query|key|value
  blocks.{i}.attn.proj                       .../MultiHeadDotProductAttention_1/out
  blocks.{i}.mlp.fc1|fc2                     .../MlpBlock_3/Dense_0|Dense_1
  norm                                       Transformer/encoder_norm
  pre_logits.fc (old in21k files)            pre_logits
  head (absent or 0 rows when headless)      head

A Linear weight (out, in) is a kernel (in, out), a LayerNorm `weight` a `scale`. The fused qkv
rows are q, k, v, each heads-major (row h * D/H + j), so the kernels are (D, H, D/H) and `out` is
(H, D/H, D). The file does not record the head count (qkv is (3D, D) for any), so `to_original`
takes the count of our preset of that width and `split_heads` re-splits for the model at hand.
A `pos_embed` without a class-token row (timm's `no_embed_class`) gets a zero row: our table
covers the class token. Nor is the pooling recorded: a file with `cls_token` is for `pool=token`,
one without for `pool=gap` (timm's `global_pool='avg'` with `fc_norm=False`). timm's GELU is the
exact (erf) one and its LayerNorm epsilon 1e-6, so such a model runs with `model.gelu=exact`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

from vit_jax.io.runs import error_reason
from vit_jax.models.vit import PRESETS

GELU = "exact"  # timm's nn.GELU
# Block part: timm's name -> ours (qkv is split into query, key and value).
BLOCK = {
    "norm1.weight": "LayerNorm_0/scale", "norm1.bias": "LayerNorm_0/bias",
    "attn.qkv.weight": None, "attn.qkv.bias": None,
    "attn.proj.weight": "MultiHeadDotProductAttention_1/out/kernel",
    "attn.proj.bias": "MultiHeadDotProductAttention_1/out/bias",
    "norm2.weight": "LayerNorm_2/scale", "norm2.bias": "LayerNorm_2/bias",
    "mlp.fc1.weight": "MlpBlock_3/Dense_0/kernel", "mlp.fc1.bias": "MlpBlock_3/Dense_0/bias",
    "mlp.fc2.weight": "MlpBlock_3/Dense_1/kernel", "mlp.fc2.bias": "MlpBlock_3/Dense_1/bias",
}
REQUIRED = ("patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias")
OPTIONAL = ("cls_token", "pos_embed", "pre_logits.fc.weight", "pre_logits.fc.bias",
            "head.weight", "head.bias")
# timm options with no counterpart here, recognised by a part of their tensors' names.
UNSUPPORTED = {"fc_norm.": "a LayerNorm after pooling (fc_norm)", "reg_token": "register tokens",
               ".ls1.": "layer scale", "attn_pool.": "attention pooling",
               "norm_pre.": "a LayerNorm before the blocks", ".q_norm.": "query-key norms"}
_ATTENTION = "MultiHeadDotProductAttention_1"
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")
_SHOWN = 4


def read(path: str) -> dict[str, np.ndarray]:
  """The tensors of a `.safetensors` file; ValueError with the reader's reason when it is none."""
  try:
    return safetensors.numpy.load_file(path)
  except (safetensors.SafetensorError, TypeError) as e:  # TypeError: a dtype NumPy lacks
    raise ValueError(error_reason(e)) from None


def default_heads(width: int) -> int:
  """Our preset's head count for this width (else heads of 64, else 1), until `split_heads`."""
  heads = {p["hidden_size"]: p["num_heads"] for p in PRESETS.values()}
  return heads.get(width) or (width // 64 if width % 64 == 0 else 1)


def _natural(key: str) -> tuple:
  return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in key.split("."))


def _names(keys: Iterable[str]) -> str:
  keys = list(keys)
  more = f" (and {len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
  return ", ".join(keys[:_SHOWN]) + more


def _check_keys(state: Mapping[str, np.ndarray]) -> int:
  """The number of blocks; ValueError naming the missing and unexpected keys when they differ."""
  depth = 1 + max((int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))), default=0)
  expected = [REQUIRED[0], REQUIRED[1], *(f"blocks.{i}.{part}" for i in range(depth)
                                          for part in BLOCK), *REQUIRED[2:]]
  for pair in (("pre_logits.fc.weight", "pre_logits.fc.bias"), ("head.weight", "head.bias")):
    if any(k in state for k in pair):  # both or neither
      expected += pair
  missing = [k for k in expected if k not in state]
  unexpected = sorted(set(state) - set(expected) - set(OPTIONAL), key=_natural)
  if not missing and not unexpected:
    return depth
  found = [text for part, text in UNSUPPORTED.items() if any(part in k for k in unexpected)]
  hint = f" ({', '.join(found)}: not part of this ViT)" if found else ""
  problems = [f"missing {_names(missing)}" if missing else "",
              f"unexpected {_names(unexpected)}{hint}" if unexpected else ""]
  raise ValueError(f"not a timm VisionTransformer state dict this ViT can hold: "
                   f"{'; '.join(p for p in problems if p)}")


def _check_shapes(state: Mapping[str, np.ndarray], depth: int) -> None:
  """Raises ValueError naming the tensors whose shapes disagree with the patch convolution's."""
  conv = state["patch_embed.proj.weight"].shape
  if len(conv) != 4 or conv[2] != conv[3] or 0 in conv:
    raise ValueError(f"patch_embed.proj.weight has shape {conv}; a (D, C, p, p) convolution with "
                     "square patches is expected")

  def size(key: str) -> int:  # the leading size of an optional tensor, -1 when it has none
    shape = state[key].shape if key in state else ()
    return shape[0] if shape else -1

  d, m = conv[0], size("blocks.0.mlp.fc1.weight")
  k, r = size("head.bias"), size("pre_logits.fc.bias")
  want = {"patch_embed.proj.bias": (d,), "cls_token": (1, 1, d), "norm.weight": (d,),
          "norm.bias": (d,), "pre_logits.fc.weight": (r, d), "pre_logits.fc.bias": (r,),
          "head.weight": (k, r if r > 0 else d), "head.bias": (k,)}
  block = {"norm1.weight": (d,), "norm1.bias": (d,), "attn.qkv.weight": (3 * d, d),
           "attn.qkv.bias": (3 * d,), "attn.proj.weight": (d, d), "attn.proj.bias": (d,),
           "norm2.weight": (d,), "norm2.bias": (d,), "mlp.fc1.weight": (m, d),
           "mlp.fc1.bias": (m,), "mlp.fc2.weight": (d, m), "mlp.fc2.bias": (d,)}
  want.update({f"blocks.{i}.{part}": shape for i in range(depth) for part, shape in block.items()})
  wrong = [f"{key} {state[key].shape} (expected {shape})" for key, shape in want.items()
           if key in state and state[key].shape != shape]
  pos = state.get("pos_embed")
  if pos is not None and (pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != d
                          or pos.shape[1] < 1):
    wrong.insert(0, f"pos_embed {pos.shape} (expected (1, tokens, {d}))")
  if wrong:
    raise ValueError(f"its shapes disagree with width {d} of patch_embed.proj.weight {conv}: "
                     f"{_names(wrong)}")


def to_original(state: Mapping[str, np.ndarray], num_heads: int | None = None
                ) -> dict[str, np.ndarray]:
  """timm's state dict -> our '/'-joined float32 parameters, attention split into `num_heads`.

  `num_heads` defaults to `default_heads` of the width. Raises ValueError (one line) naming
  missing, unexpected or misshapen tensors.
  """
  depth = _check_keys(state)
  _check_shapes(state, depth)
  for key, value in state.items():
    if not value.dtype.name.startswith(("float", "bfloat")):  # bfloat16 is ml_dtypes' type
      raise ValueError(f"tensor {key} has dtype {value.dtype}, where floating point is expected")
  t = {k: np.asarray(v).astype(np.float32) for k, v in state.items()}
  d = t["patch_embed.proj.weight"].shape[0]
  heads = num_heads or default_heads(d)
  if d % heads:
    raise ValueError(f"width {d} does not split into {heads} heads")
  out = {"embedding/kernel": t["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
         "embedding/bias": t["patch_embed.proj.bias"],
         "Transformer/encoder_norm/scale": t["norm.weight"],
         "Transformer/encoder_norm/bias": t["norm.bias"]}
  if "cls_token" in t:
    out["cls"] = t["cls_token"]
  if "pos_embed" in t:
    table = t["pos_embed"]
    rows = table.shape[1]
    if "cls_token" in t and math.isqrt(rows) ** 2 == rows:  # no class-token row: N + 1 is no square
      table = np.concatenate([np.zeros_like(table[:, :1]), table], axis=1)
    out["Transformer/posembed_input/pos_embedding"] = table
  if "pre_logits.fc.weight" in t:
    out["pre_logits/kernel"] = t["pre_logits.fc.weight"].T
    out["pre_logits/bias"] = t["pre_logits.fc.bias"]
  if "head.weight" in t and t["head.weight"].shape[0]:
    out["head/kernel"] = t["head.weight"].T
    out["head/bias"] = t["head.bias"]
  for i in range(depth):
    ours, theirs = f"Transformer/encoderblock_{i}", f"blocks.{i}"
    for part, name in BLOCK.items():
      if name is not None:
        value = t[f"{theirs}.{part}"]
        out[f"{ours}/{name}"] = value.T if name.endswith("kernel") else value
    qkv_w, qkv_b = t[f"{theirs}.attn.qkv.weight"], t[f"{theirs}.attn.qkv.bias"]
    for j, name in enumerate(("query", "key", "value")):
      out[f"{ours}/{_ATTENTION}/{name}/kernel"] = qkv_w[j * d:(j + 1) * d].T.reshape(d, heads, -1)
      out[f"{ours}/{_ATTENTION}/{name}/bias"] = qkv_b[j * d:(j + 1) * d].reshape(heads, -1)
    out[f"{ours}/{_ATTENTION}/out/kernel"] = out[f"{ours}/{_ATTENTION}/out/kernel"].reshape(
        heads, -1, d)
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def split_heads(params: Mapping[str, Any], num_heads: int) -> dict[str, Any]:
  """Nested parameters whose encoder blocks' attention is re-split into `num_heads` heads.

  Valid for parameters from `to_original` only: its heads-major layout makes this a reshape.
  Raises ValueError when the attention width does not split into `num_heads`.
  """
  params = dict(params)
  transformer = dict(params.get("Transformer", {}))
  for name, block in transformer.items():
    if not name.startswith("encoderblock_") or _ATTENTION not in block:
      continue
    width = int(np.prod(np.shape(block[_ATTENTION]["query"]["bias"])))
    if width % num_heads:
      raise ValueError(f"the attention width {width} of the timm file does not split into "
                       f"{num_heads} heads")
    attention = {}
    for part, leaves in block[_ATTENTION].items():
      if part == "out":
        kernel = np.reshape(leaves["kernel"], (num_heads, -1, leaves["kernel"].shape[-1]))
        attention[part] = {"kernel": kernel, "bias": leaves["bias"]}
      else:
        kernel = np.reshape(leaves["kernel"], (leaves["kernel"].shape[0], num_heads, -1))
        attention[part] = {"kernel": kernel, "bias": np.reshape(leaves["bias"], (num_heads, -1))}
    transformer[name] = {**block, _ATTENTION: attention}
  params["Transformer"] = transformer
  return params
