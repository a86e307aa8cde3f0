import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vit_jax.models.vit import VisionTransformer
from vit_jax.train import mix, sharding
from vit_jax.train.optim import make_optimizer, make_schedule
from vit_jax.train.step import init_state, make_eval_step, make_train_step, soft_targets
from vit_jax.train.step import per_example_loss as loss_of

TINY = dict(num_classes=10, patch_size=4, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64)


def batch(n=32, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(n, 8, 8, 1)).astype(np.float32),
          "label": rng.integers(0, 10, size=n).astype(np.int32),
          "mask": np.ones(n, np.float32)}


def run(accum_steps, steps, devices, lr=1e-3, optimizer="adam", **targets):
  model = VisionTransformer(**TINY)
  cfg = ml_collections.ConfigDict(dict(optimizer=optimizer, grad_clip_norm=1.0, adam_b1=0.9,
                                       adam_b2=0.999, weight_decay=0.0, momentum=0.9))
  schedule = make_schedule(lr, 0, 100, "constant")
  tx = make_optimizer(cfg, schedule)
  mesh = sharding.make_mesh(devices=jax.devices()[:devices])
  repl, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  state = jax.jit(lambda: init_state(model, tx, (8, 8, 1), seed=0), out_shardings=repl)()
  step = jax.jit(make_train_step(model, tx, schedule, loss="softmax_xent",
                                 accum_steps=accum_steps, seed=0, **targets),
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
@pytest.mark.parametrize("targets", [
    {},
    dict(label_smoothing=0.1, mixing=mix.Settings(mixup_alpha=0.8)),
    dict(mixing=mix.Settings(cutmix_alpha=1.0)),
], ids=["plain", "smoothing_mixup", "cutmix"])
def test_accumulated_micro_batches_equal_the_full_batch_on_8_devices(targets):
  # SGD makes the update proportional to the gradient, so any error in how micro-batch
  # gradients are combined shows in the parameters and in the gradient norm. The batch is mixed
  # as a whole before it is split, so mixing must not change this.
  full, loss_full, norm_full = run(accum_steps=1, steps=2, devices=8, lr=0.5, optimizer="sgd",
                                   **targets)
  accum, loss_accum, norm_accum = run(accum_steps=4, steps=2, devices=8, lr=0.5,
                                      optimizer="sgd", **targets)
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


@functools.cache
def _initial_params():
  return jax.jit(lambda: init_state(VisionTransformer(**TINY), optax.sgd(1.0), (8, 8, 1),
                                    seed=0))().params


def _sgd_update(accum_steps, chains):
  """The first loss and the parameters' change of one SGD step (learning rate 1)."""
  initial = _initial_params()
  state, losses, _ = run(accum_steps=accum_steps, steps=1, devices=8, lr=1.0, optimizer="sgd",
                         chains=chains)
  return losses[0], [np.asarray(new) - np.asarray(old) for new, old in
                     zip(jax.tree.leaves(state.params), jax.tree.leaves(initial), strict=True)]


@pytest.fixture(scope="module")
def whole_batch_update():
  return _sgd_update(1, 1)


@pytest.mark.parametrize("accum_steps,chains", [(1, 2), (1, 4), (2, 2)])
def test_update_computed_in_independent_parts_equals_the_whole_batch_update(
    accum_steps, chains, whole_batch_update):
  # 32 images on 8 devices: each device's 4 (or 2 per micro-batch) split into `chains` parts.
  (whole_loss, whole), (loss, parts) = whole_batch_update, _sgd_update(accum_steps, chains)
  norm = np.sqrt(sum(np.sum(a ** 2) for a in whole))
  diff = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(whole, parts, strict=True)))
  assert norm > 0.1  # a real update, not a zero one
  assert diff / norm <= 1e-5
  assert loss == pytest.approx(whole_loss, rel=1e-6)


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


def test_label_smoothing_targets_and_losses_match_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 5)).astype(np.float32)
  labels = np.array([0, 3, 4, 3])
  targets = np.asarray(soft_targets(jnp.asarray(labels), 5, 0.1))
  want = np.full((4, 5), 0.1 / 5)
  want[np.arange(4), labels] += 0.9
  np.testing.assert_allclose(targets, want, rtol=1e-6)
  x = logits.astype(np.float64)
  log_softmax = x - x.max(-1, keepdims=True)
  log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
  np.testing.assert_allclose(loss_of(logits, targets, "softmax_xent"),
                             -(want * log_softmax).sum(-1), rtol=1e-5)
  log_p, log_not_p = -np.log1p(np.exp(-x)), -np.log1p(np.exp(x))  # log sigmoid(+-x)
  np.testing.assert_allclose(loss_of(logits, targets, "sigmoid_xent"),
                             -(want * log_p + (1 - want) * log_not_p).sum(-1), rtol=1e-5)
  # Integer labels are the one-hot targets without smoothing.
  for kind in ("softmax_xent", "sigmoid_xent"):
    np.testing.assert_allclose(loss_of(logits, labels, kind),
                               loss_of(logits, soft_targets(labels, 5), kind),
                               rtol=1e-6)


def _one_step(b, accum_steps=1, **targets):
  model = VisionTransformer(**TINY)
  tx, schedule = optax.sgd(1.0), make_schedule(1.0, 0, 10, "constant")
  state = init_state(model, tx, (8, 8, 1), seed=0)
  step = jax.jit(make_train_step(model, tx, schedule, loss="softmax_xent",
                                 accum_steps=accum_steps, seed=0, **targets))
  return state, *step(state, b)


@pytest.mark.slow
def test_with_the_new_settings_at_their_defaults_the_step_is_unchanged():
  b = batch(n=16)
  _, new, metrics = _one_step(b, accum_steps=2)
  _, new_d, metrics_d = _one_step(b, accum_steps=2, label_smoothing=0.0, mixing=mix.Settings(
      mixup_alpha=0.0, cutmix_alpha=0.0, prob=1.0, switch_prob=0.5))
  for x, y in zip(jax.tree.leaves((new, metrics)), jax.tree.leaves((new_d, metrics_d)),
                  strict=True):
    np.testing.assert_array_equal(x, y)
  _, _, smoothed = _one_step(b, accum_steps=2, label_smoothing=0.1)
  assert float(smoothed["train/loss"]) != float(metrics["train/loss"])


@pytest.mark.slow
def test_a_mixed_step_is_the_gradient_of_the_mean_loss_on_the_mixed_batch():
  # Independent truth: the batch mixed by mix.mix_batch with the step's key, then the gradient
  # of the mean soft-target cross-entropy, computed directly.
  model = VisionTransformer(**TINY)
  b = batch(n=16)
  settings = mix.Settings(mixup_alpha=0.8, cutmix_alpha=1.0)
  targets = soft_targets(jnp.asarray(b["label"]), 10, 0.1)
  images, targets = mix.mix_batch(mix.step_key(0, 0), jnp.asarray(b["image"]), targets,
                                  jnp.asarray(b["mask"]), settings)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]

  def loss(p):
    logits = model.apply({"params": p}, images)
    return optax.softmax_cross_entropy(logits, targets).mean()

  value, direct = jax.value_and_grad(loss)(params)
  state, new, metrics = _one_step(b, accum_steps=4, label_smoothing=0.1, mixing=settings)
  np.testing.assert_allclose(metrics["train/loss"], value, rtol=1e-5)
  for g, p0, p1 in zip(jax.tree.leaves(direct), jax.tree.leaves(state.params),
                       jax.tree.leaves(new.params), strict=True):
    np.testing.assert_allclose(p0 - p1, g, rtol=2e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("alphas", [dict(mixup_alpha=0.8), dict(cutmix_alpha=1.0)])
def test_rows_with_mask_0_count_for_nothing_when_mixing(alphas):
  # Whatever a row with mask 0 holds, neither its own loss nor its pixels or label reach the
  # update: the rows it would be mixed into (its partner in the reversed batch) stay unmixed.
  b = batch(n=16)
  b["mask"][[2, 5, 11]] = 0.0
  other = {k: v.copy() for k, v in b.items()}
  other["image"][[2, 5, 11]] = 50.0
  other["label"][[2, 5, 11]] = 7
  settings = mix.Settings(**alphas)
  _, new_a, metrics_a = _one_step(b, accum_steps=2, label_smoothing=0.1, mixing=settings)
  _, new_b, metrics_b = _one_step(other, accum_steps=2, label_smoothing=0.1, mixing=settings)
  np.testing.assert_array_equal(metrics_a["train/loss"], metrics_b["train/loss"])
  for x, y in zip(jax.tree.leaves(new_a.params), jax.tree.leaves(new_b.params), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_evaluation_keeps_the_plain_loss():
  model = VisionTransformer(**TINY)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
  params["head"]["bias"] = jnp.arange(10.0) / 10
  b = batch(n=4)
  got = make_eval_step(model, loss="softmax_xent")(params, b)
  logits = np.arange(10.0) / 10  # the zero-initialised head outputs its bias
  log_p = logits - np.log(np.exp(logits).sum())
  np.testing.assert_allclose(got["loss"], -log_p[b["label"]].sum(), rtol=1e-5)
