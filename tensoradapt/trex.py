"""Model-level T-REX helpers: task priors, the balance loss, calibration and the export error.

The per-layer pieces are `tensoradapt.experts.rank_one.RankOneBank` (the rank-one vectors),
`tensoradapt.routing.token.TokenRouter` (per-token routing with the semantic prior) and
`tensoradapt.routing.semantic_prior.SemanticPrior` (the sentence-embedding centroids). Here:

* `set_task_prior`: a per-task prior table ``(n_tasks, k)``, so T-REX runs in a task-id pipeline.
* `set_semantic_prior` / `semantic_prior`: the `SemanticPrior` (centroids, encoder name) that goes
  with the model, so `tensoradapt.save_pretrained` writes it and `tensoradapt.from_pretrained`
  gives it back.
* `auxiliary_loss`: the optional Switch load-balancing loss summed over layers.
* `calibrate_routing`: mean routing weights over calibration data, for export.
* `trex_export_error`: how far the exported routing-averaged LoRA is from the real T-REX output.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from tensoradapt.export import task_lora_matrices
from tensoradapt.layers import AdaptedLinear, apply_low_rank
from tensoradapt.model import adapted_layers, adapter_config, disable_adapters, validate_task_ids
from tensoradapt.routing.token import TokenRouter

if TYPE_CHECKING:
    from tensoradapt.routing.semantic_prior import SemanticPrior

__all__ = [
    "auxiliary_loss",
    "calibrate_routing",
    "semantic_prior",
    "set_semantic_prior",
    "set_task_prior",
    "token_routers",
    "trex_export_error",
]

_SEMANTIC_PRIOR_ATTR = "_tensoradapt_semantic_prior"


def token_routers(model: nn.Module) -> dict[str, TokenRouter]:
    """``{adapted module name: TokenRouter}``; ``ValueError`` if the model has none (not T-REX)."""
    routers = {name: layer.combiner for name, layer in adapted_layers(model).items() if layer.combiner.token_routed}
    if not routers:
        raise ValueError(f"method={adapter_config(model).method!r} has no T-REX token routers")
    return routers


def set_task_prior(model: nn.Module, table: torch.Tensor | None, *, new_tasks: bool = False) -> None:
    """Give every T-REX layer the per-task prior ``table (n_tasks, k)`` (``None`` removes it).

    Row ``t`` (e.g. ``SemanticPrior.task_prior(...)[t]``) is the prior of every example of task
    ``t`` in calls that give ``task_ids`` but no ``semantic_prior``; a per-example
    ``semantic_prior=`` still wins. The table is a non-persistent buffer of every router: not
    trained and not in the model's ``state_dict`` (a fresh model has none, so a strict
    ``load_state_dict`` of a state that held it would fail), but `tensoradapt.save_pretrained` /
    `save_adapter` write it beside the adapters and `from_pretrained` / `load_adapter` restore it.

    ``new_tasks=True`` is T-REX's few-shot start, the counterpart of `tensoradapt.reset_routing`
    (T-REX has no routing matrix to reset): the table's rows become the model's tasks, so
    ``config.n_tasks`` becomes ``table.shape[0]`` (e.g. one row for a new task, id 0).

    Raises:
        ValueError: the table is not ``(config.n_tasks, config.trex_n_clusters)`` (with
            ``new_tasks``: not ``(n >= 1, config.trex_n_clusters)``).
    """
    config = adapter_config(model)
    routers = token_routers(model)
    if new_tasks:
        if not isinstance(table, torch.Tensor) or table.dim() != 2 or table.shape[0] < 1:
            raise ValueError("new_tasks=True needs a (n_tasks >= 1, trex_n_clusters) table of the new tasks' priors")
        config.n_tasks = table.shape[0]
    if table is not None:
        expected = (config.n_tasks, config.trex_n_clusters)
        if not isinstance(table, torch.Tensor) or tuple(table.shape) != expected:
            shape = tuple(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__
            raise ValueError(f"the task prior must be (n_tasks, trex_n_clusters) = {expected}, got {shape}")
    for router in routers.values():
        router.set_task_prior(table)


def set_semantic_prior(model: nn.Module, prior: SemanticPrior | None) -> None:
    """Keep ``prior`` (a `SemanticPrior`: centroids ``(k, dim)`` and the encoder's name) with ``model``.

    `tensoradapt.save_pretrained` then writes it beside the adapters (``semantic_prior.safetensors``
    and ``semantic_prior.json``, hashed in ``adapter_config.json``) and
    `tensoradapt.from_pretrained` restores it, so a deployed model can compute
    ``semantic_prior=prior.prior(texts)`` for new inputs. ``None`` drops it.

    Raises:
        ValueError: the model has no T-REX layers, or ``prior.n_clusters != config.trex_n_clusters``.
    """
    config = adapter_config(model)
    token_routers(model)
    if prior is not None and prior.n_clusters != config.trex_n_clusters:
        raise ValueError(
            f"the semantic prior has {prior.n_clusters} centroids but the model's routers read "
            f"trex_n_clusters={config.trex_n_clusters} similarities"
        )
    setattr(model, _SEMANTIC_PRIOR_ATTR, prior)


def semantic_prior(model: nn.Module) -> SemanticPrior | None:
    """The `SemanticPrior` kept with ``model`` (`set_semantic_prior`, `tensoradapt.from_pretrained`), or ``None``."""
    return getattr(model, _SEMANTIC_PRIOR_ATTR, None)


def auxiliary_loss(model: nn.Module) -> torch.Tensor:
    """``sum_layers trex_balance_weight * aux_loss`` of the last training forward, then cleared.

    Add it to the task loss (``loss = out.loss + tensoradapt.trex.auxiliary_loss(model)``). It is
    a 0-d zero when ``trex_balance_weight == 0`` (T-REX's default: the paper uses no balance loss)
    or outside training.
    """
    total = None
    for router in token_routers(model).values():
        if router.aux_loss is not None:
            term = router.balance_weight * router.aux_loss
            total = term if total is None else total + term
            router.aux_loss = None
    if total is None:
        parameter = next(iter(token_routers(model).values())).token_weight
        return parameter.new_zeros(())
    return total


@contextmanager
def calibrate_routing(model: nn.Module) -> Iterator[nn.Module]:
    """Record the mean routing weights of every call in the block; export then uses them.

    ``with calibrate_routing(model): for batch in data: model(**batch)``. Every T-REX layer stores
    the mean of its weights over all tokens seen (padding included) in ``calibrated``, which
    `averaged_matrices` prefers to the zero-input weights. One mean for all tasks. An exception in
    the block leaves the previous calibration as it was.
    """
    routers = list(token_routers(model).values())
    for router in routers:
        router.start_calibration()
    try:
        yield model
    except BaseException:
        for router in routers:
            router._calibration = None
        raise
    for router in routers:
        router.finish_calibration()


def _main_output(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find the output tensor of a {type(output).__name__}")


def _ratio(numerator: float, denominator: float) -> float:
    if denominator > 0:
        return (numerator / denominator) ** 0.5
    return 0.0 if numerator == 0 else float("inf")


@torch.no_grad()
def trex_export_error(
    model: nn.Module, inputs: Mapping | Iterable[Mapping], task: int | None = None
) -> dict:
    """How much the exported routing-averaged LoRA (`export_peft_lora`) differs from T-REX.

    Runs ``model(**call)`` for every call in ``inputs`` (one kwargs mapping or several) in eval
    mode three times: with T-REX, with every T-REX layer replaced by its exported LoRA
    ``x A (Rbar B) * scaling`` (`task_lora_matrices`), and without adapters. ``task`` picks the
    task prior row of the export and is passed as ``task_ids`` to calls that have none.

    Returns:
        ``output_relative_error``: ``||y_export - y_trex|| / ||y_trex||`` over all outputs (logits).
        ``adapter_relative_error``: ``||y_export - y_trex|| / ||y_trex - y_base||``: the share of
        the adapter's effect on the output that the export gets wrong (0 exact, 1 no better than
        no adapter).
        ``layer_relative_error``: ``{module: ||delta_export - delta_trex|| / ||delta_trex||}`` on
        each layer's own inputs under T-REX; ``mean_layer_relative_error``,
        ``max_layer_relative_error``. All norms are Frobenius over every token of every call;
        a zero denominator gives 0 when the numerator is 0 too.
    """
    task = validate_task_ids(task, adapter_config(model).n_tasks)
    calls = [dict(inputs)] if isinstance(inputs, Mapping) else [dict(call) for call in inputs]
    if not calls:
        raise ValueError("inputs must hold at least one call")
    if task is not None:
        for call in calls:
            call.setdefault("task_ids", task)
    layers = {name: layer for name, layer in adapted_layers(model).items() if layer.combiner.token_routed}
    if not layers:
        raise ValueError(f"method={adapter_config(model).method!r} has no T-REX layers")
    exported = {name: task_lora_matrices(layer, task) for name, layer in layers.items()}
    sums = {name: [0.0, 0.0] for name in layers}
    was_training = model.training
    model.eval()
    handles = []

    def measure(name: str):
        def hook(layer: AdaptedLinear, args, output):
            x = args[0]
            true = layer.delta(x).double()
            approx = apply_low_rank(x.to(exported[name][0].dtype), *exported[name]).double()
            sums[name][0] += float((approx - true).square().sum())
            sums[name][1] += float(true.square().sum())

        return hook

    def replace(name: str):
        def hook(layer: AdaptedLinear, args, output):
            x = args[0]
            return output + apply_low_rank(x.to(exported[name][0].dtype), *exported[name]).to(output.dtype)

        return hook

    try:
        handles = [layer.register_forward_hook(measure(name)) for name, layer in layers.items()]
        trex_out = [_main_output(model(**call)).double() for call in calls]
        for handle in handles:
            handle.remove()
        handles = [layer.register_forward_hook(replace(name)) for name, layer in layers.items()]
        for layer in layers.values():
            layer.disabled = True
        export_out = [_main_output(model(**call)).double() for call in calls]
        for layer in layers.values():
            layer.disabled = False
        for handle in handles:
            handle.remove()
        handles = []
        with disable_adapters(model):
            base_out = [_main_output(model(**call)).double() for call in calls]
    finally:
        for handle in handles:
            handle.remove()
        for layer in layers.values():
            layer.disabled = False
        model.train(was_training)
    error = sum(float((e - t).square().sum()) for e, t in zip(export_out, trex_out))
    trex_norm = sum(float(t.square().sum()) for t in trex_out)
    effect = sum(float((t - b).square().sum()) for t, b in zip(trex_out, base_out))
    per_layer = {name: _ratio(*values) for name, values in sums.items()}
    return {
        "output_relative_error": _ratio(error, trex_norm),
        "adapter_relative_error": _ratio(error, effect),
        "layer_relative_error": per_layer,
        "mean_layer_relative_error": sum(per_layer.values()) / len(per_layer),
        "max_layer_relative_error": max(per_layer.values()),
    }
