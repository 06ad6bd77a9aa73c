"""What every combiner shares: task-routing logits, their noise and normalisation."""

from __future__ import annotations

import torch
from torch import nn

from tensoradapt.algebra.entangled import check_positive
from tensoradapt.experts.base import ExpertBank

__all__ = [
    "ROUTING_NORMALIZATIONS",
    "Combiner",
    "TaskRouter",
    "TaskIds",
    "normalized_sigmoid_weights",
    "relaxed_bernoulli_rsample",
    "task_rows",
]

#: ``sum``: weights divided by their sum (they sum to 1: Poly, the paper). ``mean``: divided by
#: their mean (they sum to the number of experts ``S``; uniform routing gives every expert 1).
#: ``identity``: the routing tensor holds the weights themselves (no sigmoid, no normalisation,
#: no noise): exact one-hot rows (an imported LoRA library, `tensoradapt.library`) or any given
#: real weights.
ROUTING_NORMALIZATIONS: tuple[str, ...] = ("sum", "mean", "identity")

#: A single task for the whole batch (``int``) or one task per example (``LongTensor (batch,)``).
TaskIds = int | torch.Tensor

_EPS = 1e-12


def relaxed_bernoulli_rsample(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """One reparameterised sample of ``RelaxedBernoulli(temperature, logits=logits)``, same shape.

    ``sigmoid((logit(u) + logit(p)) / temperature)`` with ``u ~ U(0, 1)`` and ``p = sigmoid(logits)``,
    written op for op as ``torch.distributions`` computes it (same random draw, same clamps, the
    same values), without building the distribution: its argument validation checks every
    entry of ``logits`` on the host (a device synchronisation per layer per step on a GPU) and
    the objects cost more than the arithmetic on small routers.
    """
    eps = torch.finfo(logits.dtype).eps
    uniforms = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device).clamp(min=eps, max=1 - eps)
    probs = torch.sigmoid(logits).clamp(min=eps, max=1 - eps)
    noisy = uniforms.log() - (-uniforms).log1p() + probs.log() - (-probs).log1p()
    if temperature != 1.0:
        noisy = noisy / temperature
    tiny = torch.finfo(noisy.dtype).tiny
    return torch.sigmoid(noisy).clamp(min=tiny, max=1.0 - eps)


def normalized_sigmoid_weights(
    logits: torch.Tensor, *, training: bool, noise: str, temperature: float, normalization: str = "sum"
) -> torch.Tensor:
    """Poly's routing weights: relaxed-Bernoulli samples (training, ``noise='relaxed_bernoulli'``)
    or sigmoids, divided by their sum (``normalization='sum'``) or by their mean (``'mean'``)
    over the last axis. ``normalization='identity'`` returns ``logits`` as they are: the routing
    tensor is the weight tensor (no sigmoid, no noise), so a row can be exactly one-hot.

    ``mean`` is ``S`` times ``sum``: the same mixture, ``S`` times larger. It matters where the
    experts are parts of one adapter rather than whole adapters: TensorPoly-I's experts are the
    ``R`` rank components of a TLoRA, so with ``mean`` uniform routing is exactly TLoRA, where
    ``sum`` divides the task's matrices (and Adam's effective step on them) by ``R``.

    Args:
        logits: ``(..., S)``.

    Returns:
        ``(..., S)``, non-negative, summing to 1 (``sum``) or to ``S`` (``mean``) over ``S``.
    """
    if normalization not in ROUTING_NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {ROUTING_NORMALIZATIONS}, got {normalization!r}")
    if normalization == "identity":
        return logits
    if training and noise == "relaxed_bernoulli":
        weights = relaxed_bernoulli_rsample(logits, temperature)
    else:
        weights = torch.sigmoid(logits)
    total = weights.sum(-1, keepdim=True) + _EPS
    if normalization == "mean":
        total = total / logits.shape[-1]
    return weights / total


def task_rows(table: torch.Tensor, task_ids: TaskIds) -> torch.Tensor:
    """``table[task_ids]``: row ``(*rest,)`` for an ``int`` or a 0-d tensor, rows ``(batch, *rest)`` for ``(batch,)``.

    A 0-d tensor selects with ``index_select`` rather than ``table[t]``, which reads ``t`` as a
    Python int: a device synchronisation on a GPU, and under ``torch.compile`` a guard on its
    value (a recompilation for every task).
    """
    if isinstance(task_ids, torch.Tensor) and task_ids.dim() == 0:
        return table.index_select(0, task_ids.reshape(1)).squeeze(0)
    return table[task_ids]


class Combiner(nn.Module):
    """Turns an expert bank into the adapter matrices of the current task(s).

    ``adapter_matrices(bank, task_ids)`` returns ``A (d_in, r)``, ``B (r, d_out)`` for one task
    (``task_ids`` an ``int`` or ``None``) or ``A (batch, d_in, r)``, ``B (batch, r, d_out)`` for a
    ``LongTensor (batch,)`` of task ids.
    """

    #: Whether the combiner holds task-routing logits.
    routed: bool = False
    #: Whether the routing depends on the tokens (T-REX): then the layer calls ``token_delta``.
    token_routed: bool = False

    def adapter_matrices(self, bank: ExpertBank, task_ids: TaskIds | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``A_t (d_in, r)``, ``B_t (r, d_out)`` for one task, or ``(batch, d_in, r)``, ``(batch, r, d_out)``
        for a ``LongTensor (batch,)`` of task ids."""
        raise NotImplementedError


class TaskRouter(Combiner):
    """A combiner with a learned task-routing logit tensor ``(n_tasks, *route_shape)``.

    Logits start ``uniform(+-init_range)``. Weights are normalised by their sum
    (``normalization='sum'``, Poly) or their mean (``'mean'``, see `normalized_sigmoid_weights`). With
    ``average=True`` (the few-shot *modules only* mode, "mu") routing is dropped and every
    weight is the uniform one: ``1 / S`` (``sum``) or ``1`` (``mean``).
    """

    routed = True

    def __init__(
        self,
        n_tasks: int,
        route_shape: tuple[int, ...],
        *,
        noise: str = "relaxed_bernoulli",
        temperature: float = 1.0,
        init_range: float = 1e-3,
        normalization: str = "sum",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_positive("n_tasks", n_tasks)
        if normalization not in ROUTING_NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {ROUTING_NORMALIZATIONS}, got {normalization!r}")
        self.noise, self.temperature, self.init_range = noise, temperature, init_range
        self.normalization = normalization
        self.average = False
        self.logits = nn.Parameter(torch.empty(n_tasks, *route_shape, dtype=dtype, device=device))
        with torch.no_grad():
            self.logits.uniform_(-init_range, init_range)

    @property
    def n_tasks(self) -> int:
        """Rows of the routing tensor."""
        return self.logits.shape[0]

    def check_task_ids(self, task_ids: TaskIds | None) -> None:
        """``ValueError`` naming ``task_ids`` unless they index a row of the routing tensor.

        ``int`` ids are range-checked (negative ids would silently pick rows from the end), and
        so are tensors on the CPU, where reading them costs no device synchronisation; ids on an
        accelerator, and every id while ``torch.compile`` traces (no host read in a graph: the
        model call checks them once, `tensoradapt.validate_task_ids`), are checked for dtype and
        shape only (indexing asserts on the device).
        """
        if task_ids is None:
            return
        if isinstance(task_ids, bool) or not isinstance(task_ids, (int, torch.Tensor)):
            raise ValueError(f"task_ids must be an int or a LongTensor (batch,), got {type(task_ids).__name__}")
        if isinstance(task_ids, int):
            if not 0 <= task_ids < self.n_tasks:
                raise ValueError(f"task_ids={task_ids} is out of range: the router knows tasks 0..{self.n_tasks - 1}")
            return
        if task_ids.dtype == torch.bool or task_ids.dtype.is_floating_point or task_ids.dtype.is_complex:
            raise ValueError(f"task_ids must hold integers, got dtype {task_ids.dtype}")
        if task_ids.dim() > 1:
            raise ValueError(f"task_ids must be 0-d or (batch,), got shape {tuple(task_ids.shape)}")
        if task_ids.device.type == "cpu" and task_ids.numel() and not torch.compiler.is_compiling():
            if int(task_ids.min()) < 0 or int(task_ids.max()) >= self.n_tasks:
                bad = sorted({int(t) for t in task_ids.reshape(-1) if not 0 <= int(t) < self.n_tasks})
                raise ValueError(f"task_ids holds {bad}, out of range: the router knows tasks 0..{self.n_tasks - 1}")

    def weights(self, task_ids: TaskIds | None) -> torch.Tensor:
        """Routing weights ``route_shape`` for one task or ``(batch, *route_shape)`` for a batch.

        ``task_ids``: ``None`` (only for a one-task router), an ``int`` or a 0-d tensor (one
        task), or ``LongTensor (batch,)``.
        """
        self.check_task_ids(task_ids)
        if self.average:
            batched = isinstance(task_ids, torch.Tensor) and task_ids.dim() == 1
            shape = (task_ids.shape[0], *self.logits.shape[1:]) if batched else self.logits.shape[1:]
            return self.logits.new_full(shape, self.uniform_weight)
        if task_ids is None:
            if self.n_tasks != 1:
                raise ValueError(
                    f"task_ids are missing for a router over {self.n_tasks} tasks: call model(..., task_ids=...) "
                    "or wrap the call in tensoradapt.use_routing(model, task_ids=...)"
                )
            task_ids = 0
        elif isinstance(task_ids, torch.Tensor) and task_ids.dtype != torch.long:
            task_ids = task_ids.long()  # uint8 would index as a mask, int16 not at all
        return normalized_sigmoid_weights(
            task_rows(self.logits, task_ids), training=self.training, noise=self.noise,
            temperature=self.temperature, normalization=self.normalization,
        )

    @property
    def uniform_weight(self) -> float:
        """Every expert's weight under uniform routing: ``1 / S`` (``sum``, ``identity``) or ``1`` (``mean``)."""
        return 1.0 if self.normalization == "mean" else 1.0 / self.logits.shape[-1]

    @torch.no_grad()
    def reset(self, n_tasks: int = 1) -> None:
        """Replace the routing tensor by ``n_tasks`` fresh rows ``uniform(+-init_range)`` (few-shot)."""
        check_positive("n_tasks", n_tasks)
        fresh = torch.empty(n_tasks, *self.logits.shape[1:], dtype=self.logits.dtype, device=self.logits.device)
        self.logits = nn.Parameter(fresh.uniform_(-self.init_range, self.init_range))

    @torch.no_grad()
    def add_task(self, init: str = "uniform") -> int:
        """Append one task row (``uniform(+-init_range)`` or ``mean`` of the trained rows); returns its id."""
        if init == "uniform":
            row = torch.empty_like(self.logits[:1]).uniform_(-self.init_range, self.init_range)
        elif init == "mean":
            row = self.logits.mean(0, keepdim=True)
        else:
            raise ValueError(f"init must be 'uniform' or 'mean', got {init!r}")
        self.logits = nn.Parameter(torch.cat([self.logits.detach(), row]))
        return self.n_tasks - 1
