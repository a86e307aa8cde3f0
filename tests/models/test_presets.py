import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models.presets import PRESETS, get_preset
from vit_jax.models.vit import VisionTransformer

# The paper's models at 224x224, 1000 classes, class token, no pre-logits.
EXPECTED = {
    "ViT-Ti/16": 5_717_416,
    "ViT-S/16": 22_050_664,
    "ViT-S/32": 22_878_952,
    "ViT-B/16": 86_567_656,
    "ViT-B/32": 88_224_232,
    "ViT-B/8": 86_576_872,
    "ViT-L/16": 304_326_632,
    "ViT-L/32": 306_535_400,
    "ViT-H/14": 632_045_800,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_count_matches_paper(name):
  model = VisionTransformer(num_classes=1000, **get_preset(name)._asdict())
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
  assert count == EXPECTED[name]


def test_every_preset_is_checked():
  assert set(PRESETS) == set(EXPECTED)


def test_unknown_preset_names_the_choices():
  with pytest.raises(ValueError, match="ViT-B/16"):
    get_preset("ViT-X/3")
