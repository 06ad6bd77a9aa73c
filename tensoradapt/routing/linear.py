"""Linear routing (Poly) and rank routing (TensorPoly-I)."""

from __future__ import annotations

import torch

from tensoradapt.algebra.entangled import check_positive
from tensoradapt.experts.base import ExpertBank
from tensoradapt.experts.tlora import TLoRABank
from tensoradapt.routing.base import TaskIds, TaskRouter

__all__ = ["LinearRouter", "RankRouter", "mix_skills"]


def mix_skills(
    weights: torch.Tensor, down: torch.Tensor, up: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted sums of skills, legend ``s`` skill, ``i`` d_in, ``r`` rank, ``o`` d_out.

    ``A = sum_s w_s A_s`` (``...s, s i r -> ... i r``), ``B = sum_s w_s B_s`` (``...s, s r o -> ... r o``).

    Args:
        weights: ``(S,)`` or ``(batch, S)``; down: ``(S, d_in, r)``; up: ``(S, r, d_out)``.
    """
    weights = weights.to(down.dtype)
    if weights.dim() == 1:
        return torch.tensordot(weights, down, dims=1), torch.tensordot(weights, up, dims=1)
    s = down.shape[0]
    mixed_down = (weights @ down.reshape(s, -1)).reshape(-1, *down.shape[1:])
    mixed_up = (weights @ up.reshape(s, -1)).reshape(-1, *up.shape[1:])
    return mixed_down, mixed_up


class LinearRouter(TaskRouter):
    """Poly (Ponti et al., 2023): a task x skill logit matrix ``Z (n_tasks, S)`` mixes the skills.

    Weights: relaxed-Bernoulli samples in training (or sigmoids), normalised by their sum; the
    task's adapter is ``A_t = sum_s w[t, s] A_s``, ``B_t = sum_s w[t, s] B_s``.
    """

    def __init__(self, n_tasks: int, n_skills: int, **kwargs) -> None:
        check_positive("n_skills", n_skills)
        super().__init__(n_tasks, (n_skills,), **kwargs)

    def adapter_matrices(self, bank: ExpertBank, task_ids: TaskIds | None) -> tuple[torch.Tensor, torch.Tensor]:
        return mix_skills(self.weights(task_ids), *bank.skill_matrices())


class RankRouter(LinearRouter):
    """TensorPoly-I: a task x tensor-rank matrix ``(n_tasks, R)`` weights the ``R`` simple tensors.

    Mixing happens after the tensor product: ``A_t = sum_k w[t, k] (x)_n A[k, n]`` (per LoRA
    column), the same for ``B``. It is Poly over a TLoRA bank whose skills are its rank components.
    With mean-normalised weights (``normalization='mean'``, the library's default for this
    method) uniform routing is exactly the bank's TLoRA; with the paper's sum-normalised weights
    it is TLoRA divided by ``R`` on both ``A`` and ``B``.
    On a `TLoRABank` the weights fold into the leaves (`TLoRABank.rank_mixed_matrices`) rather
    than mixing the ``R`` dense simple tensors (TensorPoly-I's training step: 1.25x faster on a
    tiny T5, ``benchmarks/step_time.py``).
    """

    def __init__(self, n_tasks: int, tensor_rank: int, **kwargs) -> None:
        check_positive("tensor_rank", tensor_rank)
        super().__init__(n_tasks, tensor_rank, **kwargs)

    def adapter_matrices(self, bank: ExpertBank, task_ids: TaskIds | None) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(bank, TLoRABank) and not bank.normalize_outer:
            return bank.rank_mixed_matrices(self.weights(task_ids))
        return super().adapter_matrices(bank, task_ids)
