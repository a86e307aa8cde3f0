"""The same-size model from timm (PyTorch), timed like ours, when torch and timm are installed.

ViT, the ResNet+ViT hybrids, Mixer and TNT have timm counterparts with the same parameter
count (tested where timm is installed); T2T-ViT has none.

Neither is a dependency of vit_jax: without them the comparison is skipped with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# Our preset name -> timm's model of the same architecture and size.
TIMM_NAMES = {
    "ViT-Ti/16": "vit_tiny_patch16_224",
    "ViT-S/16": "vit_small_patch16_224",
    "ViT-B/16": "vit_base_patch16_224",
    "ViT-B/32": "vit_base_patch32_224",
    "ViT-L/16": "vit_large_patch16_224",
    "ViT-L/32": "vit_large_patch32_224",
    "ViT-H/14": "vit_huge_patch14_224",
    "R26+ViT-S/32": "vit_small_r26_s32_224",
    "R50+ViT-B/16": "vit_base_r50_s16_224",
    "Mixer-S/16": "mixer_s16_224",
    "Mixer-B/16": "mixer_b16_224",
    "Mixer-L/16": "mixer_l16_224",
    "TNT-S": "tnt_s_patch16_224",
    "TNT-B": "tnt_b_patch16_224",
}


def unavailable_reason(model: str) -> str | None:
  """Why timm cannot be timed here (None when it can)."""
  if model not in TIMM_NAMES:
    return f"timm has no counterpart registered for {model}"
  try:
    import timm  # noqa: F401
    import torch  # noqa: F401
  except Exception as e:  # ImportError, or torchvision failing to load its operators
    return f"torch/timm not importable ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
  return None


def make_step(model: str, *, mode: str, batch: int, image_size: int, num_classes: int,
              dtype: str) -> Callable[[], None]:
  """One timm step as a closure: AdamW train step (with clipping) or forward pass."""
  import timm
  import torch

  net = timm.create_model(TIMM_NAMES[model], pretrained=False, num_classes=num_classes,
                          img_size=image_size)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  net = net.to(device)
  images = torch.randn(batch, 3, image_size, image_size, device=device)
  labels = torch.randint(0, num_classes, (batch,), device=device)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
  optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.03)
  loss_fn = torch.nn.CrossEntropyLoss()

  def step() -> None:
    if mode == "train":
      optimizer.zero_grad(set_to_none=True)
      with autocast:
        loss = loss_fn(net(images), labels)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
      optimizer.step()
    else:
      with torch.inference_mode(), autocast:
        net(images)
    if device == "cuda":
      torch.cuda.synchronize()

  net.train(mode == "train")
  return step


def timm_clock(model: str, *, mode: str, batch: int, image_size: int, num_classes: int,
               dtype: str) -> tuple[Callable[[], float], dict[str, Any]]:
  """A function that runs one timm step and returns its seconds, and what ran it (versions,
  threads)."""
  import timm
  import torch

  step = make_step(model, mode=mode, batch=batch, image_size=image_size,
                   num_classes=num_classes, dtype=dtype)

  def one_step() -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start

  return one_step, {"threads": torch.get_num_threads(), "version": timm.__version__,
                    "torch": torch.__version__}
