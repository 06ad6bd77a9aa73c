"""Which adapter parameters train, their groups, and parameter counts."""

from __future__ import annotations

from collections import defaultdict

from torch import nn

from tensoradapt.config import TRAINING_MODES
from tensoradapt.layers import AdaptedLinear
from tensoradapt.model import adapted_layers, adapter_config

__all__ = [
    "set_training_mode",
    "parameter_groups",
    "count_parameters",
    "print_trainable_parameters",
    "trainable_parameters",
    "reset_routing",
    "add_task",
]


def _routing_parameters(layer: AdaptedLinear) -> list[nn.Parameter]:
    return list(layer.combiner.parameters())


def _module_parameters(layer: AdaptedLinear) -> list[nn.Parameter]:
    return list(layer.bank.parameters())


def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Adapter parameters by role: ``routing`` (routers' logits, T-REX router and gate) and
    ``modules`` (the experts), e.g. for the paper's learning rates 0.1 and 1e-3."""
    groups: dict[str, list[nn.Parameter]] = {"routing": [], "modules": []}
    for layer in adapted_layers(model).values():
        groups["routing"] += _routing_parameters(layer)
        groups["modules"] += _module_parameters(layer)
    return groups


def set_training_mode(model: nn.Module, mode: str) -> list[nn.Parameter]:
    """Freeze everything but the parameters ``mode`` trains (the paper's Table 4).

    * ``full``: experts and routing.
    * ``routing_only`` ("z"): the routing parameters only.
    * ``modules_only`` ("mu"): routing dropped, skills averaged with fixed ``1/S`` weights; the
      experts train.

    Returns:
        The trainable parameters.
    """
    if mode not in TRAINING_MODES:
        raise ValueError(f"mode={mode!r} is unknown; choose one of {TRAINING_MODES}")
    config = adapter_config(model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    trainable: list[nn.Parameter] = []
    for layer in adapted_layers(model).values():
        if hasattr(layer.combiner, "average"):
            layer.combiner.average = mode == "modules_only"
        if mode in ("full", "routing_only"):
            trainable += _routing_parameters(layer)
        if mode in ("full", "modules_only"):
            trainable += _module_parameters(layer)
    if mode == "routing_only" and not trainable:
        raise ValueError(f"method={config.method!r} has no routing parameters; use mode='full' or 'modules_only'")
    for parameter in trainable:
        parameter.requires_grad_(True)
    config.mode = mode
    return trainable


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad``."""
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def count_parameters(model: nn.Module) -> dict:
    """Parameter counts: ``total``, ``trainable``, ``adapter`` (``routing`` + ``modules``) and ``by_module``.

    ``by_module`` maps the adapted module's last name part (``q``, ``wi_0``, ...) to its adapter
    parameters; ``by_layer`` maps every adapted module's full name to ``{"routing", "modules"}``.
    """
    by_module: dict[str, int] = defaultdict(int)
    by_layer: dict[str, dict[str, int]] = {}
    routing = modules = 0
    for name, layer in adapted_layers(model).items():
        layer_routing = sum(p.numel() for p in _routing_parameters(layer))
        layer_modules = sum(p.numel() for p in _module_parameters(layer))
        routing += layer_routing
        modules += layer_modules
        by_module[name.rsplit(".", 1)[-1]] += layer_routing + layer_modules
        by_layer[name] = {"routing": layer_routing, "modules": layer_modules}
    return {
        "method": adapter_config(model).method,
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "adapter": routing + modules,
        "routing": routing,
        "modules": modules,
        "by_module": dict(by_module),
        "by_layer": by_layer,
    }


def print_trainable_parameters(model: nn.Module) -> None:
    """Print PEFT's one-line summary to stdout, character for character. On the tiny T5 with
    ``AdapterConfig(method="lora", lora_rank=2)`` (36 adapted linears)::

        >>> print_trainable_parameters(inject(tiny_t5(), AdapterConfig(method="lora", lora_rank=2)))
        trainable params: 2,688 || all params: 16,256 || trainable%: 16.5354

    Counts every parameter of ``model`` once (shared ones once), adapters included; any module
    works, injected or not. For the split by role and module use `count_parameters`.
    """
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    total = sum(parameter.numel() for parameter in model.parameters())
    share = 100 * trainable / total if total else 0.0
    print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {share:.4f}")


def reset_routing(model: nn.Module, n_tasks: int = 1) -> None:
    """Few-shot start: every router gets ``n_tasks`` fresh rows ``uniform(+-init_range)``.

    The training mode is re-applied so the new logits train as before.
    """
    config = adapter_config(model)
    routers = [layer.combiner for layer in adapted_layers(model).values() if layer.combiner.routed]
    if not routers:
        raise ValueError(f"method={config.method!r} has no task routing to reset")
    for router in routers:
        router.reset(n_tasks)
    config.n_tasks = n_tasks
    set_training_mode(model, config.mode)


def add_task(model: nn.Module, init: str = "uniform") -> int:
    """Append one task row to every router (``uniform`` or the ``mean`` of trained rows).

    Returns:
        The new task's id.
    """
    config = adapter_config(model)
    routers = [layer.combiner for layer in adapted_layers(model).values() if layer.combiner.routed]
    if not routers:
        raise ValueError(f"method={config.method!r} has no task routing to extend")
    new_ids = {router.add_task(init) for router in routers}
    (task_id,) = new_ids
    config.n_tasks = task_id + 1
    set_training_mode(model, config.mode)
    return task_id
