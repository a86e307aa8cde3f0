"""vit_jax: Vision Transformers in JAX/Flax for pretraining, fine-tuning and ablations."""

__version__ = "0.1.0"
