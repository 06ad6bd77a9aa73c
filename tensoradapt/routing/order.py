"""Order routing (TensorPoly-II)."""

from __future__ import annotations

import torch

from tensoradapt.algebra.entangled import check_positive
from tensoradapt.experts.tlora import TLoRABank
from tensoradapt.routing.base import TaskIds, TaskRouter

__all__ = ["OrderRouter"]


class OrderRouter(TaskRouter):
    """TensorPoly-II: a routing tensor ``(n_tasks, N, R)``; each order mixes its leaves with its own weights.

    For every LoRA column, ``A_t = (x)_n sum_k w[t, n, k] A[k, n]``: the ``R`` leaves of order ``n``
    are averaged with order ``n``'s normalised weights, then the tensor product of the ``N`` mixed
    leaves is taken (one simple tensor per task; the product is what aggregates the experts).
    With mean-normalised weights (``normalization='mean'``, the library's default for this
    method) each mixed leaf is the sum of the ``R`` leaves at uniform routing; with the paper's
    sum-normalised weights it is their average, which scales ``A`` and ``B`` by ``R ** -N`` and
    Adam's effective step on every mixed leaf by ``1 / R``.
    """

    def __init__(self, n_tasks: int, order: int, tensor_rank: int, **kwargs) -> None:
        check_positive("order", order)
        check_positive("tensor_rank", tensor_rank)
        super().__init__(n_tasks, (order, tensor_rank), **kwargs)

    def adapter_matrices(self, bank: TLoRABank, task_ids: TaskIds | None) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(bank, TLoRABank):
            raise TypeError(f"TensorPoly-II routes the leaves of a TLoRABank, got {type(bank).__name__}")
        return bank.order_mixed_matrices(self.weights(task_ids))
