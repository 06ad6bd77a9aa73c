"""Multi-head routing (MHR)."""

from __future__ import annotations

import torch

from tensoradapt.algebra.entangled import check_positive
from tensoradapt.experts.base import ExpertBank
from tensoradapt.routing.base import TaskIds, TaskRouter

__all__ = ["MultiHeadRouter", "check_heads_divide"]


def check_heads_divide(n_heads: int, d_in: int, d_out: int) -> None:
    """``ValueError`` naming ``n_heads`` unless it divides both ``d_in`` and ``d_out``."""
    check_positive("n_heads", n_heads)
    for name, dim in (("d_in", d_in), ("d_out", d_out)):
        if dim % n_heads:
            divisors = [h for h in range(1, min(d_in, d_out) + 1) if d_in % h == 0 and d_out % h == 0]
            raise ValueError(
                f"n_heads={n_heads} does not divide {name}={dim}; choose n_heads among the common divisors "
                f"of d_in={d_in} and d_out={d_out} (largest few: {divisors[-5:]})"
            )


class MultiHeadRouter(TaskRouter):
    """MHR (Caccia et al., 2023): Poly routed per head, logits ``(n_tasks, H, S)``.

    ``d_in`` and ``d_out`` are cut into ``H`` contiguous blocks; block ``h`` of ``A`` (rows) and of
    ``B`` (columns) is the mixture of the skills' block ``h`` with head ``h``'s weights:
    ``A_t[h] = sum_s w[t, h, s] A_s[h]`` (legend ``h s, s h i r -> h i r``).
    """

    def __init__(self, n_tasks: int, n_heads: int, n_skills: int, *, d_in: int, d_out: int, **kwargs) -> None:
        check_positive("n_skills", n_skills)
        check_heads_divide(n_heads, d_in, d_out)
        super().__init__(n_tasks, (n_heads, n_skills), **kwargs)
        self.n_heads = n_heads

    def adapter_matrices(self, bank: ExpertBank, task_ids: TaskIds | None) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.weights(task_ids)  # (H, S) or (b, H, S)
        down, up = bank.skill_matrices()  # (S, i, r), (S, r, o)
        s, d_in, r = down.shape
        d_out, h = up.shape[-1], self.n_heads
        weights = weights.to(down.dtype)
        down_heads = down.reshape(s, h, d_in // h, r)
        up_heads = up.reshape(s, r, h, d_out // h)
        mixed_down = torch.einsum("...hs,shir->...hir", weights, down_heads)
        mixed_up = torch.einsum("...hs,srho->...rho", weights, up_heads)
        batch = weights.shape[:-2]
        return mixed_down.reshape(*batch, d_in, r), mixed_up.reshape(*batch, r, d_out)
