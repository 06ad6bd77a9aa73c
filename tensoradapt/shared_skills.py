"""Compress a library of LoRAs into fewer shared Poly skills: one layer's fit.

``L`` LoRAs give ``L`` task updates of one layer, ``dW_t = A_t B_t`` (``A_t (d_in, r)``,
``B_t (r, d_out)``, scaling folded into ``B_t``). A Poly layer of ``S < L`` skills with identity
routing computes task ``t``'s update as

    dW_t' = (sum_s w_ts A_s) (sum_s w_ts B_s),

one routing row ``w_t (S,)`` per task, shared skills ``A_s``, ``B_s``. `fit_shared_skills` finds
``w``, ``A_s``, ``B_s`` minimising the relative error over the library,

    sum_t ||dW_t' - dW_t||_F^2 / sum_t ||dW_t||_F^2,

in two steps, in float64:

1. **Start**: the best rank-``S`` approximation (truncated SVD) of the ``L x (d_in r + r d_out)``
   matrix whose row ``t`` is ``[vec A_t, vec B_t]``. Where the LoRAs are themselves mixtures of
   ``S`` skills (a Poly model's tasks, written out by `tensoradapt.export_lora_library`) this row
   matrix has rank ``S`` and the start is already exact.
2. **Refinement**: L-BFGS (strong Wolfe line search) on the error above, which the factor-space
   start does not minimise: independently trained LoRAs sit in arbitrary gauges
   (``A G``, ``G^-1 B``), so only the products are comparable. The error is evaluated from
   ``r x r`` Gram matrices, never from ``d_in x d_out`` ones.

The routing rows are scaled by ``sqrt(L)`` (and the skills by ``1 / sqrt(L)``), so a weight is of
order 1 rather than ``1 / sqrt(L)``; the updates do not change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["SharedSkills", "fit_shared_skills", "stack_pairs"]


@dataclass
class SharedSkills:
    """One layer's fitted Poly skills.

    Attributes:
        weights: ``(L, S)`` routing rows (identity routing: the weights themselves).
        down: ``(S, d_in, r)`` the skills' ``A``.
        up: ``(S, r, d_out)`` the skills' ``B``.
        error: the relative Frobenius error over the library after the fit.
    """

    weights: torch.Tensor
    down: torch.Tensor
    up: torch.Tensor
    error: float


def stack_pairs(pairs: Sequence[tuple[torch.Tensor, torch.Tensor] | None], d_in: int, d_out: int,
           rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, d_in, r)`` and ``(L, r, d_out)`` float64, zero-padded ranks; a missing module is all zero."""
    down = torch.zeros(len(pairs), d_in, rank, dtype=torch.float64)
    up = torch.zeros(len(pairs), rank, d_out, dtype=torch.float64)
    for task, pair in enumerate(pairs):
        if pair is not None:
            a, b = pair
            down[task, :, : a.shape[1]] = a.double()
            up[task, : b.shape[0]] = b.double()
    return down, up


def _squared_error(weights: torch.Tensor, skill_down: torch.Tensor, skill_up: torch.Tensor, down: torch.Tensor,
                   up: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``sum_t ||A_t' B_t' - A_t B_t||^2`` from ``r x r`` Gram matrices; ``target`` is ``sum_t ||A_t B_t||^2``."""
    fitted_down = torch.einsum("ts,sir->tir", weights, skill_down)  # (L, d_in, r)
    fitted_up = torch.einsum("ts,sro->tro", weights, skill_up)  # (L, r, d_out)
    fitted = (fitted_down.mT @ fitted_down * (fitted_up @ fitted_up.mT)).sum()
    cross = ((down.mT @ fitted_down) * (up @ fitted_up.mT)).sum()
    return fitted - 2 * cross + target


def fit_shared_skills(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor] | None],
    n_skills: int,
    *,
    d_in: int,
    d_out: int,
    rank: int,
    steps: int = 200,
) -> SharedSkills:
    """Fit ``n_skills`` shared Poly skills and one routing row per task to one layer's LoRAs.

    Args:
        pairs: per task ``(A_t (d_in, r_t), B_t (r_t, d_out))`` with the scaling folded into
            ``B_t``, or ``None`` where that LoRA leaves the layer alone (a zero update).
        n_skills: ``S``, at least 1.
        d_in: the layer's input dim.
        d_out: the layer's output dim.
        rank: ``r``, the skills' LoRA rank (at least every ``r_t``).
        steps: L-BFGS iterations of the refinement (0: the SVD start alone).

    Returns:
        `SharedSkills`, float64 on the CPU.
    """
    if n_skills < 1:
        raise ValueError(f"n_skills must be an integer >= 1, got {n_skills}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    n_tasks = len(pairs)
    down, up = stack_pairs(pairs, d_in, d_out, rank)
    target = ((down.mT @ down) * (up @ up.mT)).sum()
    if float(target) == 0.0:  # no LoRA adapts this layer
        zeros = torch.zeros(n_tasks, n_skills, dtype=torch.float64)
        return SharedSkills(zeros, torch.zeros(n_skills, d_in, rank, dtype=torch.float64),
                            torch.zeros(n_skills, rank, d_out, dtype=torch.float64), 0.0)

    rows = torch.cat([down.flatten(1), up.flatten(1)], dim=1)  # (L, d_in r + r d_out)
    left, singular, right_t = torch.linalg.svd(rows, full_matrices=False)
    kept = min(n_skills, singular.numel())
    weights = torch.zeros(n_tasks, n_skills, dtype=torch.float64)
    skills = torch.zeros(n_skills, rows.shape[1], dtype=torch.float64)
    scale = math.sqrt(n_tasks)
    weights[:, :kept] = left[:, :kept] * scale
    skills[:kept] = singular[:kept, None] * right_t[:kept] / scale
    skill_down = skills[:, : d_in * rank].reshape(n_skills, d_in, rank).clone()
    skill_up = skills[:, d_in * rank :].reshape(n_skills, rank, d_out).clone()

    if steps > 0:
        parameters = [weights.requires_grad_(), skill_down.requires_grad_(), skill_up.requires_grad_()]
        optimizer = torch.optim.LBFGS(parameters, lr=1.0, max_iter=steps, history_size=20, tolerance_grad=1e-14,
                                      tolerance_change=1e-16, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = _squared_error(weights, skill_down, skill_up, down, up, target) / target
            loss.backward()
            return loss

        optimizer.step(closure)
        weights, skill_down, skill_up = (t.detach() for t in parameters)
    with torch.no_grad():
        error = float(_squared_error(weights, skill_down, skill_up, down, up, target).clamp_min(0) / target) ** 0.5
    return SharedSkills(weights, skill_down, skill_up, error)
