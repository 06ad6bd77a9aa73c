"""The plain dense reference every algebra property is checked against."""

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F


def chained_kron(leaves: torch.Tensor, dim: int, *, keep_rank: bool = False, normalize: bool = False) -> torch.Tensor:
    """Loop over batch entries and ranks: ``torch.kron`` of the leaves left to right, cut, summed.

    Args:
        leaves: ``(*batch, rank, order, q)``.
        dim: cut length.
        keep_rank: stack the ranks instead of summing them.
        normalize: ``F.layer_norm`` over the whole product after every ``torch.kron``.

    Returns:
        ``(*batch, dim)`` or ``(*batch, rank, dim)``.
    """
    *batch, rank, order, q = leaves.shape
    rows = []
    for entry in leaves.reshape(-1, rank, order, q):
        per_rank = []
        for r in range(rank):
            product = entry[r, 0]
            for n in range(1, order):
                product = torch.kron(product, entry[r, n])
                if normalize:
                    product = F.layer_norm(product, product.shape)
            per_rank.append(product[:dim])
        stacked = torch.stack(per_rank)
        rows.append(stacked if keep_rank else stacked.sum(0))
    return torch.stack(rows).reshape(*batch, *((rank,) if keep_rank else ()), dim)


@pytest.fixture(scope="session")
def kron_reference() -> Callable[..., torch.Tensor]:
    """:func:`chained_kron` (session-scoped, so hypothesis tests may use it)."""
    return chained_kron
