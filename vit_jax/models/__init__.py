"""Flax linen modules for the ViT family. Imports nothing from train/, data/ or configs/."""
