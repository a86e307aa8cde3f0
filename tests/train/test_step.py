import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vit_jax.models.vit import VisionTransformer
from vit_jax.train import sharding
from vit_jax.train.optim import make_optimizer, make_schedule
from vit_jax.train.step import init_state, make_train_step

TINY = dict(num_classes=10, patch_size=4, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64)


def batch(n=32, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(n, 8, 8, 1)).astype(np.float32),
          "label": rng.integers(0, 10, size=n).astype(np.int32),
          "mask": np.ones(n, np.float32)}


def run(accum_steps, steps, devices, lr=1e-3, optimizer="adam"):
  model = VisionTransformer(**TINY)
  cfg = ml_collections.ConfigDict(dict(optimizer=optimizer, grad_clip_norm=1.0, adam_b1=0.9,
                                       adam_b2=0.999, weight_decay=0.0, momentum=0.9))
  schedule = make_schedule(lr, 0, 100, "constant")
  tx = make_optimizer(cfg, schedule)
  mesh = sharding.make_mesh(devices=jax.devices()[:devices])
  repl, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  state = jax.jit(lambda: init_state(model, tx, (8, 8, 1), seed=0), out_shardings=repl)()
  step = jax.jit(make_train_step(model, tx, schedule, loss="softmax_xent",
                                 accum_steps=accum_steps, seed=0),
                 in_shardings=(repl, data), out_shardings=(repl, repl))
  b = sharding.global_batch(batch(), mesh)
  losses, norms = [], []
  for _ in range(steps):
    state, metrics = step(state, b)
    losses.append(float(metrics["train/loss"]))
    norms.append(float(metrics["train/grad_norm"]))
  return state, losses, norms


@pytest.mark.slow
def test_loss_falls_on_a_fixed_batch_on_8_devices():
  assert len(jax.devices()) == 8
  state, losses, _ = run(accum_steps=1, steps=30, devices=8, lr=3e-3)
  assert losses[-1] < 0.5 * losses[0]
  assert int(state.step) == 30
  kernel = state.params["embedding"]["kernel"]
  assert kernel.sharding.is_fully_replicated and len(kernel.sharding.device_set) == 8


@pytest.mark.slow
def test_accumulated_micro_batches_equal_the_full_batch_on_8_devices():
  # SGD makes the update proportional to the gradient, so any error in how micro-batch
  # gradients are combined shows in the parameters and in the gradient norm.
  full, loss_full, norm_full = run(accum_steps=1, steps=2, devices=8, lr=0.5, optimizer="sgd")
  accum, loss_accum, norm_accum = run(accum_steps=4, steps=2, devices=8, lr=0.5,
                                      optimizer="sgd")
  np.testing.assert_allclose(loss_full, loss_accum, rtol=1e-5)
  np.testing.assert_allclose(norm_full, norm_accum, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(accum.params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_accumulated_gradient_matches_the_mean_gradient():
  # Independent truth: the full-batch gradient of the mean loss, computed directly.
  model = VisionTransformer(**TINY)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
  b = batch()

  def loss(p, x, y):
    logits = model.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  direct = jax.grad(loss)(params, b["image"], b["label"])
  tx = optax.sgd(1.0)  # update = -grad
  schedule = make_schedule(1.0, 0, 10, "constant")
  state = init_state(model, tx, (8, 8, 1), seed=0)
  new, _ = make_train_step(model, tx, schedule, loss="softmax_xent", accum_steps=8, seed=0)(
      state, {k: jnp.asarray(v) for k, v in b.items()})
  for g, p0, p1 in zip(jax.tree.leaves(direct), jax.tree.leaves(state.params),
                       jax.tree.leaves(new.params), strict=True):
    np.testing.assert_allclose(p0 - p1, g, rtol=2e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("accum_steps", [1, 4])
def test_rows_with_mask_0_count_for_nothing(accum_steps):
  # Independent truth: the gradient of the mean loss over the rows that were read.
  model = VisionTransformer(**TINY)
  b = batch(n=16)
  b["mask"][[2, 5, 11]] = 0.0  # images the input pipeline could not read
  keep = b["mask"] == 1
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]

  def loss(p):
    logits = model.apply({"params": p}, b["image"][keep])
    return optax.softmax_cross_entropy_with_integer_labels(logits, b["label"][keep]).mean()

  value, direct = jax.value_and_grad(loss)(params)
  tx, schedule = optax.sgd(1.0), make_schedule(1.0, 0, 10, "constant")
  state = init_state(model, tx, (8, 8, 1), seed=0)
  new, metrics = jax.jit(make_train_step(model, tx, schedule, loss="softmax_xent",
                                         accum_steps=accum_steps, seed=0))(state, b)
  np.testing.assert_allclose(metrics["train/loss"], value, rtol=1e-5)
  for g, p0, p1 in zip(jax.tree.leaves(direct), jax.tree.leaves(state.params),
                       jax.tree.leaves(new.params), strict=True):
    np.testing.assert_allclose(p0 - p1, g, rtol=2e-4, atol=1e-6)


@pytest.mark.slow
def test_update_of_4_micro_batches_equals_the_full_batch_update_to_1e_5():
  # One SGD step with learning rate 1: the update is minus the (mean) gradient.
  initial = jax.jit(lambda: init_state(VisionTransformer(**TINY), optax.sgd(1.0), (8, 8, 1),
                                       seed=0))().params

  def update(accum_steps):
    state, _, _ = run(accum_steps=accum_steps, steps=1, devices=8, lr=1.0, optimizer="sgd")
    return jax.tree.map(lambda new, old: np.asarray(new) - np.asarray(old), state.params,
                        initial)

  full, accum = update(1), update(4)
  diff = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(full),
                                                           jax.tree.leaves(accum), strict=True)))
  norm = np.sqrt(sum(np.sum(a ** 2) for a in jax.tree.leaves(full)))
  assert norm > 0.1  # a real update, not a zero one
  assert diff / norm <= 1e-5


@pytest.mark.slow
def test_skip_nonfinite_keeps_parameters_and_optimizer_state_of_a_nan_batch():
  model = VisionTransformer(**TINY)
  cfg = ml_collections.ConfigDict(dict(optimizer="adam", grad_clip_norm=1.0, adam_b1=0.9,
                                       adam_b2=0.999, weight_decay=0.0, momentum=0.9))
  schedule = make_schedule(1e-3, 0, 100, "constant")
  tx = make_optimizer(cfg, schedule)
  state = init_state(model, tx, (8, 8, 1), seed=0)
  bad = batch()
  bad["image"][3] = np.nan
  for skip in (True, False):
    step = jax.jit(make_train_step(model, tx, schedule, loss="softmax_xent", accum_steps=2,
                                   seed=0, skip_nonfinite=skip))
    new, metrics = step(state, bad)
    assert int(new.step) == 1 and np.isnan(float(metrics["train/loss"]))
    if skip:  # parameters and moments stay; the step counts advance with the step
      for (path, x), y in zip(jax.tree_util.tree_flatten_with_path((new.params,
                              new.opt_state))[0], jax.tree.leaves((state.params, state.opt_state)),
                              strict=True):
        want = y + 1 if jax.tree_util.keystr(path).endswith(".count") else y
        np.testing.assert_array_equal(x, want)
    else:  # without the guard the NaN reaches the parameters
      assert any(np.isnan(np.asarray(x)).any() for x in jax.tree.leaves(new.params))
  good, _ = step(state, batch())
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(good.params))


@pytest.mark.slow
def test_after_skipped_steps_the_applied_learning_rate_is_the_logged_one():
  # SGD without momentum, clipping or weight decay: an update is exactly -lr * gradient, so the
  # learning rate a step applied can be read off the parameters.
  model = VisionTransformer(**TINY)
  cfg = ml_collections.ConfigDict(dict(optimizer="sgd", grad_clip_norm=0.0, momentum=0.0,
                                       weight_decay=0.0, adam_b1=0.9, adam_b2=0.999))
  schedule = make_schedule(1.0, 0, 10, "linear")  # 1.0, 0.9, 0.8, ...: a new rate every step
  tx = make_optimizer(cfg, schedule)
  step = jax.jit(make_train_step(model, tx, schedule, loss="softmax_xent", accum_steps=1,
                                 seed=0, skip_nonfinite=True))
  state = init_state(model, tx, (8, 8, 1), seed=0)
  bad = batch()
  bad["image"][0] = np.nan
  for b in (batch(), bad, bad, bad):  # one update, then three skipped steps
    state, _ = step(state, b)
  good = batch(seed=1)

  def loss(params):
    logits = model.apply({"params": params}, good["image"], train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, good["label"]).mean()

  grads = jax.grad(loss)(state.params)
  new, metrics = step(state, good)
  g = np.concatenate([np.ravel(x) for x in jax.tree.leaves(grads)])
  delta = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(new.params),
                                                           jax.tree.leaves(state.params),
                                                           strict=True)])
  applied = -float(delta @ g / (g @ g))
  assert float(metrics["train/lr"]) == pytest.approx(0.6)  # schedule(4): the fifth step
  assert applied == pytest.approx(float(metrics["train/lr"]), rel=1e-4)
