"""tensorly interop: export leaves as CP tensors and fit leaves to dense vectors."""

from __future__ import annotations

import numpy as np
import tensorly
import torch
from tensorly.cp_tensor import CPTensor
from tensorly.decomposition import parafac

from tensoradapt.algebra.contraction import materialize
from tensoradapt.algebra.entangled import check_positive
from tensoradapt.algebra.leaf import leaf_size

__all__ = ["to_cp", "fit_leaves", "relative_error"]


def to_cp(tensor) -> CPTensor:
    """CP form of an entangled tensor's uncut ``(q,) * order`` tensor.

    ``tensor`` is an unbatched [`EntangledTensor`][tensoradapt.algebra.entangled.EntangledTensor]
    without ``normalize_outer``. Returns ``CPTensor((ones(R), [factor_0, ..., factor_{N-1}]))``
    with ``factor_n = scaled_leaves()[:, n, :].T`` of shape ``(q, R)`` (the leaves times
    ``leaf_scale``), as torch tensors (detached).
    """
    if tensor.batch_shape:
        raise ValueError(f"to_cp needs an unbatched EntangledTensor, got batch_shape={tensor.batch_shape}; index it first")
    if tensor.normalize_outer:
        raise ValueError("to_cp is undefined with normalize_outer=True (the LayerNorm breaks the CP form)")
    leaves = tensor.scaled_leaves().detach()
    factors = [leaves[:, n, :].T.contiguous() for n in range(tensor.order)]
    return CPTensor((torch.ones(tensor.rank, dtype=leaves.dtype, device=leaves.device), factors))


def relative_error(approximation: torch.Tensor, target: torch.Tensor) -> float:
    """``||approximation - target|| / ||target||`` (``0`` when both are zero)."""
    denominator = torch.linalg.vector_norm(target.double())
    numerator = torch.linalg.vector_norm((approximation - target).double())
    if denominator == 0:
        return float(numerator)
    return float(numerator / denominator)


def _fit_one(padded: np.ndarray, rank: int, order: int, q: int, *, n_iter_max: int, seed: int) -> np.ndarray:
    """Leaves ``(rank, order, q)`` for one padded vector of size ``q ** order``."""
    leaves = np.zeros((rank, order, q))
    if order == 1:
        leaves[0, 0] = padded
        return leaves
    tensor = padded.reshape((q,) * order)
    if order == 2:
        # Eckart-Young: the truncated SVD is the best rank-R approximation of a matrix.
        left, singular, right_t = np.linalg.svd(tensor)
        kept = min(rank, q)
        root = np.sqrt(singular[:kept])
        leaves[:kept, 0] = (left[:, :kept] * root).T
        leaves[:kept, 1] = right_t[:kept] * root[:, None]
        return leaves
    with tensorly.backend_context("numpy"):
        weights, factors = parafac(tensor, rank, n_iter_max=n_iter_max, init="svd", tol=1e-10, random_state=seed)
    scale = np.abs(weights) ** (1.0 / order)
    for n, factor in enumerate(factors):
        column_scale = scale * (np.sign(weights) if n == 0 else 1.0)
        leaves[:, n] = (factor * column_scale).T
    return leaves


def fit_leaves(
    vectors: torch.Tensor,
    rank: int,
    order: int,
    *,
    n_iter_max: int = 500,
    seed: int = 0,
) -> tuple[torch.Tensor, float]:
    """Fit entangled-tensor leaves to dense vectors (compress e.g. a LoRA's columns).

    Each vector is zero-padded to ``q ** order``, reshaped to ``(q,) * order`` and decomposed:
    order 1 is copied, order 2 uses the truncated SVD (exact once ``rank >= q``), higher orders
    use tensorly's CP-ALS (``parafac``). Ranks beyond what the fit uses stay zero.

    Args:
        vectors: ``(*batch, dim)`` floating point.
        rank: tensor rank ``R``.
        order: tensor order ``N``.
        n_iter_max: CP-ALS iterations (orders >= 3).
        seed: CP-ALS random state (orders >= 3).

    Returns:
        ``(leaves, relative_error)``: leaves ``(*batch, rank, order, q)`` in ``vectors``' dtype and
        the relative Frobenius error of the materialised vectors over the whole batch.
    """
    check_positive("rank", rank)
    check_positive("order", order)
    if not vectors.dtype.is_floating_point:
        raise ValueError(f"vectors must be floating point, got {vectors.dtype}")
    if vectors.dim() < 1 or vectors.shape[-1] < 1:
        raise ValueError(f"vectors must have shape (*batch, dim) with dim >= 1, got {tuple(vectors.shape)}")
    dim = vectors.shape[-1]
    q = leaf_size(dim, order)
    flat = vectors.detach().reshape(-1, dim).double().cpu().numpy()
    padded = np.zeros((flat.shape[0], q**order))
    padded[:, :dim] = flat
    fitted = np.stack([_fit_one(row, rank, order, q, n_iter_max=n_iter_max, seed=seed) for row in padded])
    leaves = torch.from_numpy(fitted).reshape(*vectors.shape[:-1], rank, order, q)
    error = relative_error(materialize(leaves, dim), vectors.detach().double().cpu())
    return leaves.to(dtype=vectors.dtype, device=vectors.device), error
