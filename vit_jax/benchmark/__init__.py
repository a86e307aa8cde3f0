"""Throughput, MFU, memory and compile time of a ViT train or inference step.

Run `python -m vit_jax.benchmark --help`; results are discussed in docs/performance.md.
"""
