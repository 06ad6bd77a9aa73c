"""``EntangledTensor``: a (batch of) vector(s) stored as a sum of tensor products of small leaves."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from tensoradapt.algebra.contraction import materialize
from tensoradapt.algebra.init import INIT_SCHEMES, init_leaves_
from tensoradapt.algebra.leaf import leaf_size

__all__ = ["EntangledTensor", "check_positive"]


def check_positive(name: str, value: int) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is an integer ``>= 1``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class EntangledTensor(nn.Module):
    """Vectors of size ``dim`` written as a sum of ``rank`` tensor products of ``order`` leaves.

    ``v = sum_{r<R} v[r,0] (x) v[r,1] (x) ... (x) v[r,N-1]``, flattened row-major (the order of
    ``torch.kron``) and cut to its first ``dim`` entries, each leaf of size
    ``q = leaf_size(dim, order)``. Order 1 is a plain dense vector (summed over ranks).
    ``EntangledTensor(dim=512, rank=8, order=2)`` holds ``8 * 2 * 23 = 368`` parameters.

    Args:
        dim: vector size ``d``.
        rank: number of simple tensors ``R``.
        order: number of leaves per simple tensor ``N``.
        batch_shape: leading shape of the vectors (independent unless ``normalize_outer``).
        init: one of ``normal``, ``uniform``, ``leaf_uniform``, ``zero_output`` (see
            [`tensoradapt.algebra.init`][tensoradapt.algebra.init]).
        std: target standard deviation of materialised entries.
        bound: leaf half-width for ``leaf_uniform``.
        leaf_scale: a constant ``g`` every leaf is multiplied by before the product:
            ``v = sum_r (g v[r,0]) (x) ... (x) (g v[r,N-1])``. Under Adam, whose step is about
            ``lr`` per entry whatever the gradient's size, it is a learning-rate multiplier of
            the leaves: they are stored at a small scale (so one step moves them by a sizeable
            share) and ``g`` restores the vector's size. 1 (the default) stores the leaves as they
            are multiplied.
        normalize_outer: parameter-free LayerNorm (eps ``1e-5``) after each pairwise outer
            product, jointly over the last batch axis and the product: once the first ``m`` leaves
            are multiplied (``m = 2 .. N``) each block ``(batch_shape[-1], q ** m)`` is normalised,
            one block per rank component and per index of ``batch_shape[:-1]`` (each ``(q ** m,)``
            alone when ``batch_shape`` is empty). With ``batch_shape=(r,)`` holding LoRA's ``r`` columns this
            is the TensorPoly reference's LayerNorm over ``[r, q * q]``; the batch entries are then
            no longer independent.
        dtype: of the leaves (floating point only); the default dtype when ``None``.
        device: of the leaves.

    Shapes:
        ``leaves``: ``(*batch_shape, rank, order, q)``; ``forward()``: ``(*batch_shape, dim)``.
        ``scaled_leaves()``: the leaves times ``leaf_scale``, the factors of the product.
    """

    def __init__(
        self,
        dim: int,
        rank: int,
        order: int,
        *,
        batch_shape: Sequence[int] = (),
        init: str = "normal",
        std: float = 1.0,
        bound: float | None = None,
        leaf_scale: float = 1.0,
        normalize_outer: bool = False,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_positive("dim", dim)
        if isinstance(leaf_scale, bool) or not isinstance(leaf_scale, (int, float)) or not 0 < leaf_scale < math.inf:
            raise ValueError(f"leaf_scale must be a finite number > 0, got {leaf_scale!r}")
        check_positive("rank", rank)
        check_positive("order", order)
        batch_shape = tuple(batch_shape)
        for size in batch_shape:
            check_positive("batch_shape entries", size)
        if init not in INIT_SCHEMES:
            raise ValueError(f"init must be one of {INIT_SCHEMES}, got {init!r}")
        dtype = dtype or torch.get_default_dtype()
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        self.dim, self.rank, self.order = dim, rank, order
        self.batch_shape = batch_shape
        self.leaf_size = leaf_size(dim, order)
        self.normalize_outer = normalize_outer
        self.leaf_scale = float(leaf_scale)
        self.leaves = nn.Parameter(
            torch.empty(*batch_shape, rank, order, self.leaf_size, dtype=dtype, device=device)
        )
        init_leaves_(self.leaves, init, std=std, bound=bound)

    @property
    def num_parameters(self) -> int:
        """``prod(batch_shape) * rank * order * q``."""
        return math.prod(self.batch_shape) * self.rank * self.order * self.leaf_size

    def scaled_leaves(self) -> torch.Tensor:
        """The factors of the product, ``leaves * leaf_scale`` (the parameter itself when the scale is 1)."""
        return self.leaves if self.leaf_scale == 1.0 else self.leaves * self.leaf_scale

    def forward(self, *, keep_rank: bool = False) -> torch.Tensor:
        """Materialise: ``(*batch_shape, dim)``, or ``(*batch_shape, rank, dim)`` with ``keep_rank``."""
        return materialize(self.scaled_leaves(), self.dim, keep_rank=keep_rank, normalize_outer=self.normalize_outer)

    def full(self) -> torch.Tensor:
        """The uncut tensor ``(*batch_shape, q, ..., q)`` (``order`` axes of size ``q``)."""
        q = self.leaf_size
        return materialize(self.scaled_leaves(), q**self.order, normalize_outer=self.normalize_outer).reshape(
            *self.batch_shape, *((q,) * self.order)
        )

    def to_cp(self):
        """The CP tensor (tensorly) of the uncut ``(q,) * order`` tensor.

        Weights are ones and factor ``n`` is ``(q, rank)``; ``tensorly.cp_to_tensor`` of it equals
        [`full`][tensoradapt.algebra.entangled.EntangledTensor.full]. Only for an unbatched tensor
        without ``normalize_outer``.
        """
        from tensoradapt.algebra.interop import to_cp

        return to_cp(self)

    @classmethod
    def from_dense(cls, vectors: torch.Tensor, rank: int, order: int, **kwargs) -> tuple["EntangledTensor", float]:
        """Fit leaves to ``vectors`` ``(*batch, dim)``; returns the module and the relative error.

        See [`fit_leaves`][tensoradapt.algebra.interop.fit_leaves].
        """
        from tensoradapt.algebra.interop import fit_leaves

        leaves, error = fit_leaves(vectors, rank, order, **kwargs)
        module = cls(
            vectors.shape[-1], rank, order, batch_shape=vectors.shape[:-1], dtype=vectors.dtype, device=vectors.device
        )
        with torch.no_grad():
            module.leaves.copy_(leaves)
        return module, error

    def extra_repr(self) -> str:
        text = (
            f"dim={self.dim}, rank={self.rank}, order={self.order}, leaf_size={self.leaf_size}, "
            f"batch_shape={self.batch_shape}"
        )
        return text + (f", leaf_scale={self.leaf_scale:.4g}" if self.leaf_scale != 1.0 else "")
