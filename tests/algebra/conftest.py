"""The plain dense reference every algebra property is checked against."""

from collections.abc import Callable

import pytest
import torch
from references import kron_rows


def chained_kron(leaves: torch.Tensor, dim: int, *, keep_rank: bool = False, normalize: bool = False) -> torch.Tensor:
    """Loop over batch entries and ranks: ``torch.kron`` of the leaves left to right, cut, summed.

    Args:
        leaves: ``(*batch, rank, order, q)``.
        dim: cut length.
        keep_rank: stack the ranks instead of summing them.
        normalize: after every ``torch.kron``, for each rank and each index of ``batch[:-1]``,
            stack the ``batch[-1]`` products into one ``(batch[-1], P)`` block and LayerNorm the
            block as a whole (the reference's ``[r, q * q]``); without batch axes, each product alone.

    Returns:
        ``(*batch, dim)`` or ``(*batch, rank, dim)``.
    """
    *batch, rank, order, q = leaves.shape
    columns = batch[-1] if batch else 1
    groups = []
    for group in leaves.reshape(-1, columns, rank, order, q):
        per_rank = []
        for r in range(rank):
            per_rank.append(kron_rows(group[:, r], dim, normalize=normalize))  # (columns, dim)
        stacked = torch.stack(per_rank, dim=1)  # (columns, rank, dim)
        groups.append(stacked if keep_rank else stacked.sum(1))
    return torch.stack(groups).reshape(*batch, *((rank,) if keep_rank else ()), dim)


@pytest.fixture(scope="session")
def kron_reference() -> Callable[..., torch.Tensor]:
    """:func:`chained_kron` (session-scoped, so hypothesis tests may use it)."""
    return chained_kron
