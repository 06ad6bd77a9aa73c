"""tensoradapt: tensor-product adapters and mixtures of latent experts for PyTorch models."""

from tensoradapt.algebra import EntangledTensor, fit_leaves, leaf_size, materialize

__all__ = ["EntangledTensor", "fit_leaves", "leaf_size", "materialize"]
__version__ = "0.1.0"
