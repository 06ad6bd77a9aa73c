"""Rank-one bank (T-REX): ``r1`` down vectors and ``r2`` up vectors whose pairs are the experts."""

from __future__ import annotations

import math

import torch
from torch import nn

from tensoradapt.algebra.entangled import check_positive
from tensoradapt.experts.base import ENTANGLED_INITS, ExpertBank, entangled_down_up

__all__ = ["RankOneBank"]


class RankOneBank(ExpertBank):
    """T-REX's mix-and-match experts: every pair ``(i, j)`` is the rank-one expert ``b_j a_i^T``.

    ``r1`` down vectors ``a_i (d_in,)`` and ``r2`` up vectors ``b_j (d_out,)`` make ``r1 * r2``
    experts for the price of ``r1 + r2`` vectors. Expert ``s = i * r2 + j`` maps
    ``x -> b_j (a_i . x)``; a token router weights them (`TokenRouter`).

    With ``entangled=True`` every vector is an `EntangledTensor` of rank ``tensor_rank`` and
    order ``order`` (T-REX on TLoRA leaves): ``r1 * R * N * q(d_in, N) + r2 * R * N * q(d_out, N)``
    parameters instead of ``r1 * d_in + r2 * d_out``.

    Init (``init``, as `AdapterConfig.init`):
        Dense vectors: LoRA's, whatever ``init`` says (the T-REX code is PEFT LoRA): every ``a_i``
        Kaiming-uniform (``uniform(+-1/sqrt(d_in))``, as ``nn.Linear``), every ``b_j`` zero, so the
        delta starts at zero.
        Entangled, ``matched`` (default): ``a`` has LoRA's std, ``b`` is zero through a zero last
        leaf per rank term, leaf sizes and scales from `matched_init` (LoRA's pace under Adam).
        Entangled, ``reference``: every leaf ``uniform(+-gain / sqrt(d_in))`` (the TensorPoly code;
        ``b`` is not zero). Entangled, ``lora``: ``a`` has LoRA's std, ``b`` the zero-output scheme
        (the product is zero, every leaf still gets gradient), which needs ``tensor_rank >= 2``
        when ``order >= 2``.

    ``normalize_outer`` (entangled only), by analogy with TLoRA's columns: the ``r1`` down vectors
    are the columns of ``A (d_in, r1)`` and are LayerNormed together after every pairwise product,
    over ``(r1, q_in ** m)`` per rank component, and the ``r2`` up vectors (the rows of
    ``B (r2, d_out)``) together over ``(r2, q_out ** m)``; down and up vectors are never mixed.

    Shapes (legend ``i`` d_in, ``o`` d_out, ``p`` r1, ``q`` r2):
        ``vectors()``: ``A (i, p)`` (column ``i`` is ``a_i``), ``B (q, o)`` (row ``j`` is ``b_j``).
        ``skill_matrices()``: ``(p*q, i, 1)``, ``(p*q, 1, o)``, expert ``s = i * r2 + j``.

    Attributes:
        ``down``: ``Parameter (r1, d_in)`` or `EntangledTensor` ``(d_in, R, N, batch_shape=(r1,))``.
        ``up``: ``Parameter (r2, d_out)`` or `EntangledTensor` ``(d_out, R, N, batch_shape=(r2,))``.
    """

    lora_rank = 1

    def __init__(
        self,
        d_in: int,
        d_out: int,
        n_down: int,
        n_up: int,
        *,
        entangled: bool = False,
        tensor_rank: int = 1,
        order: int = 2,
        init: str = "matched",
        normalize_outer: bool = False,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("d_in", d_in), ("d_out", d_out), ("n_down", n_down), ("n_up", n_up)):
            check_positive(name, value)
        if init not in ENTANGLED_INITS:
            raise ValueError(f"init must be one of {ENTANGLED_INITS}, got {init!r}")
        self.d_in, self.d_out = d_in, d_out
        self.n_down, self.n_up = n_down, n_up
        self.entangled = bool(entangled)
        if not self.entangled:
            self.down = nn.Parameter(torch.empty(n_down, d_in, dtype=dtype, device=device))
            self.up = nn.Parameter(torch.zeros(n_up, d_out, dtype=dtype, device=device))
            with torch.no_grad():
                self.down.uniform_(-1.0 / math.sqrt(d_in), 1.0 / math.sqrt(d_in))
            return
        check_positive("tensor_rank", tensor_rank)
        check_positive("order", order)
        self.down, self.up = entangled_down_up(
            d_in, d_out, n_down, n_up, tensor_rank, order, init=init, normalize_outer=normalize_outer,
            dtype=dtype, device=device,
        )

    @property
    def n_skills(self) -> int:
        """``r1 * r2`` experts."""
        return self.n_down * self.n_up

    def vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``A (d_in, r1)`` whose columns are the ``a_i``, ``B (r2, d_out)`` whose rows are the ``b_j``.

        Entangled vectors are materialised here (one contraction per call).
        """
        if self.entangled:
            return self.down().T, self.up()
        return self.down.T, self.up

    def skill_matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every expert as a rank-one LoRA: ``A (r1*r2, d_in, 1)``, ``B (r1*r2, 1, d_out)``; ``s = i * r2 + j``."""
        down, up = self.vectors()
        p, q = self.n_down, self.n_up
        experts_down = down.T.unsqueeze(1).expand(p, q, self.d_in).reshape(p * q, self.d_in, 1)
        experts_up = up.unsqueeze(0).expand(p, q, self.d_out).reshape(p * q, 1, self.d_out)
        return experts_down, experts_up

    def summed_matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The unweighted sum of all experts, ``(sum_i a_i)(sum_j b_j)^T``: ``A (d_in, 1)``, ``B (1, d_out)``."""
        down, up = self.vectors()
        return down.sum(1, keepdim=True), up.sum(0, keepdim=True)

    def extra_repr(self) -> str:
        text = f"d_in={self.d_in}, d_out={self.d_out}, r1={self.n_down}, r2={self.n_up}"
        if self.entangled:
            text += f", entangled(rank={self.down.rank}, order={self.down.order})"
        return text
