"""The interface every expert bank offers to the combiners."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ExpertBank", "REFERENCE_GAIN", "lora_a_std"]

#: ``calculate_gain('leaky_relu', sqrt(5))``: the gain of ``nn.Linear``'s default init.
REFERENCE_GAIN: float = math.sqrt(2.0 / (1.0 + 5.0))


def lora_a_std(d_in: int) -> float:
    """Standard deviation of LoRA's down matrix under Kaiming-uniform init (``a = sqrt(5)``).

    The bound is ``gain * sqrt(3 / d_in) = 1 / sqrt(d_in)``, so the std is ``1 / sqrt(3 d_in)``.
    """
    return 1.0 / math.sqrt(3.0 * d_in)


class ExpertBank(nn.Module):
    """A bank of ``S`` low-rank experts (skills) for one linear map ``d_in -> d_out``.

    Every bank can give its skills as dense matrices; combiners weight and sum them.

    Shapes (legend: ``s`` skill, ``i`` d_in, ``o`` d_out, ``r`` LoRA rank):
        ``skill_matrices()``: ``A (s, i, r)``, ``B (s, r, o)``.
        ``summed_matrices()``: ``A (i, r)``, ``B (r, o)``, the sum over skills.
    """

    d_in: int
    d_out: int
    lora_rank: int

    @property
    def n_skills(self) -> int:
        """Number of skills ``S``."""
        raise NotImplementedError

    def skill_matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``A (S, d_in, r)``, ``B (S, r, d_out)``."""
        raise NotImplementedError

    def summed_matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``A (d_in, r)``, ``B (r, d_out)``: the skills summed (LoRA, TLoRA)."""
        down, up = self.skill_matrices()
        return down.sum(0), up.sum(0)
