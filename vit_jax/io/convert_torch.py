"""Converts a PyTorch checkpoint (`.pth`, `.pth.tar`) into a `.safetensors` file `init_from` reads.

    python -m vit_jax.io.convert_torch IN.pth OUT.safetensors [--use_ema] [--overwrite]

The T2T-ViT authors publish their weights as PyTorch pickles; this is the one place such a file
is opened, with `torch.load(weights_only=True)`, which refuses arbitrary objects. It needs
PyTorch, an optional install (`pip install torch`, the CPU build suffices). A checkpoint that is
a dict holding the weights under `state_dict_ema` (with `--use_ema`), `state_dict` or `model` is
unwrapped, and a `module.` prefix (from DataParallel) is dropped. Tensor names are kept: the
loader (`vit_jax.io.pretrained`) maps them, so the file also works with other tools.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_WRAPPERS = ("state_dict", "model")  # where training checkpoints keep the weights


def state_dict(checkpoint: Any, use_ema: bool = False) -> dict[str, Any]:
  """The tensors of a loaded checkpoint, unwrapped from a training checkpoint's dict."""
  if not isinstance(checkpoint, Mapping):
    raise ValueError(f"the file holds a {type(checkpoint).__name__}, not a state dict")
  if use_ema and not isinstance(checkpoint.get("state_dict_ema"), Mapping):
    raise ValueError("--use_ema was given but the file holds no state_dict_ema")
  for key in ("state_dict_ema",) if use_ema else _WRAPPERS:
    if isinstance(checkpoint.get(key), Mapping):
      checkpoint = checkpoint[key]
      break
  tensors = {k: v for k, v in checkpoint.items() if hasattr(v, "detach")}
  if not tensors:
    raise ValueError(f"no tensors found (keys: {', '.join(list(map(str, checkpoint))[:5])})")
  if all(k.startswith("module.") for k in tensors):
    tensors = {k[len("module."):]: v for k, v in tensors.items()}
  return tensors


def to_numpy(tensors: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """float32 (floating tensors) or their own dtype (integer ones), contiguous, on the host."""
  out = {}
  for key, tensor in tensors.items():
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
      tensor = tensor.float()
    out[key] = np.ascontiguousarray(tensor.numpy())
  return out


def convert(src: str, dst: str, *, use_ema: bool = False, overwrite: bool = False) -> int:
  """Writes the tensors of PyTorch checkpoint `src` to `dst`; returns how many."""
  try:
    import torch
  except ImportError:
    raise RuntimeError("converting a PyTorch checkpoint needs PyTorch, an optional install: "
                       "pip install torch (the CPU build suffices)") from None
  from safetensors.numpy import save_file

  if not os.path.isfile(src):
    raise RuntimeError(f"{src} does not exist; give a PyTorch checkpoint (.pth or .pth.tar)")
  if not dst.endswith(".safetensors"):
    raise RuntimeError(f"{dst} does not end in .safetensors; name the output OUT.safetensors")
  if os.path.exists(dst) and not overwrite:
    raise RuntimeError(f"{dst} exists; choose another output or pass --overwrite")
  try:
    checkpoint = torch.load(src, map_location="cpu", weights_only=True)
  except Exception as e:  # unpickling refusals and corrupt files come in many types
    reason = " ".join(str(e).split())[:200]
    raise RuntimeError(f"{src} cannot be read as a PyTorch checkpoint ({reason})") from None
  try:
    arrays = to_numpy(state_dict(checkpoint, use_ema))
  except ValueError as e:
    raise RuntimeError(f"{src}: {e}") from None
  tmp = f"{dst}.tmp"
  save_file(arrays, tmp)
  os.replace(tmp, dst)
  return len(arrays)


def main(argv: Sequence[str] | None = None) -> int:
  """The command line; returns the exit status."""
  parser = argparse.ArgumentParser(prog="python -m vit_jax.io.convert_torch",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("src", help="the PyTorch checkpoint (.pth / .pth.tar)")
  parser.add_argument("dst", help="the .safetensors file to write")
  parser.add_argument("--use_ema", action="store_true",
                      help="take the EMA weights (state_dict_ema) of a training checkpoint")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
  args = parser.parse_args(argv)
  try:
    count = convert(args.src, args.dst, use_ema=args.use_ema, overwrite=args.overwrite)
  except RuntimeError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {count} tensors to {args.dst}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
