import numpy as np
import pytest

from vit_jax.evaluate import fewshot


def reference_ridge(x, y, l2):
  """Ridge with a free bias as one least-squares problem: rows sqrt(l2) I penalise w only."""
  n, f = x.shape
  a = np.block([[x, np.ones((n, 1))], [np.sqrt(l2) * np.eye(f), np.zeros((f, 1))]])
  b = np.vstack([y, np.zeros((f, y.shape[1]))])
  solution = np.linalg.lstsq(a, b, rcond=None)[0]
  return solution[:f], solution[f]


@pytest.mark.parametrize("n,f", [(50, 8), (6, 20)])  # more examples than features, and fewer
def test_solver_matches_a_least_squares_reference(n, f):
  rng = np.random.default_rng(n)
  x, y = rng.normal(size=(n, f)), rng.normal(size=(n, 3))
  w, b = fewshot.ridge_fit(x, y, l2=0.7)
  w_ref, b_ref = reference_ridge(x, y, 0.7)
  np.testing.assert_allclose(w, w_ref, atol=1e-8)
  np.testing.assert_allclose(b, b_ref, atol=1e-8)


def test_draw_takes_k_of_every_class():
  labels = np.repeat(np.arange(4), 10)
  idx = fewshot.draw_shots(labels, 3, np.random.default_rng(0))
  assert sorted(np.bincount(labels[idx])) == [3, 3, 3, 3] and len(set(idx)) == 12


def test_accuracy_is_perfect_on_separable_features_and_chance_on_noise():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 600)
  centres = rng.normal(size=(5, 16)) * 10
  features = centres[labels] + rng.normal(size=(600, 16))
  kwargs = dict(num_classes=5, shots=(1, 5), draws=3, l2=1.0)
  acc = fewshot.fewshot_accuracy(features[:300], labels[:300], features[300:], labels[300:],
                                 **kwargs)
  assert acc == {1: 1.0, 5: 1.0}
  noise = rng.normal(size=(600, 16))
  acc = fewshot.fewshot_accuracy(noise[:300], labels[:300], noise[300:], labels[300:], **kwargs)
  assert all(0.05 < a < 0.4 for a in acc.values())


def test_extract_keeps_only_real_examples():
  batches = [{"features": np.arange(8.0).reshape(4, 2), "label": np.array([0, 1, 2, 3]),
              "mask": np.array([1.0, 1.0, 1.0, 0.0])}]
  x, y = fewshot.extract(lambda params, batch: batch, None, batches)
  assert x.shape == (3, 2) and list(y) == [0, 1, 2]


@pytest.mark.parametrize("name", [pytest.param("ViT-custom", marks=pytest.mark.slow),
                                  pytest.param("ResNet+ViT-custom", marks=pytest.mark.slow),
                                  pytest.param("Mixer-custom", marks=pytest.mark.slow)])
def test_feature_step_reads_the_pre_logits_of_every_family(name):
  # The sown features once shared the pre-logits layer's name, which failed for any model with
  # one (the paper's pretraining configs have a 768-wide pre-logits layer).
  import jax
  import jax.numpy as jnp

  from vit_jax.models import registry

  sizes = {"ViT-custom": dict(num_heads=2, mlp_dim=32),
           "ResNet+ViT-custom": dict(num_heads=2, mlp_dim=32, resnet_layers=(), resnet_width=32),
           "Mixer-custom": dict(tokens_mlp_dim=8, channels_mlp_dim=32)}[name]
  patch = 1 if name == "ResNet+ViT-custom" else 4
  model = registry.build(registry.section(name, patch_size=patch, hidden_size=16, num_layers=1,
                                          representation_size=12, **sizes), 10)
  images = jnp.zeros((3, 16, 16, 3))
  params = model.init(jax.random.key(0), images)["params"]
  out = fewshot.make_feature_step(model)(params, {"image": images, "label": jnp.arange(3),
                                                  "mask": jnp.ones(3)})
  assert out["features"].shape == (3, 12)
