"""Compress a library of LoRAs into fewer shared Poly skills: one layer's fit.

``L`` LoRAs give ``L`` task updates of one layer, ``dW_t = A_t B_t`` (``A_t (d_in, r)``,
``B_t (r, d_out)``, scaling folded into ``B_t``). A Poly layer of ``S < L`` skills with identity
routing computes task ``t``'s update as

    dW_t' = (sum_s w_ts A_s) (sum_s w_ts B_s),

one routing row ``w_t (S,)`` per task, shared skills ``A_s``, ``B_s``. `fit_shared_skills` finds
``w``, ``A_s``, ``B_s`` minimising the mean over tasks of each task's squared relative error,

    (1 / L) sum_t ||dW_t' - dW_t||_F^2 / ||dW_t||_F^2,

so every LoRA counts the same whatever its norm: independently trained LoRAs differ in update norm
by orders of magnitude (learning rate, steps, the task), and an unweighted sum of squared errors
would spend the skills on the largest and leave a small one with an error above 1 (worse than no
adapter: 35 for one of two LoRAs trained apart on a tiny random BERT). The fit runs on the
normalised library, ``(A_t, B_t) / sqrt(||dW_t||)`` (a LoRA that leaves the layer alone keeps the
mean norm's scale), and the routing rows are scaled back by ``sqrt(||dW_t||)``, which scales task
``t``'s update by ``||dW_t||`` and no other's. In two steps, in float64:

1. **Start**: the best rank-``S`` approximation (truncated SVD) of the ``L x (d_in r + r d_out)``
   matrix whose row ``t`` is ``[vec A_t, vec B_t]`` (normalised). Where the LoRAs are themselves
   mixtures of ``S`` skills (a Poly model's tasks, written out by `tensoradapt.export_lora_library`)
   this row matrix has rank ``S`` (normalising scales rows) and the start is already exact.
2. **Refinement**: L-BFGS (strong Wolfe line search) on the error above, which the factor-space
   start does not minimise: independently trained LoRAs sit in arbitrary gauges
   (``A G``, ``G^-1 B``), so only the products are comparable. The error is evaluated from
   ``r x r`` Gram matrices, never from ``d_in x d_out`` ones.

The routing rows are scaled by ``sqrt(L)`` (and the skills by ``1 / sqrt(L)``), so a weight is of
order 1 rather than ``1 / sqrt(L)``; the updates do not change.

`SharedSkills` reports both the relative error over the library (``error``: the norm-weighted one
`tensoradapt.LibraryImport` reports per layer) and each task's (``task_errors``).
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
        error: the relative Frobenius error over the library after the fit,
            ``sqrt(sum_t ||dW_t' - dW_t||^2 / sum_t ||dW_t||^2)``.
        task_errors: ``(L,)`` each task's ``||dW_t' - dW_t|| / ||dW_t||`` (its absolute error
            where the LoRA leaves the layer alone).
    """

    weights: torch.Tensor
    down: torch.Tensor
    up: torch.Tensor
    error: float
    task_errors: torch.Tensor


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


def _squared_errors(weights: torch.Tensor, skill_down: torch.Tensor, skill_up: torch.Tensor, down: torch.Tensor,
                    up: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(L,)`` ``||A_t' B_t' - A_t B_t||^2`` from ``r x r`` Gram matrices; ``targets`` ``(L,)`` is ``||A_t B_t||^2``."""
    fitted_down = torch.einsum("ts,sir->tir", weights, skill_down)  # (L, d_in, r)
    fitted_up = torch.einsum("ts,sro->tro", weights, skill_up)  # (L, r, d_out)
    fitted = (fitted_down.mT @ fitted_down * (fitted_up @ fitted_up.mT)).sum((1, 2))
    cross = ((down.mT @ fitted_down) * (up @ fitted_up.mT)).sum((1, 2))
    return fitted - 2 * cross + targets


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
    targets = ((down.mT @ down) * (up @ up.mT)).sum((1, 2))  # (L,) ||dW_t||^2
    if float(targets.sum()) == 0.0:  # no LoRA adapts this layer
        zeros = torch.zeros(n_tasks, n_skills, dtype=torch.float64)
        return SharedSkills(zeros, torch.zeros(n_skills, d_in, rank, dtype=torch.float64),
                            torch.zeros(n_skills, rank, d_out, dtype=torch.float64), 0.0,
                            torch.zeros(n_tasks, dtype=torch.float64))
    norms = targets.sqrt()
    scales = torch.where(norms > 0, norms, norms[norms > 0].mean())  # (L,) what each task is divided by
    unit_down = down / scales.sqrt()[:, None, None]
    unit_up = up / scales.sqrt()[:, None, None]
    unit_targets = targets / scales.square()  # 1, or 0 for a LoRA that leaves the layer alone

    rows = torch.cat([unit_down.flatten(1), unit_up.flatten(1)], dim=1)  # (L, d_in r + r d_out)
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
            loss = _squared_errors(weights, skill_down, skill_up, unit_down, unit_up, unit_targets).mean()
            loss.backward()
            return loss

        optimizer.step(closure)
        weights, skill_down, skill_up = (t.detach() for t in parameters)
    weights = weights * scales.sqrt()[:, None]  # task t's update times ||dW_t||: back to the LoRAs' units
    with torch.no_grad():
        squared = _squared_errors(weights, skill_down, skill_up, down, up, targets).clamp_min(0)
    error = float(squared.sum() / targets.sum()) ** 0.5
    task_errors = (squared / torch.where(targets > 0, targets, torch.ones_like(targets))).sqrt()
    return SharedSkills(weights, skill_down, skill_up, error, task_errors)
