"""The interface every expert bank offers to the combiners."""

from __future__ import annotations

import math

import torch
from torch import nn

from tensoradapt.algebra.entangled import EntangledTensor

__all__ = ["ENTANGLED_INITS", "ExpertBank", "REFERENCE_GAIN", "entangled_down_up", "lora_a_std"]

#: ``calculate_gain('leaky_relu', sqrt(5))``: the gain of ``nn.Linear``'s default init.
REFERENCE_GAIN: float = math.sqrt(2.0 / (1.0 + 5.0))


#: Init schemes of entangled banks: ``reference`` (the TensorPoly code) and ``lora`` (zero delta).
ENTANGLED_INITS: tuple[str, ...] = ("reference", "lora")


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


def entangled_down_up(
    d_in: int,
    d_out: int,
    n_down: int,
    n_up: int,
    tensor_rank: int,
    order: int,
    *,
    init: str,
    normalize_outer: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[EntangledTensor, EntangledTensor]:
    """A bank's down vectors ``(n_down, d_in)`` and up vectors ``(n_up, d_out)`` as entangled tensors.

    ``init='reference'``: every leaf of both sides ``uniform(+-g / sqrt(d_in))`` with
    ``g = calculate_gain('leaky_relu', sqrt(5))``, as the TensorPoly code (the delta starts non-zero).
    ``init='lora'``: the down side has LoRA's Kaiming-uniform std, the up side the zero-output
    scheme (materialises to zero with every leaf live), so the delta starts at zero; that needs
    ``tensor_rank >= 2`` at ``order >= 2``.

    Raises:
        ValueError: an unknown ``init``, or ``init='lora'`` with ``tensor_rank < 2`` at ``order >= 2``.
    """
    if init not in ENTANGLED_INITS:
        raise ValueError(f"init must be one of {ENTANGLED_INITS}, got {init!r}")
    if init == "lora" and order >= 2 and tensor_rank < 2:
        raise ValueError(
            f"init='lora' starts the up side at zero with every leaf trainable, which needs tensor_rank >= 2 for "
            f"order >= 2 (got tensor_rank={tensor_rank}, order={order}): a single simple tensor is zero only "
            "if one of its leaves is, and then the others get no gradient; use tensor_rank >= 2 or "
            "init='reference'"
        )
    common = dict(normalize_outer=normalize_outer, dtype=dtype, device=device)
    if init == "reference":
        bound = REFERENCE_GAIN / d_in**0.5
        down_init, up_init = dict(init="leaf_uniform", bound=bound), dict(init="leaf_uniform", bound=bound)
    else:
        std = lora_a_std(d_in)
        down_init, up_init = dict(init="uniform", std=std), dict(init="zero_output", std=std)
    down = EntangledTensor(d_in, tensor_rank, order, batch_shape=(n_down,), **down_init, **common)
    up = EntangledTensor(d_out, tensor_rank, order, batch_shape=(n_up,), **up_init, **common)
    return down, up
