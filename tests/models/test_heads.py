import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models.heads import MAPHead
from vit_jax.models.vit import VisionTransformer


def test_map_head_pools_tokens_in_any_order():
  x = jax.random.normal(jax.random.key(0), (3, 7, 16))
  head = MAPHead(num_heads=2, mlp_dim=32)
  params = head.init(jax.random.key(1), x)
  out = head.apply(params, x)
  assert out.shape == (3, 16)
  perm = np.random.default_rng(0).permutation(7)
  np.testing.assert_allclose(head.apply(params, x[:, perm]), out, atol=1e-5)
  assert set(params["params"]) == {"probe", "MultiHeadDotProductAttention_0", "LayerNorm_0",
                                   "MlpBlock_0"}


@pytest.mark.slow
def test_map_pooling_model_has_no_class_token_and_its_own_head():
  model = VisionTransformer(num_classes=4, patch_size=4, hidden_size=16, num_layers=1,
                            num_heads=2, mlp_dim=32, pool="map")
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 12, 1)))["params"]
  assert "cls" not in params and "MAPHead_0" in params
  assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 6, 16)
  assert model.apply({"params": params}, jnp.ones((2, 8, 12, 1))).shape == (2, 4)
