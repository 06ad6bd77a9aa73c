"""The interface every expert bank offers to the combiners."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from tensoradapt.algebra.entangled import EntangledTensor

__all__ = [
    "ENTANGLED_INITS",
    "LEAF_MIXINGS",
    "ExpertBank",
    "REFERENCE_GAIN",
    "entangled_down_up",
    "MatchedInit",
    "lora_a_std",
    "matched_init",
]

#: ``calculate_gain('leaky_relu', sqrt(5))``: the gain of ``nn.Linear``'s default init.
REFERENCE_GAIN: float = math.sqrt(2.0 / (1.0 + 5.0))


#: Init schemes of entangled banks: ``matched`` (the default: LoRA's scale and pace, zero delta),
#: ``lora`` (LoRA's scale, zero delta through shared leaves) and ``reference`` (the TensorPoly code).
ENTANGLED_INITS: tuple[str, ...] = ("matched", "lora", "reference")
#: How a bank's leaves are combined into a task's vectors: ``ranks`` (the ``R`` simple tensors are
#: summed, weighted: TLoRA, TensorPoly-I, T-REX) or ``leaves`` (each order's ``R`` leaves are
#: summed, weighted, before the product: TensorPoly-II).
LEAF_MIXINGS: tuple[str, ...] = ("ranks", "leaves")


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


class MatchedInit(NamedTuple):
    """Leaf half-widths and leaf scales of ``init='matched'`` (see `matched_init`)."""

    down_bound: float
    down_scale: float
    up_bound: float
    up_scale: float


def matched_init(
    d_in: int, tensor_rank: int, order: int, *, mixing: str = "ranks", expert_weight: float = 1.0
) -> MatchedInit:
    """``init='matched'``: entangled ``A`` and ``B`` that start as LoRA's and move at LoRA's pace under Adam.

    Adam moves every parameter entry by about ``lr`` per step, whatever its gradient's size, so
    how fast a leaf changes *relative to its size* is ``lr / size``. LoRA's ``A`` entries have
    standard deviation ``sigma = lora_a_std(d_in)`` and its ``B`` starts at zero and moves by
    ``lr`` per entry. The leaves are stored uniform with standard deviation ``s`` and multiplied
    by a constant ``leaf_scale`` ``g`` before the product (`EntangledTensor`), so that:

    * every leaf moves relatively as fast as LoRA's ``A`` (``N`` leaves moving together change
      their product about ``sqrt(N)`` times as much): ``s = sqrt(N) sigma`` (``ranks``). With
      ``leaves`` the ``R`` leaves of an order get gradients of one direction, so their sum moves
      ``R`` leaf steps at once; ``s = R**(1/4) sqrt(N) sigma`` lets it move ``R**(1/4)`` times
      faster than a TLoRA leaf, relative to its size (``R**(1/2)``, exactly as fast, was too slow
      for one simple tensor per task, which has ``R`` times fewer directions to move in than a
      sum of ``R``; ``R**0`` diverged at ``N = 4``: docs, training dynamics);
    * ``A``'s entries get LoRA's standard deviation ``sigma`` at uniform routing;
    * ``B`` is zero (the last leaf of every rank term is zero, scheme ``zero_last``) and Adam's
      first step moves its rows as far as LoRA's ``B`` moves.

    Symbols: ``R`` tensor rank, ``N`` order, ``u = expert_weight`` (the weight of each rank
    component or leaf at uniform routing: 1 without routing or with mean-normalised routing,
    ``1 / R`` with sum-normalised routing). ``mixing='ranks'`` (TLoRA, TensorPoly-I, T-REX):
    ``A = u sum_k (x)_n g a[k, n]``, std ``u sqrt(R) (g s)**N``, and one step of the last leaves
    moves ``B`` by ``u sqrt(R) (g s)**(N-1) g`` times ``lr`` per entry. ``mixing='leaves'``
    (TensorPoly-II): ``A = (x)_n u sum_k g a[k, n]``, std ``(u sqrt(R) g s)**N``, and every last
    leaf gets the same gradient direction, so one step moves ``B`` by
    ``(u sqrt(R) g s)**(N-1) u R g`` times ``lr``. Each ``g`` solves its equation (std ``sigma``,
    pace 1). For ``d_in = 384``, ``R = 8``, ``ranks``: ``s = 0.042``, ``g = 2.4`` (A) and ``2.9``
    (B) at ``N = 2``; ``s = 0.059``, ``g = 5.4`` and ``6.4`` at ``N = 4``. At ``N = 1``, ``R = 1``
    this is LoRA's init exactly (``g = 1``, ``A`` Kaiming-uniform, ``B`` zero).
    """
    if mixing not in LEAF_MIXINGS:
        raise ValueError(f"mixing must be one of {LEAF_MIXINGS}, got {mixing!r}")
    if not expert_weight > 0:
        raise ValueError(f"expert_weight must be > 0, got {expert_weight!r}")
    sigma, rank, n, u = lora_a_std(d_in), tensor_rank, order, expert_weight
    # the stored leaves' size; mixed first (leaves), the R leaves of an order move in lockstep
    size = math.sqrt(n) * (rank**0.25 if mixing == "leaves" else 1.0) * sigma
    if mixing == "ranks":
        down_scale = (sigma / (u * math.sqrt(rank))) ** (1.0 / n) / size
        up_scale = (u * math.sqrt(rank) * size ** (n - 1)) ** (-1.0 / n)
    else:
        down_scale = sigma ** (1.0 / n) / (u * math.sqrt(rank) * size)
        up_scale = ((u * math.sqrt(rank) * size) ** (n - 1) * u * rank) ** (-1.0 / n)
    bound = math.sqrt(3.0) * size
    return MatchedInit(bound, down_scale, bound, up_scale)


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
    mixing: str = "ranks",
    expert_weight: float = 1.0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[EntangledTensor, EntangledTensor]:
    """A bank's down vectors ``(n_down, d_in)`` and up vectors ``(n_up, d_out)`` as entangled tensors.

    ``init='matched'`` (default): the down side's entries have LoRA's standard deviation and the
    up side is zero through a zero last leaf per rank term, with leaf sizes and leaf scales from
    `matched_init` (which reads ``mixing`` and ``expert_weight``), so that the delta starts at
    zero and grows at about LoRA's pace under Adam, for any rank and order.
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
    if init == "matched":
        matched = matched_init(d_in, tensor_rank, order, mixing=mixing, expert_weight=expert_weight)
        down_init = dict(init="leaf_uniform", bound=matched.down_bound, leaf_scale=matched.down_scale)
        up_init = dict(init="zero_last", bound=matched.up_bound, leaf_scale=matched.up_scale)
    elif init == "reference":
        bound = REFERENCE_GAIN / d_in**0.5
        down_init, up_init = dict(init="leaf_uniform", bound=bound), dict(init="leaf_uniform", bound=bound)
    else:
        std = lora_a_std(d_in)
        down_init, up_init = dict(init="uniform", std=std), dict(init="zero_output", std=std)
    down = EntangledTensor(d_in, tensor_rank, order, batch_shape=(n_down,), **down_init, **common)
    up = EntangledTensor(d_out, tensor_rank, order, batch_shape=(n_up,), **up_init, **common)
    return down, up
