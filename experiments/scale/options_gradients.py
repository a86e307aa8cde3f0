"""How far compiler options move a model's gradients: XLA's defaults and each variant against
float64.

    FUSIONS=xla_cpu_experimental_onednn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT
    python experiments/scale/options_gradients.py --model ViT-S/16 \
        --options xla_cpu_use_onednn=true,$FUSIONS

The parameters are the model's initialisation plus noise (so that the zero-initialised head
passes gradients back), the batch random images and labels. The loss's gradient is compiled
once per variant in float32 and once, as the reference, in float64. Prints, per variant, the
largest difference from float64 and from the defaults, relative to each leaf's largest
reference value (the leaf named) and to the largest gradient of all. The attention keys' bias
gradients, zero in exact arithmetic, are left out.
"""

from __future__ import annotations

import argparse

import jax

jax.config.update("jax_enable_x64", True)  # before any array exists

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from ab_options import parse_options  # noqa: E402

from vit_jax.models import registry  # noqa: E402


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="ViT-Ti/16")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--options", nargs="*", default=[])
  args = p.parse_args()

  section = registry.section(args.model)
  model = registry.build(section, 1000)
  size = section.get("image_size", 224)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(args.batch, size, size, 3)).astype(np.float32)
  labels = rng.integers(0, 1000, args.batch)
  params = jax.jit(lambda: model.init(jax.random.key(0), images[:1])["params"])()
  params = jax.tree.map(
      lambda a: (np.asarray(a) + 0.02 * rng.normal(size=a.shape)).astype(np.float32), params)

  def loss(p, x):
    logits = model.apply({"params": p}, x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

  grad = jax.jit(jax.grad(loss))
  params64 = jax.tree.map(lambda a: a.astype(np.float64), params)
  reference = grad(params64, images.astype(np.float64))
  leaves = jax.tree_util.tree_leaves_with_path(reference)
  assert all(leaf.dtype == np.float64 for _, leaf in leaves), "the reference is not float64"
  overall = max(float(np.abs(leaf).max()) for _, leaf in leaves)
  variants = {"defaults": {}, **{text: parse_options(text) for text in args.options}}
  results = {name: jax.tree.leaves(grad.lower(params, images).compile(options)(params, images))
             for name, options in variants.items()}
  for name, got in results.items():
    for against, want in (("float64", [leaf for _, leaf in leaves]),
                          ("defaults", results["defaults"])):
      if name == "defaults" and against == "defaults":
        continue
      worst, where, of_all = 0.0, "", 0.0
      for (path, ref), a, b in zip(leaves, got, want, strict=True):
        label = jax.tree_util.keystr(path)
        scale = float(np.abs(ref).max())
        if scale == 0 or ("key" in label and "bias" in label):
          continue
        diff = float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())
        if diff / scale > worst:
          worst, where = diff / scale, label
        of_all = max(of_all, diff / overall)
      print(f"{name} vs {against}: {worst:.2e} of a leaf's largest ({where}), "
            f"{of_all:.2e} of the largest gradient")


if __name__ == "__main__":
  main()
