"""The position-embedding ablation on T2T-ViT and TNT: each kind and mode adds exactly its
tables, in the right place (equivalences between kinds), and the relative bias of their
attention against NumPy. The reference layouts stay the defaults."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from vit_jax.io import posemb_resize
from vit_jax.models import posemb, t2t, tnt

# 16x16 images and a 4x4 token grid in both families; widths divisible by 4 for sincos2d.
T2T = dict(num_classes=5, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32, token_dim=8,
           t2t_strides=(2, 2, 1))
TNT = dict(num_classes=5, patch_size=4, inner_dim=8, hidden_size=16, num_layers=2, inner_heads=2,
           num_heads=2, inner_mlp_dim=16, mlp_dim=32, inner_stride=2)
FAMILIES = {"t2t": (t2t.T2TViT, T2T, "attn"), "tnt": (tnt.TNT, TNT, "attn_out")}
GRID, TOKENS, WIDTH, HEAD = (4, 4), 17, 16, 8
CELLS = [(kind, mode) for kind in posemb.KINDS for mode in posemb.applicable_modes(kind)]
IMAGES = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3)), jnp.uint8)


def model(family, **overrides):
  cls, sizes, _ = FAMILIES[family]
  return cls(**{**sizes, **overrides})


def random_params(module, seed=0):
  """Every parameter drawn N(0, 0.5^2) (scales 1 + that), so that each table matters."""
  params = jax.eval_shape(module.init, jax.random.key(0), IMAGES)["params"]
  flat = traverse_util.flatten_dict(params, sep="/")
  rng = np.random.default_rng(seed)
  out = {path: (1.0 if path.endswith("scale") else 0.0) + rng.normal(0, 0.5, leaf.shape)
         for path, leaf in flat.items()}
  return traverse_util.unflatten_dict({k: jnp.asarray(v, jnp.float32) for k, v in out.items()},
                                      sep="/")


def logits(module, params):
  return np.asarray(module.apply({"params": params}, IMAGES))


def position_params(params):
  """{path: shape} of every position-embedding parameter (TNT's inner `pixel_pos` excluded)."""
  flat = traverse_util.flatten_dict(params, sep="/")
  return {path: tuple(leaf.shape) for path, leaf in flat.items()
          if path.split("/")[0] in ("pos_embed", "patch_pos") or "posembed_" in path
          or "relative_posemb" in path}


def expected(family, kind, mode):
  """The position-embedding parameters a (kind, mode) should add, written out by hand."""
  layers = ["posembed_input"] + (["posembed_layer_1"] if mode == "every_layer" else [])
  if kind == "learn1d":
    out = {f"{name}/pos_embedding": (1, TOKENS, WIDTH) for name in layers}
    if family == "tnt":  # the reference's own name for the stem's learn1d table
      del out["posembed_input/pos_embedding"]
      out["patch_pos"] = (1, TOKENS, WIDTH)
    return out
  if kind == "learn2d":
    return {f"{name}/{axis}_embedding": (4, WIDTH // 2) for name in layers
            for axis in ("row", "col")}
  if kind == "relative":
    attn = FAMILIES[family][2]
    return {f"blocks_{i}/{attn}/relative_posemb/{name}": shape for i in range(2)
            for name, shape in (("rel_embedding", (7, 7, HEAD)), ("cls_embedding", (3, HEAD)))}
  return {}  # none and the fixed kinds hold no parameters


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind,mode", CELLS)
def test_every_kind_and_mode_adds_exactly_its_tables(family, kind, mode):
  module = model(family, posemb=kind, posemb_mode=mode)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), IMAGES))["params"]
  assert position_params(shapes) == expected(family, kind, mode)


def test_the_defaults_are_the_reference_tables():
  assert t2t.DEFAULTS["posemb"] == "sinusoid" and tnt.DEFAULTS["posemb"] == "learn1d"
  for family, own in (("t2t", {"pos_embed": (1, TOKENS, WIDTH)}),
                      ("tnt", {"patch_pos": (1, TOKENS, WIDTH)})):
    module = model(family)
    shapes = jax.eval_shape(lambda m=module: m.init(jax.random.key(0), IMAGES))["params"]
    assert position_params(shapes) == own


@pytest.mark.parametrize("family", FAMILIES)
def test_a_learned_table_holding_the_fixed_table_computes_the_same_function(family):
  """sincos2d in every layer == learn1d in every layer whose tables are the sincos2d table
  with a zero class-token row; and T2T's own sinusoid == learn1d holding that table."""
  fixed = model(family, posemb="sincos2d", posemb_mode="every_layer")
  learned = model(family, posemb="learn1d", posemb_mode="every_layer")
  params = random_params(learned)
  table = np.concatenate([np.zeros((1, WIDTH)), posemb.sincos2d_table(GRID, WIDTH)])[None]
  flat = traverse_util.flatten_dict(params, sep="/")
  for path in expected(family, "learn1d", "every_layer"):
    flat[path] = jnp.asarray(table, jnp.float32)
  params = traverse_util.unflatten_dict(flat, sep="/")
  fixed_params = {k: v for k, v in params.items()
                  if k not in ("patch_pos", "posembed_input", "posembed_layer_1")}
  np.testing.assert_allclose(logits(learned, params), logits(fixed, fixed_params), rtol=1e-5,
                             atol=1e-5)
  if family == "t2t":
    own = model("t2t")
    own_params = {k: v for k, v in params.items() if not k.startswith("posembed_")}
    own_params["pos_embed"] = jnp.asarray(t2t.sinusoid_table(TOKENS, WIDTH), jnp.float32)
    stem = model("t2t", posemb="learn1d")
    stem_params = {k: v for k, v in own_params.items() if k != "pos_embed"}
    stem_params["posembed_input"] = {"pos_embedding": own_params["pos_embed"]}
    np.testing.assert_allclose(logits(stem, stem_params), logits(own, own_params), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_mode_is_every_layer_with_equal_tables_and_none_is_a_zero_table(family):
  every = model(family, posemb="learn2d", posemb_mode="every_layer")
  shared = model(family, posemb="learn2d", posemb_mode="every_layer_shared")
  params = random_params(every)
  params["posembed_layer_1"] = params["posembed_input"]
  shared_params = {k: v for k, v in params.items() if k != "posembed_layer_1"}
  np.testing.assert_allclose(logits(shared, shared_params), logits(every, params), rtol=1e-5,
                             atol=1e-5)
  # Stem only: different from adding the table before block 1 too.
  stem = model(family, posemb="learn2d")
  assert np.abs(logits(stem, shared_params) - logits(shared, shared_params)).max() > 1e-3

  learned = model(family, posemb="learn1d")
  params = random_params(learned)
  name = "patch_pos" if family == "tnt" else "posembed_input"
  none = model(family, posemb="none")
  none_params = {k: v for k, v in params.items() if k != name}
  assert np.abs(logits(learned, params) - logits(none, none_params)).max() > 1e-3
  params[name] = jax.tree.map(jnp.zeros_like, params[name])
  np.testing.assert_allclose(logits(learned, params), logits(none, none_params), rtol=1e-5,
                             atol=1e-6)


def np_relative_table(rel, cls):
  """(T, T, d): the table each (query, key) pair of [class token, 4x4 patches] adds, by hand."""
  tokens = [None] + [(i, j) for i in range(4) for j in range(4)]
  out = np.zeros((len(tokens), len(tokens), rel.shape[-1]))
  for a, ta in enumerate(tokens):
    for b, tb in enumerate(tokens):
      if ta is None:
        out[a, b] = cls[2] if tb is None else cls[0]
      elif tb is None:
        out[a, b] = cls[1]
      else:
        out[a, b] = rel[ta[0] - tb[0] + 3, ta[1] - tb[1] + 3]
  return out


def np_attention(q, k, v, table):
  """(T, H, d) each: softmax((q_a . k_b + q_a . R[a, b]) / sqrt(d)) v, heads concatenated."""
  d = q.shape[-1]
  logits = (np.einsum("ahd,bhd->hab", q, k) + np.einsum("ahd,abd->hab", q, table)) / math.sqrt(d)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("hab,bhd->ahd", weights, v).reshape(q.shape[0], -1)


@pytest.mark.parametrize("family", FAMILIES)
def test_relative_attention_matches_numpy(family):
  heads = 2
  if family == "t2t":
    module = t2t.Attention(heads, relative_grid=GRID)
  else:
    module = tnt.Attention(heads, relative_grid=GRID)
  x = np.random.default_rng(1).normal(size=(1, TOKENS, WIDTH))
  params = module.init(jax.random.key(0), jnp.asarray(x, jnp.float32), False)["params"]
  flat = traverse_util.flatten_dict(params, sep="/")
  rng = np.random.default_rng(2)
  flat = {p: rng.normal(0, 0.5, leaf.shape) for p, leaf in flat.items()}
  got = module.apply({"params": traverse_util.unflatten_dict(
      {p: jnp.asarray(v, jnp.float32) for p, v in flat.items()}, sep="/")},
      jnp.asarray(x, jnp.float32), False)
  h = x[0]
  if family == "t2t":
    qkv = h @ flat["qkv/kernel"]
    q, k, v = np.split(qkv, 3, axis=-1)
  else:
    qk = h @ flat["qk/kernel"]
    q, k, v = qk[:, :WIDTH], qk[:, WIDTH:], h @ flat["v/kernel"]
  split = [a.reshape(TOKENS, heads, HEAD) for a in (q, k, v)]
  table = np_relative_table(flat["relative_posemb/rel_embedding"],
                            flat["relative_posemb/cls_embedding"])
  want = np_attention(*split, table) @ flat["proj/kernel"] + flat["proj/bias"]
  np.testing.assert_allclose(np.asarray(got)[0], want, rtol=1e-4, atol=1e-5)


def test_config_checks_name_the_kinds_each_family_accepts():
  base = {"model.hidden_size": 16, "model.num_heads": 2}
  bad = t2t.check_config({**base, "model.posemb": "sinusoid",
                          "model.posemb_mode": "every_layer"}, "cpu")
  assert len(bad) == 1 and "posemb_mode 'every_layer' does not apply to posemb 'sinusoid'" in bad[0]
  bad = tnt.check_config({**base, "model.posemb": "sinusoid", "model.posemb_mode": "stem"}, "cpu")
  assert len(bad) == 1 and "unknown position embedding 'sinusoid'" in bad[0]
  assert "learn1d" in bad[0] and "relative" in bad[0]
  for check in (t2t.check_config, tnt.check_config):
    assert not check({**base, "model.posemb": "relative", "model.posemb_mode": "stem"}, "cpu")
    bad = check({"model.hidden_size": 18, "model.num_heads": 2, "model.posemb": "sincos2d",
                 "model.posemb_mode": "stem"}, "cpu")
    assert len(bad) == 1 and "divisible by 4" in bad[0]
  with pytest.raises(ValueError, match="does not apply"):
    jax.eval_shape(lambda: model("t2t", posemb_mode="every_layer").init(
        jax.random.key(0), IMAGES))


@pytest.mark.parametrize("kind", ["learn1d", "learn2d", "relative"])
def test_learned_tables_resample_to_another_grid(kind):
  """A T2T-ViT's tables carried from a 4x4 to an 8x8 grid by the loader fit the new model."""
  small = model("t2t", posemb=kind)
  large = model("t2t", posemb=kind)
  source = random_params(small)
  target = jax.eval_shape(lambda: large.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  params, fresh = posemb_resize.adapt_params(source, target["params"], GRID, (8, 8))
  assert not fresh
  out = large.apply({"params": params}, jnp.zeros((1, 32, 32, 3)))
  assert np.all(np.isfinite(np.asarray(out)))
