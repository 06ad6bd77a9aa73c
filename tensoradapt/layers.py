"""The adapted linear layer: a frozen base layer plus a routed low-rank delta."""

from __future__ import annotations

import torch
from torch import nn

from tensoradapt.config import AdapterConfig
from tensoradapt.methods import build_adapter
from tensoradapt.routing.base import TaskIds
from tensoradapt.routing.state import RoutingState

__all__ = ["AdaptedLinear", "apply_low_rank", "is_conv1d", "linear_dims"]


def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is GPT-2's ``Conv1D`` (weight ``(d_in, d_out)``, ``y = x W + b``)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(module, Conv1D)


def linear_dims(module: nn.Module) -> tuple[int, int]:
    """``(d_in, d_out)`` of an ``nn.Linear`` or a ``Conv1D``."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if is_conv1d(module):
        return module.weight.shape[0], module.weight.shape[1]
    raise TypeError(f"only nn.Linear and transformers' Conv1D can be adapted, got {type(module).__name__}")


def apply_low_rank(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``(x A) B`` for one shared adapter or one adapter per example.

    Args:
        x: ``(batch, ..., d_in)``.
        down: ``A (d_in, r)`` or ``(batch, d_in, r)``.
        up: ``B (r, d_out)`` or ``(batch, r, d_out)``.

    Returns:
        ``(batch, ..., d_out)``; legend ``b ... i, b i r, b r o -> b ... o``.
    """
    if down.dim() == 2:
        return (x @ down) @ up
    batch, d_in = down.shape[0], down.shape[1]
    if x.shape[0] != batch:
        raise ValueError(f"input batch {x.shape[0]} does not match {batch} per-example adapters")
    flat = x.reshape(batch, -1, d_in)
    return torch.bmm(torch.bmm(flat, down), up).reshape(*x.shape[:-1], up.shape[-1])


class AdaptedLinear(nn.Module):
    """``y = base(x) + scaling * (x A_t) B_t``: a frozen ``nn.Linear`` / ``Conv1D`` plus a routed delta.

    ``A_t (d_in, r)``, ``B_t (r, d_out)`` come from ``combiner.adapter_matrices(bank, task_ids)``;
    a batch of one task (an ``int`` or a 0-d tensor) builds them once, a mixed batch
    (``LongTensor (batch,)``) builds one pair per example and uses batched matmuls. Task ids are
    read from the model's shared `RoutingState` without any host-device synchronisation.
    Token-routed combiners (T-REX) compute the delta themselves (``combiner.token_delta``).

    Shapes: ``x (batch, ..., d_in) -> (batch, ..., d_out)``.
    """

    def __init__(self, base: nn.Module, config: AdapterConfig, state: RoutingState | None = None) -> None:
        super().__init__()
        self.d_in, self.d_out = linear_dims(base)
        self.base = base
        self.config = config
        self.state = state if state is not None else RoutingState()
        self.scaling = config.scaling
        weight = base.weight
        self.bank, self.combiner = build_adapter(config, self.d_in, self.d_out, dtype=weight.dtype, device=weight.device)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.merged_task: TaskIds | None = None
        self._weight_backup: torch.Tensor | None = None
        self.disabled = False

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight (models read it, e.g. T5 checks ``wo.weight.dtype``)."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias."""
        return self.base.bias

    @property
    def merged(self) -> bool:
        """Whether a task's delta is folded into the base weight."""
        return self._weight_backup is not None

    def delta(self, x: torch.Tensor, task_ids: TaskIds | None = None) -> torch.Tensor:
        """The adapter's output ``scaling * (x A_t) B_t`` alone, ``(batch, ..., d_out)``.

        ``task_ids`` default to the shared routing state's (expanded to ``x``'s batch).
        """
        if task_ids is None:
            task_ids = self.state.task_ids_for(x.shape[0])
        if self.combiner.token_routed:
            prior = self.state.semantic_prior_for(x.shape[0])
            delta = self.combiner.token_delta(self.dropout(x), self.bank, task_ids, prior, routing_input=x)
            return delta * self.scaling
        down, up = self.combiner.adapter_matrices(self.bank, task_ids)
        x = self.dropout(x).to(down.dtype)
        if up.numel() * x.shape[-1] <= x.numel() * up.shape[-1]:
            # Scale whichever is smaller, B or the output: (x A)(s B) = s (x A) B, and for the
            # usual s = 1/r (a power of two) bit for bit. Saves one pass over the output.
            return apply_low_rank(x, down, up * self.scaling)
        return apply_low_rank(x, down, up) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x) + delta(x)``; the base alone while merged or disabled. ``(batch, ..., d_in) -> (batch, ..., d_out)``."""
        result = self.base(x)
        if self.merged or self.disabled:
            return result
        return result + self.delta(x).to(result.dtype)

    @torch.no_grad()
    def delta_weight(self, task: TaskIds | None = None) -> torch.Tensor:
        """The dense update ``scaling * A_t B_t`` as ``(d_in, d_out)``, routing in eval mode."""
        if self.combiner.token_routed:
            raise ValueError(
                f"{type(self.combiner).__name__} routes every token by its input, so its delta is not one matrix "
                "and cannot merge into the base weight; use export's routing-averaged LoRA instead"
            )
        was_training = self.combiner.training
        self.combiner.eval()
        try:
            down, up = self.combiner.adapter_matrices(self.bank, task)
        finally:
            self.combiner.train(was_training)
        return (down @ up) * self.scaling

    @torch.no_grad()
    def merge(self, task: TaskIds | None = None) -> None:
        """Fold task ``task``'s delta into the base weight; forward then costs what the base costs.

        The original weight is kept so `unmerge` restores it bit for bit.
        """
        if self.merged:
            raise RuntimeError(f"task {self.merged_task!r} is already merged; call unmerge() first")
        if isinstance(task, torch.Tensor) and task.dim() > 0:
            raise ValueError("merge takes one task id (an int), not a batch of task ids")
        update = self.delta_weight(task)
        weight = self.base.weight
        self._weight_backup = weight.detach().clone()
        update = update if is_conv1d(self.base) else update.T
        weight.add_(update.to(weight.dtype))
        self.merged_task = task

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base weight exactly as it was before `merge`."""
        if not self.merged:
            raise RuntimeError("nothing is merged")
        self.base.weight.copy_(self._weight_backup)
        self._weight_backup = None
        self.merged_task = None

    def extra_repr(self) -> str:
        return f"method={self.config.method}, d_in={self.d_in}, d_out={self.d_out}, scaling={self.scaling:g}"
