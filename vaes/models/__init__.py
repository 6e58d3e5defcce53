"""Flax Linen modules, one file per model family. Models never import training code."""
