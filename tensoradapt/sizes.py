"""How many entries an entangled adapter materialises, and the limit past which a config is refused.

An entangled vector of size ``d`` and order ``N`` is built from ``N`` leaves of
``q = leaf_size(d, N) = ceil(d ** (1/N))`` entries: their product has ``q ** N >= d`` entries
before it is cut to ``d``. Every forward builds these products for the columns of ``A`` and the
rows of ``B`` (TLoRA, TensorPoly-I / -II: ``lora_rank`` of each; entangled T-REX: ``trex_down``
and ``trex_up``), so one adapted layer materialises at least

    entries = n_down * q(d_in, N) ** N + n_up * q(d_out, N) ** N

(the tensor ranks summed inside the contraction; keeping the ``tensor_rank`` simple tensors
apart, as TensorPoly-I's mixed-task batches and ``normalize_outer`` do, multiplies it by
``tensor_rank``, and TensorPoly-II's per-example products by the batch).

For the orders the papers use, ``q ** N`` stays near ``d`` (T0-3B's ``d_ff = 5120``: 1.01 d at
order 2, 1.28 d at order 4). Past ``N ~ log2 d`` the leaves cannot shrink below ``q = 2`` and
``q ** N = 2 ** N`` doubles with every order: order 40 asks for ``2 ** 40`` entries per vector,
8.8 TB in float32 for the two columns of the tiny T5's ``A``.

The limit, `MAX_MATERIALIZED_ENTRIES` = ``2 ** 28`` entries per adapted layer (1.07 GB in
float32), is an absolute cap rather than a multiple of ``d``: it refuses only what no
accelerator holds for every layer of a model, and lets through any wasteful but harmless setting
(order 10 on ``d = 1025``: ``q = 3``, ``59049`` entries, 58 d). The largest real layers stay far
below it: T0-3B's ``wi`` (``d_in = 2048``, ``d_out = 5120``) at order 2 and ``lora_rank = 16``
materialises 116,800 entries, 0.04 % of the cap; a 256k-vocabulary ``lm_head`` at rank 64,
16.5M entries (6 %).

`AdapterConfig.validate` checks the least any layer of ``d >= 2`` needs (``q = 2``), so order 40
is refused before any model exists; `tensoradapt.inject` checks every target with its real dims.
"""

from __future__ import annotations

from tensoradapt.algebra.leaf import leaf_size

__all__ = ["MAX_MATERIALIZED_ENTRIES", "check_materialized_size", "format_bytes", "materialized_entries"]

#: Entries of leaf products one adapted layer may materialise per forward (see the module docstring).
MAX_MATERIALIZED_ENTRIES = 2**28


def _vectors(config) -> tuple[int, int]:
    """``(n_down, n_up)``: entangled columns of ``A`` and rows of ``B``."""
    if config.method == "trex":
        return config.trex_down, config.trex_up
    return config.lora_rank, config.lora_rank


def materialized_entries(config, d_in: int, d_out: int, order: int | None = None) -> int:
    """``n_down * q(d_in, N) ** N + n_up * q(d_out, N) ** N`` for ``config`` on a ``d_in -> d_out`` layer.

    Args:
        config: an `AdapterConfig`; 0 when its method has no entangled vectors.
        d_in, d_out: the layer's dims.
        order: ``N``; ``config.order`` when ``None``.
    """
    if not config.is_entangled:
        return 0
    order = config.order if order is None else order
    n_down, n_up = _vectors(config)
    return n_down * leaf_size(d_in, order) ** order + n_up * leaf_size(d_out, order) ** order


def format_bytes(size: int | float) -> str:
    """Human-readable decimal size: ``format_bytes(8.8e12) == '8.8 TB'``."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if size < 1000:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} EB"


def _largest_order(config, d_in: int, d_out: int) -> int:
    """The largest ``N`` such that every order ``1 .. N`` fits the limit (0 if order 1 does not)."""
    best = 0
    for order in range(1, config.order):
        if materialized_entries(config, d_in, d_out, order) > MAX_MATERIALIZED_ENTRIES:
            break
        best = order
    return best


def check_materialized_size(
    config,
    d_in: int | None = None,
    d_out: int | None = None,
    *,
    itemsize: int = 4,
    dtype_name: str = "float32",
    module: str | None = None,
) -> None:
    """Refuse ``config`` if a layer would materialise more than `MAX_MATERIALIZED_ENTRIES` entries.

    Without dims (``AdapterConfig.validate``) the bound is the least any layer of ``d >= 2``
    needs, ``q = 2`` per leaf; with dims (``inject``) it is the layer's own.

    Raises:
        ValueError: naming the order, the entries and bytes it would need, the limit, and the
            largest order that fits.
    """
    if not config.is_entangled:
        return
    exact = d_in is not None and d_out is not None
    d_in, d_out = (d_in, d_out) if exact else (2, 2)
    entries = materialized_entries(config, d_in, d_out)
    if entries <= MAX_MATERIALIZED_ENTRIES:
        return
    order = config.order
    n_down, n_up = _vectors(config)
    size = entries * itemsize
    if exact:
        where = f"module {module!r} (d_in={d_in}, d_out={d_out}): " if module else f"d_in={d_in}, d_out={d_out}: "
        amount = f"{entries:,} entries"
        how = (
            f"{n_down} * {leaf_size(d_in, order)}**{order} + {n_up} * {leaf_size(d_out, order)}**{order}, the "
            f"products of leaves of q = ceil(d ** (1/{order})) entries for d_in and d_out"
        )
    else:
        where = ""
        amount = f"at least {entries:,} entries"
        how = (
            f"{n_down} + {n_up} vectors of 2**{order}, as the {order} leaves of a vector of any size d >= 2 have "
            f"q >= 2 entries each"
        )
    best = _largest_order(config, d_in, d_out)
    fix = (
        f"use order <= {best} (the papers use 2 to 4)"
        if best
        else "no order fits: lower lora_rank (trex_down / trex_up) or leave this module out of target_modules"
    )
    raise ValueError(
        f"{where}order={order} materialises {amount} per layer and forward ({format_bytes(size)}, {size:,} bytes "
        f"in {dtype_name}): {how}. The limit is {MAX_MATERIALIZED_ENTRIES:,} entries "
        f"({format_bytes(MAX_MATERIALIZED_ENTRIES * itemsize)}) per adapted layer; {fix}"
    )
