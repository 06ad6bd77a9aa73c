"""Leaf sizes of entangled tensors: integer-exact roots."""

from __future__ import annotations

__all__ = ["leaf_size", "integer_root_ceil"]


def integer_root_ceil(value: int, order: int) -> int:
    """Smallest integer ``q`` with ``q ** order >= value``, computed without float rounding.

    Integer Newton iteration for the floor root, started above it at
    ``2 ** ceil(bits(value) / order)``, so it is exact and fast for integers of any size.

    Args:
        value: a positive integer.
        order: the root's order, ``>= 1``.

    Returns:
        ``ceil(value ** (1 / order))``, exact for every integer (perfect powers included,
        where a float root such as ``125 ** (1/3) = 4.999...`` would be off by one).
    """
    if value < 1:
        raise ValueError(f"value must be >= 1, got {value}")
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    root = 1 << -(-value.bit_length() // order)
    while True:
        step = ((order - 1) * root + value // root ** (order - 1)) // order
        if step >= root:
            break
        root = step
    return root if root**order == value else root + 1


def leaf_size(dim: int, order: int) -> int:
    """Size ``q`` of each leaf when a vector of size ``dim`` is an order-``order`` tensor product.

    ``q`` is the smallest integer with ``q ** order >= dim``: the product of the ``order``
    leaves has ``q ** order`` entries and is cut to its first ``dim``. For example
    ``leaf_size(2048, 2) == 46`` and ``leaf_size(512, 2) == 23``.

    Args:
        dim: the vector's size, ``>= 1``.
        order: the number of leaves ``N``, ``>= 1``.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be an integer >= 1, got {order!r}")
    return integer_root_ceil(dim, order)
