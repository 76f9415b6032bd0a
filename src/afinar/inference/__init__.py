"""Inference: load a base or custom model once, generate with its chat template, batched."""
