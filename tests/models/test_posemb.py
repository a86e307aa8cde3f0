import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import attention, posemb
from vit_jax.models.vit import VisionTransformer

D, L, HEADS, P = 32, 3, 4, 4
GH, GW = 2, 3  # an 8x12 image in 4x4 patches: non-square on purpose
SIZE = dict(num_classes=5, patch_size=P, hidden_size=D, num_layers=L, num_heads=HEADS,
            mlp_dim=64)
VALID = [(k, m) for k in posemb.KINDS for m in posemb.applicable_modes(k)]


def params_of(pool="token", **kw):
  model = VisionTransformer(**SIZE, pool=pool, **kw)
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 12, 1)))["params"]


def count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def expected_table_params(kind, mode, pool):
  """Position parameters by the definitions: per table, times the number of tables."""
  n = GH * GW + (pool == "token")
  hd = D // HEADS
  per_table = {"none": 0, "learn1d": n * D, "learn2d": (GH + GW) * D // 2, "sincos1d": 0,
               "sincos2d": 0}
  if kind == "relative":
    return L * ((2 * GH - 1) * (2 * GW - 1) * hd + (3 * hd if pool == "token" else 0))
  tables = L if mode == "every_layer" else 1
  return tables * per_table[kind]


@pytest.mark.parametrize("pool", ["token", "gap"])
@pytest.mark.parametrize("kind,mode", VALID)
def test_parameter_count_of_each_kind_and_mode(kind, mode, pool):
  base = count(params_of(pool, posemb="none"))
  params = params_of(pool, posemb=kind, posemb_mode=mode)
  assert count(params) - base == expected_table_params(kind, mode, pool)
  names = set(params["Transformer"])
  tables = {n for n in names if n.startswith("posembed")}
  if kind in posemb.LEARNED:
    want = {"posembed_input"} | ({f"posembed_layer_{i}" for i in range(1, L)}
                                 if mode == "every_layer" else set())
    assert tables == want
  else:
    assert tables == set()  # fixed kinds and relative have no additive table parameters
  if kind == "learn2d":
    assert params["Transformer"]["posembed_input"]["row_embedding"].shape == (GH, D // 2)
    assert params["Transformer"]["posembed_input"]["col_embedding"].shape == (GW, D // 2)
  if kind == "relative":
    block = params["Transformer"]["encoderblock_0"]["relative_posemb"]
    assert block["rel_embedding"].shape == (2 * GH - 1, 2 * GW - 1, D // HEADS)


def permute_patches(images, perm):
  b, h, w, c = images.shape
  gh, gw = h // P, w // P
  patches = images.reshape(b, gh, P, gw, P, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, P, P, c)
  patches = patches[:, perm].reshape(b, gh, gw, P, P, c)
  return patches.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


@pytest.mark.parametrize("kind,mode", VALID)
def test_only_no_position_embedding_is_blind_to_patch_order(kind, mode):
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 8, 12, 1)).astype(np.float32)
  shuffled = permute_patches(images, rng.permutation(GH * GW))
  model = VisionTransformer(**SIZE, posemb=kind, posemb_mode=mode, pool="gap")
  params = model.init(jax.random.key(0), images)["params"]
  # The head is zero-initialised; random values make every parameter matter. Drawn in NumPy:
  # JAX compiles its draws for every shape.
  params = jax.tree.map(lambda x: x + 0.2 * rng.standard_normal(x.shape, np.float32), params)
  diff = float(jnp.abs(model.apply({"params": params}, images)
                       - model.apply({"params": params}, shuffled)).max())
  if kind == "none":
    assert diff < 1e-5
  else:
    assert diff > 1e-3


def test_sincos2d_equals_the_formula():
  table = posemb.sincos2d_table((GH, GW), 16)
  quarter = 4
  for index in range(GH * GW):
    i, j = divmod(index, GW)  # raster order
    for k in range(quarter):
      w = 10000.0 ** (-k / quarter)
      got = table[index]
      assert got[k] == pytest.approx(math.sin(i * w), abs=1e-6)
      assert got[quarter + k] == pytest.approx(math.cos(i * w), abs=1e-6)
      assert got[2 * quarter + k] == pytest.approx(math.sin(j * w), abs=1e-6)
      assert got[3 * quarter + k] == pytest.approx(math.cos(j * w), abs=1e-6)


def test_sincos1d_equals_the_formula():
  table = posemb.sincos1d_table(7, 8)
  for pos in range(7):
    for k in range(4):
      w = 10000.0 ** (-k / 4)
      assert table[pos, k] == pytest.approx(math.sin(pos * w), abs=1e-6)
      assert table[pos, 4 + k] == pytest.approx(math.cos(pos * w), abs=1e-6)


@pytest.mark.parametrize("kind", ["learn2d", "sincos1d", "sincos2d"])
def test_class_token_gets_no_embedding_and_patches_get_the_table(kind):
  layer = posemb.AddPositionEmbedding(kind, (GH, GW), num_prefix=1)
  x = jnp.ones((2, 1 + GH * GW, 16))
  params = layer.init(jax.random.key(0), x)
  y = layer.apply(params, x)
  np.testing.assert_array_equal(y[:, 0], x[:, 0])
  table = posemb.patch_table(kind, params.get("params", {}), (GH, GW), 16)
  np.testing.assert_allclose(y[0, 1:], 1.0 + table, atol=1e-6)
  if kind == "learn2d":
    row, col = params["params"]["row_embedding"], params["params"]["col_embedding"]
    np.testing.assert_array_equal(table[1 * GW + 2], np.concatenate([row[1], col[2]]))


def test_relative_bias_depends_only_on_the_offset():
  layer = posemb.RelativeEmbedding((GH, GW), head_dim=8, num_prefix=1)
  params = layer.init(jax.random.key(0))
  table = np.asarray(layer.apply(params))
  assert table.shape == (1 + GH * GW, 1 + GH * GW, 8)
  by_offset = {}
  for a in range(GH * GW):
    for b in range(GH * GW):
      offset = (a // GW - b // GW, a % GW - b % GW)
      by_offset.setdefault(offset, []).append(table[1 + a, 1 + b])
  assert len(by_offset) == (2 * GH - 1) * (2 * GW - 1)
  firsts = [vectors[0] for vectors in by_offset.values()]
  for vectors in by_offset.values():
    for v in vectors:
      np.testing.assert_array_equal(v, vectors[0])
  assert len({tuple(v) for v in firsts}) == len(firsts)  # distinct offsets, distinct vectors
  # The class token has its own three vectors, none of them a patch offset's.
  cls = {tuple(table[0, 1]), tuple(table[1, 0]), tuple(table[0, 0])}
  assert len(cls) == 3 and not cls & {tuple(v) for v in firsts}
  assert all(tuple(table[0, 1 + b]) == tuple(table[0, 1]) for b in range(GH * GW))


@pytest.mark.parametrize("implementation", ["plain", "xla"])
def test_relative_attention_adds_q_dot_r_to_the_logits(implementation):
  rng = np.random.default_rng(0)
  t, h, d = 4, 2, 8
  q, k, v = (rng.normal(size=(1, t, h, d)).astype(np.float32) for _ in range(3))
  r = rng.normal(size=(t, t, d)).astype(np.float32)
  fn = attention.attention_fn(implementation, jnp.float32, posemb.relative_bias(jnp.asarray(r)))
  out = fn(q, k, v, deterministic=True)
  logits = (np.einsum("bqhd,bkhd->bhqk", q, k) + np.einsum("bqhd,qkd->bhqk", q, r)) / np.sqrt(d)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  np.testing.assert_allclose(out, np.einsum("bhqk,bkhd->bqhd", weights, v), atol=1e-5)


@pytest.mark.parametrize("kind,mode,width,message", [
    ("learn3d", "stem", 32, "unknown position embedding 'learn3d'"),
    ("learn1d", "sometimes", 32, "unknown position-embedding mode 'sometimes'"),
    ("sincos2d", "stem", 30, "needs a hidden_size divisible by 4, got 30"),
    ("learn2d", "stem", 33, "needs a hidden_size divisible by 2, got 33"),
    ("none", "every_layer", 32, "does not apply to posemb 'none'"),
    ("relative", "every_layer_shared", 32, "does not apply to posemb 'relative'"),
    ("sincos1d", "every_layer_shared", 32, "does not apply to posemb 'sincos1d'"),
])
def test_bad_combinations_are_named(kind, mode, width, message):
  problem = posemb.check(kind, mode, width)
  assert problem is not None and message in problem
  model = VisionTransformer(**{**SIZE, "hidden_size": width, "num_heads": 1}, posemb=kind,
                            posemb_mode=mode)
  with pytest.raises(ValueError, match=message.split("'")[0]):
    model.init(jax.random.key(0), jnp.zeros((1, 8, 12, 1)))
