"""Zero-shot routing of a trained or imported model's skills with Arrow, per token or per task.

* `arrow_routing`: inside the block every adapted layer routes each token to its bank's skills
  by Arrow (`tensoradapt.routing.arrow`): no task id, no training. The skills are the bank's
  ``skill_matrices()``: Poly / MHR skills (the LoRAs of a `from_lora_library` import), or the
  ``R`` rank components of a TLoRA bank (TensorPoly-I / -II, TLoRA).
* `arrow_task_row`: the task-level variant. A handful of unlabeled inputs run under Arrow; every
  layer's Arrow weights, averaged over their tokens, ``p (S,)``, become a task's routing row (a
  new one by default). The task then mixes the skills' ``A`` and ``B`` with ``p`` as Poly does
  (one adapter per task: it merges and exports), where Arrow mixes the skills' outputs per token.

Not for T-REX, whose experts are rank-one pairs routed by its own token router.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from tensoradapt.model import adapted_layers, adapter_config
from tensoradapt.routing.arrow import ArrowRouter, arrow_prototypes
from tensoradapt.trainable import add_task

__all__ = ["arrow_routing", "arrow_task_row", "model_prototypes"]


def _layers(model: nn.Module):
    layers = adapted_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no tensoradapt adapters; inject or from_lora_library first")
    if any(layer.combiner.token_routed for layer in layers.values()):
        raise ValueError("Arrow routes the skills of LoRA / TLoRA banks; T-REX's rank-one pairs have their own router")
    merged = [name for name, layer in layers.items() if layer.merged]
    if merged:
        raise ValueError(
            f"{merged[0]} is merged, so its delta would not be routed; call tensoradapt.unmerge(model) first"
        )
    return layers


@torch.no_grad()
def model_prototypes(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{module: (S, d_in)}``: every adapted layer's Arrow prototypes (`arrow_prototypes` of its skills)."""
    return {name: arrow_prototypes(*layer.bank.skill_matrices()) for name, layer in _layers(model).items()}


@contextmanager
def arrow_routing(model: nn.Module, *, top_k: int | None = None, temperature: float = 1.0) -> Iterator[nn.Module]:
    """Route every token by Arrow inside the block: ``with arrow_routing(model, top_k=2): model(**batch)``.

    Every adapted layer's combiner is replaced by an `ArrowRouter` over its bank's skills
    (prototypes computed once, on entry) and restored on exit, so save, merge and export see the
    model as it was. Calls need no ``task_ids`` (given ones are not read). ``model.generate``
    works inside the block too.

    Args:
        top_k: experts per token (``None``: all, softmax over every skill; mttl's default).
        temperature: ``T`` of the softmax over ``|<x, v_e>| / T``.
    """
    layers = _layers(model)
    routers = {
        name: ArrowRouter(arrow_prototypes(*layer.bank.skill_matrices()), top_k=top_k, temperature=temperature)
        for name, layer in layers.items()
    }
    replaced = {name: layer.combiner for name, layer in layers.items()}
    for name, layer in layers.items():
        layer.combiner = routers[name]
    try:
        yield model
    finally:
        for name, layer in layers.items():
            layer.combiner = replaced[name]


def _logits_for(weights: torch.Tensor, normalization: str) -> torch.Tensor:
    """Routing logits whose normalised weights are proportional to ``weights`` (a distribution).

    ``identity``: the weights themselves. ``sum`` / ``mean``: ``sigmoid(z) = p / max(p)`` clamped
    to ``[1e-6, 1 - 1e-6]`` (so ``sum`` gives ``p`` to about 1e-6 and ``mean`` ``S p``).
    """
    if normalization == "identity":
        return weights
    ratio = (weights / weights.max()).clamp(1e-6, 1 - 1e-6)
    return torch.logit(ratio)


@torch.no_grad()
def arrow_task_row(
    model: nn.Module,
    inputs: Mapping | Iterable[Mapping],
    *,
    task: int | None = None,
    top_k: int | None = None,
    temperature: float = 1.0,
) -> int:
    """Set a task's routing row from unlabeled inputs, without a gradient step (task-level Arrow).

    Runs ``model(**call)`` for every call of ``inputs`` under `arrow_routing`; each layer's Arrow
    weights are averaged over every token it saw (padding included: pass unpadded or equal-length
    inputs), ``p (S,)``, and written as the task's row: ``p`` itself under
    ``routing_normalization='identity'`` (a library import), else logits whose normalised weights
    are ``p`` (``sum``) or ``S p`` (``mean``), to about 1e-6. MHR heads and TensorPoly-II orders
    all get the layer's ``p``.

    Args:
        inputs: one forward kwargs mapping or several (no labels needed).
        task: the row to overwrite; ``None`` appends a new task (`tensoradapt.add_task`).
        top_k: Arrow's top-k (`arrow_routing`).
        temperature: Arrow's temperature (`arrow_routing`).

    Returns:
        The task id.
    """
    config = adapter_config(model)
    if not config.is_routed:
        raise ValueError(f"method={config.method!r} has no task routing rows to set")
    layers = _layers(model)
    calls = [dict(inputs)] if isinstance(inputs, Mapping) else [dict(call) for call in inputs]
    if not calls:
        raise ValueError("inputs must hold at least one call")
    if task is not None and not (isinstance(task, int) and 0 <= task < config.n_tasks):
        raise ValueError(f"task={task!r} is out of range: the routers know tasks 0..{config.n_tasks - 1}")
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(layers, 0)

    def record(name: str):
        def hook(layer, args, output):
            weights = layer.combiner.weights(args[0]).reshape(-1, layer.combiner.n_experts).double()
            sums[name] = sums.get(name, 0) + weights.sum(0)
            counts[name] += weights.shape[0]

        return hook

    was_training = model.training
    model.eval()
    with arrow_routing(model, top_k=top_k, temperature=temperature):
        handles = [layer.register_forward_hook(record(name)) for name, layer in layers.items()]
        try:
            for call in calls:
                call.pop("task_ids", None)
                model(**call)
        finally:
            for handle in handles:
                handle.remove()
    model.train(was_training)
    unseen = [name for name, count in counts.items() if count == 0]
    if unseen:
        raise ValueError(f"{unseen[0]} saw no token of the inputs (e.g. a decoder layer without decoder inputs)")
    task = add_task(model) if task is None else task
    for name, layer in layers.items():
        router = layer.combiner
        mean = sums[name] / counts[name]
        row = _logits_for(mean, router.normalization).to(router.logits.dtype)
        router.logits[task] = row.expand(router.logits.shape[1:])
    return task
