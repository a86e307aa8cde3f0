"""The same-size model from timm (PyTorch), timed like ours, when torch and timm are installed.

ViT, the ResNet+ViT hybrids, Mixer and TNT have timm counterparts with the same parameter
count (tested where timm is installed). T2T-ViT has none: its PyTorch side is the authors' own
`models/t2t_vit.py`, imported from a clone of their repository that the caller names
(`t2t_repo`; github.com/yitu-opensource/T2T-ViT), which itself builds on timm's layers.

Neither is a dependency of vit_jax: without them the comparison is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import io
import pathlib
import sys
import time
import types
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

# Our T2T-ViT presets -> the model functions of the authors' models/t2t_vit.py.
T2T_AUTHORS_NAMES = {
    **{f"T2T-ViT-{n}": f"t2t_vit_{n}" for n in ("7", "10", "12", "14", "19", "24")},
    **{f"T2T-ViT_t-{n}": f"t2t_vit_t_{n}" for n in ("14", "19", "24")},
}
T2T_AUTHORS_REPO = "github.com/yitu-opensource/T2T-ViT"
# The authors' folder is a package named `models`, a name other code may hold: it is imported
# under this name instead, plus a digest of the folder's path.
_T2T_PACKAGE = "_vit_jax_t2t_authors_"


def t2t_repo_problem(repo: str) -> str | None:
  """What is wrong with `repo` as a clone of the T2T-ViT authors' repository (None: nothing)."""
  if not (pathlib.Path(repo) / "models" / "t2t_vit.py").is_file():
    return (f"{repo} has no models/t2t_vit.py; give the root folder of a clone of "
            f"{T2T_AUTHORS_REPO}")
  return None


def reference_name(model: str, t2t_repo: str | None = None) -> str:
  """The PyTorch model a comparison times for our `model`, in words."""
  if model in T2T_AUTHORS_NAMES:
    return f"the T2T-ViT authors' {T2T_AUTHORS_NAMES[model]} ({t2t_repo})"
  return f"timm {TIMM_NAMES[model]}"


def unavailable_reason(model: str, t2t_repo: str | None = None) -> str | None:
  """Why timm (for T2T-ViT: the authors' model in `t2t_repo`) cannot be timed here (None when
  it can)."""
  if model in T2T_AUTHORS_NAMES:
    if not t2t_repo:
      return (f"timm has no T2T-ViT; pass --t2t_repo with a clone of {T2T_AUTHORS_REPO} to "
              f"time the authors' model")
    problem = t2t_repo_problem(t2t_repo)
    if problem:
      return problem
  elif model not in TIMM_NAMES:
    return f"timm has no counterpart registered for {model}"
  try:
    import timm  # noqa: F401
    import torch  # noqa: F401
  except Exception as e:  # ImportError, or torchvision failing to load its operators
    return f"torch/timm not importable ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
  return None


@functools.cache
def authors_t2t(repo: str) -> types.ModuleType:
  """The T2T-ViT authors' `models/t2t_vit.py` from their repository cloned at `repo` (imported
  once; its relative imports resolve within the clone's `models` folder, whose `__init__`,
  which also imports the authors' other variants, is not run)."""
  problem = t2t_repo_problem(repo)
  if problem:
    raise ValueError(problem)
  folder = str((pathlib.Path(repo) / "models").resolve())
  name = _T2T_PACKAGE + hashlib.sha256(folder.encode()).hexdigest()[:16]
  package = types.ModuleType(name)
  package.__path__ = [folder]
  sys.modules[name] = package
  return importlib.import_module(f"{name}.t2t_vit")


def _network(model: str, image_size: int, num_classes: int, t2t_repo: str | None) -> Any:
  if model in T2T_AUTHORS_NAMES:
    build = getattr(authors_t2t(t2t_repo), T2T_AUTHORS_NAMES[model])
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its token module's kind
      return build(pretrained=False, num_classes=num_classes, img_size=image_size)
  import timm

  return timm.create_model(TIMM_NAMES[model], pretrained=False, num_classes=num_classes,
                           img_size=image_size)


def make_step(model: str, *, mode: str, batch: int, image_size: int, num_classes: int,
              dtype: str, t2t_repo: str | None = None) -> Callable[[], None]:
  """One timm step as a closure: AdamW train step (with clipping) or forward pass."""
  import torch

  net = _network(model, image_size, num_classes, t2t_repo)
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
               dtype: str, t2t_repo: str | None = None
               ) -> tuple[Callable[[], float], dict[str, Any]]:
  """A function that runs one timm step and returns its seconds, and what ran it (the model,
  versions, threads)."""
  import timm
  import torch

  step = make_step(model, mode=mode, batch=batch, image_size=image_size,
                   num_classes=num_classes, dtype=dtype, t2t_repo=t2t_repo)

  def one_step() -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start

  return one_step, {"threads": torch.get_num_threads(), "version": timm.__version__,
                    "torch": torch.__version__, "model": reference_name(model, t2t_repo)}
