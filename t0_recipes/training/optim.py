"""Optimiser and learning-rate schedule of the T0 recipes.

* Adafactor as T-Few and the paper run it: a fixed learning rate (``relative_step=False``,
  ``scale_parameter=False``, ``warmup_init=False``), or AdamW.
* Learning rates by parameter role (`tensoradapt.parameter_groups`): the routing logits train
  with ``lr_routing`` (0.1 in the paper's multi-task pre-training), the experts with ``lr``
  (1e-3 there; T-Few's few-shot recipe: 3e-3 for everything). Trainable parameters outside
  the adapters (full fine-tuning) train with ``lr``.
* Linear warm-up over ``warmup_ratio`` of the steps (T-Few: 6 %), then linear decay to 0
  (``transformers.get_linear_schedule_with_warmup``, the schedule T-Few calls).
* Gradient clipping at ``grad_clip`` (1.0), applied by `t0_recipes.training.train`.

Example::

    config = OptimConfig(lr=1e-3, lr_routing=0.1)
    optimizer, scheduler = build_optimization(model, config, total_steps=100_000)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "GRAD_CLIP",
    "OPTIMIZERS",
    "WARMUP_RATIO",
    "OptimConfig",
    "build_optimization",
    "build_optimizer",
    "build_scheduler",
    "optimizer_groups",
    "warmup_steps",
]

OPTIMIZERS: tuple[str, ...] = ("adafactor", "adamw")
#: T-Few's warm-up share of the steps.
WARMUP_RATIO = 0.06
#: T-Few's max global gradient norm.
GRAD_CLIP = 1.0


@dataclass(frozen=True)
class OptimConfig:
    """How the adapter trains.

    Attributes:
        optimizer: ``"adafactor"`` (fixed lr, no parameter scaling; T-Few, the paper) or ``"adamw"``.
        lr: learning rate of the adapter modules (experts) and of any other trainable parameter.
        lr_routing: learning rate of the routing parameters; ``None`` means ``lr``.
        warmup_ratio: share of the steps with a linear warm-up from 0, in ``[0, 1)``.
        grad_clip: max global gradient norm; ``None`` or ``0`` turns clipping off.
        weight_decay: decoupled weight decay (AdamW) / Adafactor's weight decay.
        betas: AdamW's betas (Adafactor uses ``beta1=None``: no first moment).
        eps: AdamW's epsilon.
    """

    optimizer: str = "adafactor"
    lr: float = 3e-3
    lr_routing: float | None = None
    warmup_ratio: float = WARMUP_RATIO
    grad_clip: float | None = GRAD_CLIP
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} is unknown; choose one of {OPTIMIZERS}")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be positive")
        if self.lr_routing is not None and not self.lr_routing > 0:
            raise ValueError(f"lr_routing={self.lr_routing} must be positive (or None: the same as lr)")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise ValueError(f"grad_clip={self.grad_clip} must be >= 0 (or None: no clipping)")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay} must be >= 0")

    @classmethod
    def from_hparams(cls, hparams: Any) -> OptimConfig:
        """From `t0_recipes.presets.FewShotHParams` (``lr``, ``lr_routing``) or ``PretrainHParams``
        (``lr_modules`` and ``lr_routing``)."""
        if hasattr(hparams, "lr_modules"):
            lr, lr_routing = hparams.lr_modules, getattr(hparams, "lr_routing", None)
        else:
            lr, lr_routing = hparams.lr, getattr(hparams, "lr_routing", None)
        return cls(
            optimizer=getattr(hparams, "optimizer", "adafactor"),
            lr=lr,
            lr_routing=lr_routing,
            warmup_ratio=getattr(hparams, "warmup_ratio", WARMUP_RATIO),
            grad_clip=getattr(hparams, "grad_clip", GRAD_CLIP),
        )


def optimizer_groups(model: nn.Module, *, lr: float, lr_routing: float | None = None) -> list[dict[str, Any]]:
    """The model's trainable parameters as optimiser groups, each with a ``"name"`` and ``"lr"``.

    ``"routing"`` (``lr_routing``, default ``lr``) and ``"modules"`` come from
    `tensoradapt.parameter_groups`; ``"other"`` holds every other trainable parameter (the
    backbone in full fine-tuning) at ``lr``. Frozen parameters and empty groups are left out;
    the order of parameters is the model's, so a rebuilt model gives the same groups (which
    loading an optimiser state relies on).

    Raises:
        ValueError: nothing is trainable.
    """
    from tensoradapt import adapted_layers, parameter_groups

    roles: dict[int, str] = {}
    if adapted_layers(model):
        for role, parameters in parameter_groups(model).items():
            for parameter in parameters:
                roles[id(parameter)] = role
    rates = {"routing": lr if lr_routing is None else lr_routing, "modules": lr, "other": lr}
    grouped: dict[str, list[nn.Parameter]] = {"routing": [], "modules": [], "other": []}
    for parameter in model.parameters():  # unique parameters, in registration order
        if parameter.requires_grad:
            grouped[roles.get(id(parameter), "other")].append(parameter)
    groups = [{"name": name, "params": params, "lr": rates[name]} for name, params in grouped.items() if params]
    if not groups:
        raise ValueError("the model has no trainable parameter (inject adapters or call set_training_mode first)")
    return groups


def build_optimizer(
    params: nn.Module | Iterable[nn.Parameter] | Iterable[dict[str, Any]], config: OptimConfig = OptimConfig()
) -> torch.optim.Optimizer:
    """Adafactor (fixed learning rate) or AdamW over ``params``.

    Args:
        params: a model (grouped by `optimizer_groups`), parameters, or parameter groups (dicts
            with ``"params"`` and optionally ``"lr"``).
        config: optimiser name, learning rates and weight decay.
    """
    if isinstance(params, nn.Module):
        groups: list[Any] = optimizer_groups(params, lr=config.lr, lr_routing=config.lr_routing)
    else:
        groups = list(params)
    if not groups:
        raise ValueError("params is empty: nothing to optimise")
    if config.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            groups,
            lr=config.lr,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """``floor(warmup_ratio * total_steps)`` (60 of 1000 at T-Few's 6 %), robust to float round-off."""
    return int(math.floor(warmup_ratio * total_steps + 1e-9))


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_ratio: float = WARMUP_RATIO
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 over `warmup_steps`, then linear decay to 0 at ``total_steps``.

    Step ``s`` (0-based, before the ``s``-th update) uses ``lr * s / W`` for ``s < W`` and
    ``lr * (total_steps - s) / (total_steps - W)`` after; every parameter group scales its own lr.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be at least 1")
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio={warmup_ratio} must be in [0, 1)")
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(
        optimizer, num_warmup_steps=warmup_steps(total_steps, warmup_ratio), num_training_steps=total_steps
    )


def build_optimization(
    model: nn.Module, config: OptimConfig, *, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """`build_optimizer` over the model's trainable parameters and its `build_scheduler`."""
    optimizer = build_optimizer(model, config)
    return optimizer, build_scheduler(optimizer, total_steps=total_steps, warmup_ratio=config.warmup_ratio)
