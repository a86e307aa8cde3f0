"""`python -m vit_jax.models [NAME] [--image_size S] [--num_classes K] [--json]`.

Lists every registered preset, one row each: its family, the exact parameter count (from the
shapes, at the family's preset resolution with 1000 classes unless given) and the forward pass's
GFLOPs per image (matmuls, 2 FLOPs per multiply-add). With NAME, just that model.
"""

from __future__ import annotations

import argparse
import json
import sys

from vit_jax.models import registry


def _positive(text: str) -> int:
  value = int(text)
  if value <= 0:
    raise argparse.ArgumentTypeError(f"must be positive, got {value}")
  return value


def describe(name: str, image_size: int | None = None, num_classes: int = 1000) -> dict:
  """One row: name, family, image size, classes, parameters and forward GFLOPs per image."""
  family = registry.family_of(name)
  if name not in family.presets:
    raise registry.ModelNameError(f"{name} has no preset sizes; name a preset such as "
                                  f"{next(iter(family.presets))}")
  size = image_size or family.image_size
  model = registry.section(name)
  problems = family.check({"image_size": size, **{f"model.{k}": v for k, v in model.items()}},
                          "cpu")
  if problems:
    raise ValueError(problems[0].replace("image_size", "--image_size", 1))
  flops = registry.forward_flops(model, num_classes, size)
  return {"name": name, "family": family.name, "image_size": size, "num_classes": num_classes,
          "params": registry.param_count(model, num_classes, size),
          "gflops": round(flops / 1e9, 2)}


def table(rows: list[dict]) -> str:
  """Rows as an aligned text table, parameters with thousands separators."""
  header = ("name", "family", "image", "classes", "params", "GFLOPs")
  body = [(r["name"], r["family"], str(r["image_size"]), str(r["num_classes"]),
           f"{r['params']:,}", f"{r['gflops']:.2f}") for r in rows]
  widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
  lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                     for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
           for row in [header, *body]]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vit_jax.models",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("name", nargs="?", help="one preset, e.g. ViT-B/16 (default: all)")
  parser.add_argument("--image_size", type=_positive, default=None,
                      help="resolution (default: the family's preset resolution)")
  parser.add_argument("--num_classes", type=_positive, default=1000)
  parser.add_argument("--json", action="store_true", help="one JSON object per line")
  args = parser.parse_args(argv)
  names = [args.name] if args.name else list(registry.PRESETS)
  try:
    rows = [describe(name, args.image_size, args.num_classes) for name in names]
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print("\n".join(json.dumps(row) for row in rows) if args.json else table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
