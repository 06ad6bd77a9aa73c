"""Initialisation schemes for the leaves of entangled tensors.

Every scheme fills a leaves tensor of shape ``(*batch, rank, order, q)`` in place.

* ``normal`` / ``uniform``: i.i.d. leaves scaled so that each materialised entry has the
  chosen standard deviation ``std``: an entry is a sum of ``R`` products of ``N`` independent
  leaf entries of variance ``s**2``, so ``std**2 = R * s**(2N)``.
* ``leaf_uniform``: every leaf entry ``uniform(-bound, bound)`` (the TensorPoly reference code,
  with ``bound = gain / sqrt(d_in)``).
* ``zero_output``: the materialised vector is exactly zero while every leaf still receives a
  gradient. All ranks share leaves ``0 .. N-2`` and their last leaves sum to zero, so
  ``sum_r u_0 (x) ... (x) u_{N-2} (x) l_r = u (x) sum_r l_r = 0``; the gradient of leaf ``n``
  of rank ``r`` involves that rank's own non-zero leaves, so no leaf is stuck. (All-zero leaves
  of order >= 2 would have zero gradient everywhere.) The output is zero in exact arithmetic and within
  floating-point rounding of the sum (about ``1e-7 * std`` in fp32). It needs ``rank >= 2`` when
  ``order >= 2``: a single simple tensor is zero only if one of its leaves is.
* ``zero_last``: the materialised vector is exactly zero, for any rank: the last leaf of every
  rank term is zero and the others are ``uniform(-bound, bound)``. The zero leaves receive a
  gradient at once (the product of their rank's other leaves, which is not zero); the others
  receive one as soon as the last leaves move, as LoRA's ``A`` does once ``B`` leaves zero.
  Unlike ``zero_output`` the ranks do not share leaves, so they start different.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

__all__ = ["InitScheme", "INIT_SCHEMES", "init_leaves_", "leaf_std_for"]

InitScheme = Literal["normal", "uniform", "leaf_uniform", "zero_output", "zero_last"]
INIT_SCHEMES: tuple[str, ...] = ("normal", "uniform", "leaf_uniform", "zero_output", "zero_last")


def leaf_std_for(std: float, rank: int, order: int) -> float:
    """Leaf standard deviation ``s`` that gives materialised entries standard deviation ``std``.

    Solves ``std**2 = rank * s**(2 * order)``.
    """
    return (std**2 / rank) ** (1.0 / (2 * order))


@torch.no_grad()
def init_leaves_(
    leaves: torch.Tensor,
    scheme: str = "normal",
    *,
    std: float = 1.0,
    bound: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Initialise ``leaves`` of shape ``(*batch, rank, order, q)`` in place with ``scheme``.

    Args:
        leaves: the tensor to fill.
        scheme: one of ``INIT_SCHEMES``.
        std: target standard deviation of materialised entries (``normal``, ``uniform``,
            ``zero_output``'s shared leaves).
        bound: leaf half-width for ``leaf_uniform`` and for ``zero_last``'s non-zero leaves
            (required there).
        generator: optional random generator.

    Returns:
        ``leaves``, for chaining.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init scheme {scheme!r} is unknown; choose one of {INIT_SCHEMES}")
    rank, order = leaves.shape[-3], leaves.shape[-2]
    if scheme in ("leaf_uniform", "zero_last"):
        if bound is None:
            raise ValueError(f"init scheme {scheme!r} needs bound=, the leaf half-width (e.g. gain / sqrt(d_in))")
        leaves.uniform_(-bound, bound, generator=generator)
        if scheme == "zero_last":
            leaves[..., order - 1, :] = 0.0
        return leaves
    leaf_std = leaf_std_for(std, rank, order)
    if scheme == "normal":
        return leaves.normal_(0.0, leaf_std, generator=generator)
    if scheme == "uniform":
        half_width = leaf_std * math.sqrt(3.0)
        return leaves.uniform_(-half_width, half_width, generator=generator)
    return _zero_output_(leaves, std=std, generator=generator)


def _zero_output_(leaves: torch.Tensor, *, std: float, generator: torch.Generator | None) -> torch.Tensor:
    rank, order = leaves.shape[-3], leaves.shape[-2]
    if order == 1:
        return leaves.zero_()
    if rank < 2:
        raise ValueError(
            "init scheme 'zero_output' needs rank >= 2 for order >= 2 (one simple tensor is zero only "
            "if a leaf is zero, and then the other leaves get no gradient); use rank >= 2 or init 'leaf_uniform'"
        )
    leaf_std = leaf_std_for(std, 1, order)
    shared = torch.empty_like(leaves[..., :1, : order - 1, :]).normal_(0.0, leaf_std, generator=generator)
    leaves[..., :, : order - 1, :] = shared
    last = torch.empty_like(leaves[..., :, order - 1, :]).normal_(0.0, leaf_std, generator=generator)
    last = last - last.mean(dim=-2, keepdim=True)
    leaves[..., :, order - 1, :] = last
    return leaves
