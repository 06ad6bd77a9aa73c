"""Which expert bank and which combiner make each method."""

from __future__ import annotations

import torch

from tensoradapt.config import AdapterConfig
from tensoradapt.experts import LoRABank, RankOneBank, TLoRABank
from tensoradapt.experts.base import ExpertBank
from tensoradapt.routing import (
    Combiner,
    LinearRouter,
    MultiHeadRouter,
    OrderRouter,
    RankRouter,
    SumCombiner,
    TokenRouter,
)

__all__ = ["build_adapter"]


def build_adapter(
    config: AdapterConfig,
    d_in: int,
    d_out: int,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[ExpertBank, Combiner]:
    """The ``(bank, combiner)`` pair of ``config.method`` for a linear map ``d_in -> d_out``.

    | method | bank | combiner |
    |---|---|---|
    | `lora` | `LoRABank` (1 skill) | `SumCombiner` |
    | `tlora` | `TLoRABank` (R ranks) | `SumCombiner` |
    | `poly` | `LoRABank` (S skills) | `LinearRouter` |
    | `mhr` | `LoRABank` (S skills) | `MultiHeadRouter` |
    | `tensorpoly_i` | `TLoRABank` | `RankRouter` |
    | `tensorpoly_ii` | `TLoRABank` | `OrderRouter` |
    | `trex` | `RankOneBank` | `TokenRouter` |
    """
    placement = dict(dtype=dtype, device=device)
    normalization = config.resolved_routing_normalization
    routing = dict(
        noise=config.resolved_routing_noise,
        temperature=config.routing_temperature,
        init_range=config.routing_init_range,
        normalization=normalization,
        **placement,
    )
    method = config.method
    if method == "trex":
        trex_bank = RankOneBank(
            d_in,
            d_out,
            config.trex_down,
            config.trex_up,
            entangled=config.trex_entangled,
            tensor_rank=config.tensor_rank,
            order=config.order,
            init=config.init,
            normalize_outer=config.normalize_outer,
            **placement,
        )
        router = TokenRouter(
            d_in,
            config.trex_down,
            config.trex_up,
            n_clusters=config.trex_n_clusters,
            top_k=config.trex_top_k,
            balance_weight=config.trex_balance_weight,
            prior_mix=config.trex_prior_mix,
            **placement,
        )
        return trex_bank, router
    if method in ("lora", "poly", "mhr"):
        n_skills = 1 if method == "lora" else config.n_skills
        bank: ExpertBank = LoRABank(d_in, d_out, config.lora_rank, n_skills, **placement)
    else:
        # the matched init sizes the leaves for the task's matrices at uniform routing: how the
        # combiner mixes the leaves, and the weight each expert then gets
        routed_sum = method in ("tensorpoly_i", "tensorpoly_ii") and normalization == "sum"
        bank = TLoRABank(
            d_in,
            d_out,
            config.lora_rank,
            config.tensor_rank,
            config.order,
            init=config.init,
            normalize_outer=config.normalize_outer,
            mixing="leaves" if method == "tensorpoly_ii" else "ranks",
            expert_weight=1.0 / config.tensor_rank if routed_sum else 1.0,
            **placement,
        )
    if method in ("lora", "tlora"):
        return bank, SumCombiner()
    if method == "poly":
        return bank, LinearRouter(config.n_tasks, config.n_skills, **routing)
    if method == "mhr":
        return bank, MultiHeadRouter(config.n_tasks, config.n_heads, config.n_skills, d_in=d_in, d_out=d_out, **routing)
    if method == "tensorpoly_i":
        return bank, RankRouter(config.n_tasks, config.tensor_rank, **routing)
    return bank, OrderRouter(config.n_tasks, config.order, config.tensor_rank, **routing)
