"""The no-routing combiner of LoRA and TLoRA."""

from __future__ import annotations

import torch

from tensoradapt.experts.base import ExpertBank
from tensoradapt.routing.base import Combiner, TaskIds

__all__ = ["SumCombiner"]


class SumCombiner(Combiner):
    """No routing: the bank's skills summed with weight 1 (LoRA: its one skill; TLoRA: its ranks).

    ``A = sum_s A_s``, ``B = sum_s B_s``; the same matrices for every task.
    """

    def adapter_matrices(self, bank: ExpertBank, task_ids: TaskIds | None) -> tuple[torch.Tensor, torch.Tensor]:
        return bank.summed_matrices()
