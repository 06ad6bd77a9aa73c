"""LoRA bank: ``S`` dense skills ``A_s (d_in x r)``, ``B_s (r x d_out)``."""

from __future__ import annotations

import math

import torch
from torch import nn

from tensoradapt.algebra.entangled import check_positive
from tensoradapt.experts.base import ExpertBank

__all__ = ["LoRABank"]


class LoRABank(ExpertBank):
    """Dense LoRA skills: plain LoRA is the one-skill bank, Poly / MHR use ``S`` skills.

    Init follows LoRA: ``A`` Kaiming-uniform (``a = sqrt(5)``, as ``nn.Linear``), ``B`` zero, so the
    delta starts at zero and both sides still receive gradient (``dL/dB = (x A)^T g``).

    Attributes:
        ``down``: ``(S, d_in, r)``; ``up``: ``(S, r, d_out)``.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        lora_rank: int,
        n_skills: int = 1,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("d_in", d_in), ("d_out", d_out), ("lora_rank", lora_rank), ("n_skills", n_skills)):
            check_positive(name, value)
        self.d_in, self.d_out, self.lora_rank = d_in, d_out, lora_rank
        self.down = nn.Parameter(torch.empty(n_skills, d_in, lora_rank, dtype=dtype, device=device))
        self.up = nn.Parameter(torch.zeros(n_skills, lora_rank, d_out, dtype=dtype, device=device))
        bound = 1.0 / math.sqrt(d_in)
        with torch.no_grad():
            self.down.uniform_(-bound, bound)

    @property
    def n_skills(self) -> int:
        return self.down.shape[0]

    def skill_matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.down, self.up

    def summed_matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.n_skills == 1:
            return self.down[0], self.up[0]
        return self.down.sum(0), self.up.sum(0)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, lora_rank={self.lora_rank}, n_skills={self.n_skills}"
