"""Planned contractions: the tensor product of leaves, planned once per shape with opt_einsum."""

from __future__ import annotations

from functools import lru_cache

import opt_einsum
import torch
import torch.nn.functional as F

__all__ = ["product_equation", "planned_expression", "materialize", "kron_chain"]


def product_equation(order: int, *, keep_rank: bool) -> str:
    """The einsum equation of an order-``N`` tensor product over a batch and a rank axis.

    Operands are the ``N`` leaves, each ``(batch, rank, q)``; legend ``b`` batch,
    ``r`` rank, one letter per leaf axis. With ``keep_rank`` the rank axis stays in the
    output (``b r a c ...``), otherwise it is summed (``b a c ...``).

    >>> product_equation(2, keep_rank=False)
    'bra,brc->bac'
    """
    letters = [opt_einsum.get_symbol(i) for i in range(order + 4) if opt_einsum.get_symbol(i) not in "br"][:order]
    inputs = ",".join(f"br{letter}" for letter in letters)
    output = ("br" if keep_rank else "b") + "".join(letters)
    return f"{inputs}->{output}"


@lru_cache(maxsize=512)
def planned_expression(equation: str, shapes: tuple[tuple[int, ...], ...]) -> opt_einsum.contract.ContractExpression:
    """The opt_einsum plan for ``equation`` on operands of ``shapes``, built once and cached.

    The plan (the pairwise order of the contraction) depends only on the equation and the
    shapes, so it is computed on the first call and reused by every later call.
    """
    return opt_einsum.contract_expression(equation, *shapes, optimize="optimal" if len(shapes) <= 6 else "greedy")


def kron_chain(leaves: torch.Tensor, *, normalize_outer: bool = False) -> torch.Tensor:
    """Pairwise products of the leaves, left to right, keeping the rank axis.

    Args:
        leaves: ``(*batch, rank, order, q)``.
        normalize_outer: after every pairwise product, a parameter-free LayerNorm (mean 0,
            biased variance 1, eps ``1e-5``) over the last batch axis and the flattened product
            jointly: once the first ``m`` leaves are multiplied (``m = 2 .. order``) each block
            ``(batch[-1], q ** m)`` is normalised, one block per rank component and per index of
            the leading batch axes ``batch[:-1]``. This is the TensorPoly reference code's LayerNorm
            over ``[r, q * q]``, where the last batch axis holds the ``r`` LoRA columns. Without a
            batch axis each rank's product ``(q ** m,)`` is normalised alone.

    Returns:
        ``(*batch, rank, q ** order)``: per rank, ``leaf_0 (x) leaf_1 (x) ...`` in ``torch.kron``
        (row-major) order.
    """
    product = leaves[..., 0, :]
    for n in range(1, leaves.shape[-2]):
        product = (product.unsqueeze(-1) * leaves[..., n, :].unsqueeze(-2)).flatten(-2)
        if normalize_outer:
            product = _joint_layer_norm(product)
    return product


def _joint_layer_norm(product: torch.Tensor) -> torch.Tensor:
    """LayerNorm of ``(*batch, rank, P)`` over ``(batch[-1], P)`` per rank, or over ``P`` without batch axes."""
    if product.dim() < 3:
        return F.layer_norm(product, product.shape[-1:])
    rank_first = product.movedim(-2, -3)  # (*batch[:-1], rank, batch[-1], P)
    return F.layer_norm(rank_first, rank_first.shape[-2:]).movedim(-3, -2)


def materialize(
    leaves: torch.Tensor,
    dim: int,
    *,
    keep_rank: bool = False,
    normalize_outer: bool = False,
    rank_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Materialise entangled vectors from their leaves.

    ``v = sum_r w_r leaves[r, 0] (x) leaves[r, 1] (x) ... (x) leaves[r, N-1]``, flattened row-major
    (as ``torch.kron`` orders it) and cut to its first ``dim`` entries; ``w_r = 1`` unless
    ``rank_weights`` are given.

    Args:
        leaves: ``(*batch, rank, order, q)`` with ``q ** order >= dim``.
        dim: size of the vectors.
        keep_rank: return each rank's simple tensor instead of their sum.
        normalize_outer: LayerNorm after each pairwise outer product, jointly over the last
            batch axis and the product (per rank and leading batch index; over the product alone
            without batch axes), as in [`kron_chain`][tensoradapt.algebra.contraction.kron_chain]
            (reference-code option; uses the sequential pairwise path, not the planned contraction).
        rank_weights: ``w (rank,)``, or any shape that broadcasts to ``(*batch, rank)``: each rank's
            term is scaled by its weight, folded into its first leaf
            (``w (a_0 (x) a_1) = (w a_0) (x) a_1``), so a weighted sum of the simple tensors costs
            one contraction (TensorPoly-I). Not with ``normalize_outer``, whose LayerNorm would
            undo the weight.

    Order 2 needs no plan: the rank-summed product is one batched matmul
    (``b r a, b r c -> b a c`` as ``bmm(L0^T, L1)``) and the rank-kept one a broadcast product;
    both skip opt_einsum's per-call overhead (2.2x faster forward + backward for TLoRA's leaves,
    ``benchmarks/step_time.py``). Orders >= 3 run the cached opt_einsum plan.

    Returns:
        ``(*batch, dim)``, or ``(*batch, rank, dim)`` with ``keep_rank``.
    """
    if leaves.dim() < 3:
        raise ValueError(f"leaves must have shape (*batch, rank, order, q), got {tuple(leaves.shape)}")
    *batch_shape, rank, order, q = leaves.shape
    if q**order < dim:
        raise ValueError(f"leaves of size q={q} and order {order} give {q**order} entries, fewer than dim={dim}")
    if normalize_outer:
        if rank_weights is not None:
            raise ValueError("rank_weights cannot be folded into leaves with normalize_outer (the LayerNorm undoes them)")
        product = kron_chain(leaves, normalize_outer=True)  # (*batch, rank, q ** order)
        return (product if keep_rank else product.sum(dim=-2))[..., :dim]
    flat = leaves.reshape(-1, rank, order, q)
    first = flat[:, :, 0, :]  # (b, r, q)
    if rank_weights is not None:
        weights = rank_weights.to(leaves.dtype).expand(*batch_shape, rank).reshape(-1, rank)
        first = first * weights.unsqueeze(-1)
    if order == 1:
        product = first
    elif order == 2:
        second = flat[:, :, 1, :]  # (b, r, q)
        if keep_rank:
            product = (first.unsqueeze(-1) * second.unsqueeze(-2)).flatten(-2)
        else:
            product = torch.bmm(first.transpose(1, 2), second).flatten(-2)
    else:
        operands = [first, *(flat[:, :, n, :] for n in range(1, order))]
        equation = product_equation(order, keep_rank=keep_rank)
        expression = planned_expression(equation, tuple(tuple(op.shape) for op in operands))
        product = expression(*operands, backend="torch").flatten(-order)
    if order == 1 and not keep_rank:
        product = product.sum(dim=1)
    product = product[..., :dim]
    return product.reshape(*batch_shape, *((rank,) if keep_rank else ()), dim)
