import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import attention
from vit_jax.models.vit import VisionTransformer

TINY = dict(num_classes=10, patch_size=4, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64)


def reference(q, k, v):
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  w = np.exp(logits - logits.max(-1, keepdims=True))
  return np.einsum("bhqk,bkhd->bqhd", w / w.sum(-1, keepdims=True), v)


@pytest.mark.parametrize("implementation", ["plain", "xla", "heads_first", "auto"])
def test_every_implementation_is_softmax_attention(implementation):
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(2, 5, 3, 8)).astype(np.float32) for _ in range(3))
  out = attention.attention_fn(implementation, jnp.float32)(q, k, v, deterministic=True)
  np.testing.assert_allclose(out, reference(q, k, v), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("posemb", ["learn1d", "relative"])
def test_plain_attention_in_bfloat16_takes_its_softmax_in_float32_like_xla(posemb):
  # Measured on CPU: with a bfloat16 softmax the plain model's logits were up to 0.17 (0.22
  # with the relative bias) away from the XLA path's, on logits of magnitude ~18.
  images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  size = dict(num_classes=10, patch_size=4, hidden_size=64, num_layers=4, num_heads=4,
              mlp_dim=128, posemb=posemb, dtype=jnp.bfloat16)
  plain = VisionTransformer(**size, attention="plain")
  params = plain.init(jax.random.key(0), images)["params"]
  params["head"]["kernel"] = jax.random.normal(jax.random.key(2), params["head"]["kernel"].shape)
  logits = plain.apply({"params": params}, images)
  fused = VisionTransformer(**size, attention="xla").apply({"params": params}, images)
  assert float(jnp.abs(fused).max()) > 5
  np.testing.assert_allclose(logits, fused, atol=0.02)


@pytest.mark.slow
@pytest.mark.parametrize("implementation", ["xla", "heads_first"])
@pytest.mark.parametrize("posemb,pool", [("learn1d", "token"), ("relative", "token"),
                                         ("sincos2d", "gap")])
def test_fused_model_matches_plain_model_in_outputs_and_gradients(posemb, pool, implementation):
  images = jax.random.normal(jax.random.key(1), (3, 8, 12, 1))
  plain = VisionTransformer(**TINY, posemb=posemb, pool=pool, attention="plain")
  fused = VisionTransformer(**TINY, posemb=posemb, pool=pool, attention=implementation)
  params = plain.init(jax.random.key(0), images)["params"]
  # A non-zero head, so the gradients reach every layer.
  params["head"]["kernel"] = jax.random.normal(jax.random.key(2), params["head"]["kernel"].shape)

  def loss(model, p):
    return jnp.sum(model.apply({"params": p}, images) ** 2)

  np.testing.assert_allclose(fused.apply({"params": params}, images),
                             plain.apply({"params": params}, images), atol=1e-5, rtol=1e-5)
  g_plain, g_fused = (jax.grad(lambda p, m=m: loss(m, p))(params) for m in (plain, fused))
  # float32 sums in another order; some gradients are zero in exact arithmetic (the key bias
  # cancels in the softmax), so the error is measured against the whole gradient's size.
  scale = max(float(np.abs(a).max()) for a in jax.tree.leaves(g_plain))
  for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_fused), strict=True):
    np.testing.assert_allclose(b, a, atol=1e-5 * scale, rtol=0)


def test_auto_takes_cudnn_only_on_gpu_in_half_precision_and_heads_first_on_cpu(monkeypatch):
  assert attention.resolve("auto", jnp.bfloat16) == "heads_first"  # this is a CPU
  assert attention.resolve("auto", jnp.float32, has_bias=True) == "heads_first"
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert attention.resolve("auto", jnp.bfloat16) == "cudnn"
  assert attention.resolve("auto", jnp.float32) == "xla"
  assert attention.resolve("plain", jnp.bfloat16) == "plain"


@pytest.mark.parametrize("implementation,dropout,message", [
    ("flash", 0.0, "attention 'flash' is not one of auto, plain, xla, cudnn, heads_first"),
    ("xla", 0.1, "attention 'xla' has no dropout on attention weights"),
    ("heads_first", 0.1, "attention 'heads_first' has no dropout on attention weights"),
    ("plain", 0.1, None),
    ("auto", 0.0, None),
])
def test_check_names_the_problem(implementation, dropout, message):
  problem = attention.check(implementation, dropout)
  assert problem == message or message in problem


@pytest.mark.parametrize("kw,message", [
    (dict(backend="cpu", dtype="bfloat16"), "attention 'cudnn' needs a GPU (this backend is cpu)"),
    (dict(backend="gpu", dtype="float32"), "needs dtype bfloat16 or float16, got float32"),
    (dict(backend="gpu", dtype="bfloat16", relative=True), "does not take the relative position"),
    (dict(backend="gpu", dtype="bfloat16"), None),
])
def test_cudnn_is_checked_against_backend_dtype_and_bias(kw, message):
  problem = attention.check("cudnn", 0.0, **kw)
  assert problem == message or message in problem


def test_auto_keeps_a_relative_bias_on_xla(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert attention.resolve("auto", jnp.bfloat16, has_bias=True) == "xla"


def test_model_refuses_an_unknown_implementation():
  model = VisionTransformer(**TINY, attention="flash")
  with pytest.raises(ValueError, match="attention 'flash' is not one of"):
    model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_matches_plain_in_bfloat16():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 197, 12, 64)), jnp.bfloat16) for _ in range(3))
  out = attention.attention_fn("cudnn", jnp.bfloat16)(q, k, v, deterministic=True)
  expected = reference(*(np.asarray(a, np.float32) for a in (q, k, v)))
  np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=2e-2)


@pytest.mark.parametrize("posemb", ["learn1d", "relative"])
def test_heads_first_module_has_flax_attentions_parameters_and_initial_values(posemb):
  images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  ours = VisionTransformer(**TINY, posemb=posemb, attention="heads_first")
  flax_ = VisionTransformer(**TINY, posemb=posemb, attention="plain")
  p_ours = ours.init(jax.random.key(0), images)["params"]
  p_flax = flax_.init(jax.random.key(0), images)["params"]
  assert jax.tree.structure(p_ours) == jax.tree.structure(p_flax)
  for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_flax), strict=True):
    assert a.shape == b.shape
    np.testing.assert_array_equal(a, b)
  block = p_ours["Transformer"]["encoderblock_0"]["MultiHeadDotProductAttention_1"]
  assert float(np.abs(block["query"]["kernel"]).max()) > 0  # drawn, not zero


def test_heads_first_block_in_bfloat16_matches_plain_within_bfloat16_rounding():
  images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  size = dict(num_classes=10, patch_size=4, hidden_size=64, num_layers=4, num_heads=4,
              mlp_dim=128, dtype=jnp.bfloat16)
  plain = VisionTransformer(**size, attention="plain")
  params = jax.jit(plain.init)(jax.random.key(0), images)["params"]
  params["head"]["kernel"] = jax.random.normal(jax.random.key(2), params["head"]["kernel"].shape)

  def apply(model):  # jitted: op by op, bfloat16 operations compile for seconds each
    return jax.jit(model.apply)({"params": params}, images)

  exact = apply(VisionTransformer(**{**size, "dtype": jnp.float32}))
  ours = apply(VisionTransformer(**size, attention="heads_first"))
  theirs = apply(plain)
  # Both round differently, so each is held to the error plain attention makes in bfloat16.
  bound = float(np.abs(np.asarray(theirs) - np.asarray(exact)).max())
  assert float(np.abs(np.asarray(ours) - np.asarray(exact)).max()) < 1.5 * bound


@pytest.mark.parametrize("shape", [(3, 4, 16, 6), (2, 2, 5, 3)])
def test_small_attention_is_heads_first_attention_with_its_own_backward_pass(shape):
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(3))
  np.testing.assert_array_equal(attention.small_attention(q, k, v),
                                attention.heads_first_attention(q, k, v))

  def loss(fn):
    return lambda q, k, v: jnp.sum(jnp.sin(3 * fn(q, k, v)))

  want = jax.grad(loss(attention.heads_first_attention), argnums=(0, 1, 2))(q, k, v)
  got = jax.grad(loss(attention.small_attention), argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(w))))


def test_small_attention_keeps_bfloat16_inputs_and_gradients_in_their_dtype():
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 3, 8, 4)), jnp.bfloat16) for _ in range(3))
  out = attention.small_attention(q, k, v)
  assert out.dtype == jnp.bfloat16
  grads = jax.grad(lambda *a: jnp.sum(attention.small_attention(*a).astype(jnp.float32)),
                   argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(lambda *a: jnp.sum(attention.heads_first_attention(*a).astype(jnp.float32)),
                  argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(grads, want, strict=True):
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), atol=0.05)
