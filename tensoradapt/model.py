"""Model surgery: inject adapters by name pattern and route task ids through every call."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from tensoradapt.config import AdapterConfig
from tensoradapt.layers import AdaptedLinear, is_conv1d, linear_dims
from tensoradapt.routing.base import TaskIds
from tensoradapt.routing.state import RoutingInputs, RoutingState
from tensoradapt.sizes import check_materialized_size
from tensoradapt.targets import default_target_pattern, find_targets

__all__ = [
    "inject",
    "adapted_layers",
    "adapter_config",
    "routing_state",
    "use_routing",
    "merge",
    "unmerge",
    "disable_adapters",
    "validate_task_ids",
]

_STATE_ATTR = "_tensoradapt_state"
_CONFIG_ATTR = "_tensoradapt_config"
_MERGED_ATTR = "_tensoradapt_merged_task"
_FIRST_LAYER_ATTR = "_tensoradapt_first_layer"  # the name of one adapted layer: where the adapters live


def _accepts(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def adapted_layers(model: nn.Module) -> dict[str, AdaptedLinear]:
    """``{module name: AdaptedLinear}`` in ``named_modules`` order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, AdaptedLinear)}


def adapter_config(model: nn.Module) -> AdapterConfig:
    """The config ``model`` was injected with; ``ValueError`` if it has no adapters."""
    config = getattr(model, _CONFIG_ATTR, None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no tensoradapt adapters; call tensoradapt.inject(model, config)")
    return config


def routing_state(model: nn.Module) -> RoutingState:
    """The routing state shared by ``model``'s adapted layers."""
    adapter_config(model)
    return getattr(model, _STATE_ATTR)


def _from_numpy(task_ids):
    """numpy integer scalars and 0-d arrays as ``int``, 1-d+ integer arrays as a ``LongTensor`` copy."""
    if isinstance(task_ids, np.integer):
        return int(task_ids)
    if not isinstance(task_ids, np.ndarray):
        return task_ids
    if task_ids.dtype.kind not in "iu":
        raise ValueError(f"task_ids must hold integers, got numpy dtype {task_ids.dtype}")
    if task_ids.ndim == 0:
        return int(task_ids)
    return torch.from_numpy(np.array(task_ids, dtype=np.int64))  # a copy: later edits of the array do not leak in


def validate_task_ids(task_ids, n_tasks: int) -> TaskIds | None:
    """Check task ids and put them in the form layers read.

    ``int`` and 0-d tensors mean one task for the batch; a 1-d ``LongTensor`` gives one task per
    example. numpy works the same: an integer scalar (``np.int64(3)``) or 0-d array is an ``int``,
    a 1-d integer array (``np.array([2, 0, 1])``) a ``LongTensor (batch,)``. Ids on the CPU are
    range-checked here (free: no device synchronisation); ids already on an accelerator are taken
    as they are, to keep the forward free of host-device syncs. While ``torch.compile`` traces,
    the range check of CPU ids is an op of the graph (``torch._assert_async``, no host read): a
    bad id raises a ``RuntimeError`` with the same message when the graph runs.

    Raises:
        ValueError: an id outside ``[0, n_tasks)``, a non-integer dtype, or a tensor of rank > 1.
    """
    task_ids = _checked_form(task_ids, n_tasks)
    if not isinstance(task_ids, torch.Tensor):
        return task_ids
    if task_ids.device.type == "cpu" and task_ids.numel():
        known = f"the adapters know tasks 0..{n_tasks - 1}"
        if torch.compiler.is_compiling():
            in_range = ((task_ids >= 0) & (task_ids < n_tasks)).all()
            torch._assert_async(in_range, f"task_ids holds an id out of range: {known}")
        else:
            low, high = int(task_ids.min()), int(task_ids.max())
            if low < 0 or high >= n_tasks:
                bad = low if low < 0 else high
                raise ValueError(f"task_ids holds {bad}, out of range: {known}")
    return task_ids.long()


def _checked_form(task_ids, n_tasks: int) -> TaskIds | None:
    """`validate_task_ids`'s checks that read no tensor value: type, dtype, rank, an ``int``'s range."""
    if task_ids is None:
        return None
    task_ids = _from_numpy(task_ids)
    if isinstance(task_ids, bool) or not isinstance(task_ids, (int, torch.Tensor)):
        raise ValueError(
            f"task_ids must be an int, a LongTensor (batch,) or a numpy integer array, got {type(task_ids).__name__}"
        )
    if isinstance(task_ids, int):
        if not 0 <= task_ids < n_tasks:
            raise ValueError(f"task_ids={task_ids} is out of range: the adapters know tasks 0..{n_tasks - 1}")
        return task_ids
    if task_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"task_ids must hold integers, got dtype {task_ids.dtype}")
    if task_ids.dim() > 1:
        raise ValueError(f"task_ids must be 0-d or (batch,), got shape {tuple(task_ids.shape)}")
    return task_ids


def _routing_inputs(model: nn.Module, kwargs: dict) -> RoutingInputs | None:
    """Pop ``task_ids`` / ``semantic_prior`` from a call's kwargs; ``None`` when neither is given.

    In eager mode the inputs are checked and moved to the adapters' device here. While
    ``torch.compile`` traces, only what reads no tensor is checked here and the rest is left to
    the first layer that reads them (`RoutingInputs.prepare`): a compiled model's forward hooks
    are frames of their own, and any tensor op in them would be a graph of its own.
    """
    if "task_ids" not in kwargs and "semantic_prior" not in kwargs:
        return None
    inputs = RoutingInputs(task_ids=kwargs.pop("task_ids", None), semantic_prior=kwargs.pop("semantic_prior", None))
    if torch.compiler.is_compiling():
        _checked_form(inputs.task_ids, adapter_config(model).n_tasks)
        return dataclasses.replace(inputs, prepare=_RoutingPreparation(model))
    return _prepare_routing(model, inputs)


def _prepare_routing(model: nn.Module, inputs: RoutingInputs) -> RoutingInputs:
    """Checked task ids (`validate_task_ids`, the merged task) and both inputs on the adapters' device."""
    task_ids = validate_task_ids(inputs.task_ids, adapter_config(model).n_tasks)
    _check_merged_task(model, task_ids)
    prior = inputs.semantic_prior
    device = _adapter_device(model)
    if isinstance(task_ids, torch.Tensor) and task_ids.device != device:
        task_ids = task_ids.to(device, non_blocking=True)
    if prior is not None:
        prior = prior.to(device, non_blocking=True)
    return RoutingInputs(task_ids=task_ids, semantic_prior=prior)


def _scope_inputs(model: nn.Module, inputs: RoutingInputs) -> RoutingInputs:
    """Checked inputs of a routing scope, an ``int`` task id as a 0-d tensor on the adapters' device.

    The calls inside a scope (``generate``'s decoding steps, a compiled forward) read the ids from
    the routing state, where ``torch.compile`` takes an ``int`` for a constant of the graph (one
    compilation per task) and a tensor for an input (one graph for every task).
    """
    if isinstance(inputs.task_ids, int):
        task_ids = torch.tensor(inputs.task_ids, device=_adapter_device(model))
        return dataclasses.replace(inputs, task_ids=task_ids)
    return inputs


class _RoutingPreparation:
    """``prepare`` of the inputs pushed while tracing: `_prepare_routing` for one model.

    A callable holding the model (not a closure), as `_RoutedGenerate`.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, inputs: RoutingInputs) -> RoutingInputs:
        return _prepare_routing(self.model, inputs)


def _adapter_device(model: nn.Module) -> torch.device:
    # One adapted layer by its name rather than a walk over every module: torch.compile traces
    # this once per graph, and the walk was a fifth of a tiny T5's tracing.
    name = getattr(model, _FIRST_LAYER_ATTR, None)
    layer = model.get_submodule(name) if name is not None else next(iter(adapted_layers(model).values()))
    return next(layer.bank.parameters()).device


def _pre_hook(model: nn.Module, args, kwargs):
    state = routing_state(model)
    try:
        inputs = _routing_inputs(model, kwargs)
    except Exception:
        # The forward hook runs even when this pre-hook raises (always_call=True) and pops once:
        # push a copy of the current inputs so it pops that, not an enclosing use_routing scope.
        state.push(state.current)
        raise
    state.push(inputs if inputs is not None else state.current)
    return args, kwargs


def _post_hook(model: nn.Module, args, kwargs, output):
    routing_state(model).pop()
    return output


class _RoutedGenerate:
    """``model.generate(..., task_ids=t, semantic_prior=p)``: the class's ``generate`` inside a routing scope.

    A small callable holding the model as state (not a closure over it), so ``copy.deepcopy(model)``
    and pickling give the copy a ``generate`` that runs the copy, not the original model.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, *args, **kwargs):
        model = self.model
        generate = type(model).generate.__get__(model)
        inputs = _routing_inputs(model, kwargs)
        if inputs is None:
            return generate(*args, **kwargs)
        with routing_state(model).scope(_scope_inputs(model, inputs)):
            return generate(*args, **kwargs)


def _wrap_generate(model: nn.Module) -> None:
    if not callable(getattr(type(model), "generate", None)):
        return
    model.generate = _RoutedGenerate(model)


class _RefusedSavePretrained:
    """``model.save_pretrained(...)`` of an injected Hugging Face model: refused, naming the right calls.

    Transformers would write every adapted layer's base weight under ``<module>.base.weight``, a
    key ``from_pretrained`` does not know: it re-initialises those weights at random, with only a
    log line. A callable holding the model (not a closure), as `_RoutedGenerate`, so copies refuse too.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, *args, **kwargs):
        name = type(self.model).__name__
        raise ValueError(
            f"{name}.save_pretrained would write the {len(adapted_layers(self.model))} adapted layers' base weights "
            f"under '<module>.base.weight' keys, which {name}.from_pretrained does not know and silently "
            "re-initialises. Save the adapters with tensoradapt.save_pretrained(model, directory) and load them "
            f"onto the base model with tensoradapt.from_pretrained({name}.from_pretrained(base), directory)"
        )


def _refuse_save_pretrained(model: nn.Module) -> None:
    if callable(getattr(type(model), "save_pretrained", None)):
        model.save_pretrained = _RefusedSavePretrained(model)


def inject(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Replace every ``nn.Linear`` / ``Conv1D`` whose name fully matches ``config.target_modules``
    (or the built-in pattern for the model type) by an `AdaptedLinear`, in place.

    All base parameters are frozen. Afterwards ``model(..., task_ids=t)`` routes the call
    (``t``: ``int`` or ``LongTensor (batch,)``, numpy integers too; T-REX also takes
    ``semantic_prior=(batch, k)``), and so does ``model.generate(..., task_ids=t)``, beam search
    included. A Hugging Face model's own ``save_pretrained`` is refused from then on (it would
    save the base weights under keys its ``from_pretrained`` re-initialises): use
    `tensoradapt.save_pretrained`.

    All or nothing: every adapter is built before the first module is replaced, so an error (a
    layer too large to materialise, heads that do not divide a dim) leaves ``model`` as it was.

    Raises:
        ValueError: the model already has adapters, or a target's dims make the config's
            entangled vectors too large to materialise (`tensoradapt.sizes`).

    Returns:
        ``model`` itself.
    """
    return _inject(model, config)


def _inject(model: nn.Module, config: AdapterConfig, prepare=None) -> nn.Module:
    """`inject`, calling ``prepare({name: AdaptedLinear})`` after the adapters are built and before
    any of them is installed (`tensoradapt.from_pretrained` loads the weights there)."""
    if getattr(model, _CONFIG_ATTR, None) is not None:
        raise ValueError(f"{type(model).__name__} already has tensoradapt adapters; inject once per model")
    config = dataclasses.replace(config)  # the model owns its copy (reset_routing edits n_tasks)
    pattern = config.target_modules or default_target_pattern(model)
    targets = {name: model.get_submodule(name) for name in find_targets(model, pattern, _accepts)}
    for name, target in targets.items():
        weight = target.weight
        check_materialized_size(
            config, *linear_dims(target), itemsize=weight.element_size(),
            dtype_name=str(weight.dtype).removeprefix("torch."), module=name,
        )
    state = RoutingState()
    layers = {name: AdaptedLinear(target, config, state).train(target.training) for name, target in targets.items()}
    if prepare is not None:
        prepare(layers)
    # Nothing above changed the model; from here on nothing can fail.
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for name, layer in layers.items():
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, layer)
    setattr(model, _STATE_ATTR, state)
    setattr(model, _CONFIG_ATTR, config)
    setattr(model, _FIRST_LAYER_ATTR, next(iter(layers), None))
    model.register_forward_pre_hook(_pre_hook, with_kwargs=True)
    model.register_forward_hook(_post_hook, with_kwargs=True, always_call=True)
    _wrap_generate(model)
    _refuse_save_pretrained(model)
    from tensoradapt.trainable import set_training_mode

    set_training_mode(model, config.mode)
    return model


@contextmanager
def use_routing(model: nn.Module, task_ids: TaskIds | None = None, semantic_prior: torch.Tensor | None = None):
    """Route every call inside the block: ``with use_routing(model, task_ids=3): model.generate(...)``."""
    inputs = _routing_inputs(model, {"task_ids": task_ids, "semantic_prior": semantic_prior})
    with routing_state(model).scope(_scope_inputs(model, inputs)):
        yield model


def _tied_elsewhere(model: nn.Module, layers: dict[str, AdaptedLinear]) -> dict[str, list[str]]:
    """``{adapted module: [other parameter names]}`` for base weights shared with other modules."""
    names_by_id: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names_by_id.setdefault(id(parameter), []).append(name)
    tied = {}
    for name, layer in layers.items():
        others = [n for n in names_by_id.get(id(layer.base.weight), []) if n != f"{name}.base.weight"]
        if others:
            tied[name] = others
    return tied


def merge(model: nn.Module, task: int | None = None) -> None:
    """Fold task ``task``'s delta into every adapted layer's base weight (see `AdaptedLinear.merge`).

    All layers or none: a failure part-way unmerges the layers already merged. While merged, calls
    routed to another task raise (the weights hold ``task``'s adapter only).

    Raises:
        ValueError: a bad ``task``, or an adapted base weight tied to another module (e.g.
            GPT-2's ``lm_head`` and ``wte``): merging it would change that module too.
    """
    task = validate_task_ids(task, adapter_config(model).n_tasks)
    layers = adapted_layers(model)
    tied = _tied_elsewhere(model, layers)
    if tied:
        name, others = next(iter(tied.items()))
        raise ValueError(
            f"cannot merge {name}: its weight is tied to {others}, which merging would change too; "
            "leave it out of target_modules or untie the weights (tie_word_embeddings=False) before injecting"
        )
    done = []
    try:
        for layer in layers.values():
            layer.merge(task)
            done.append(layer)
    except BaseException:
        for layer in done:
            layer.unmerge()
        raise
    setattr(model, _MERGED_ATTR, _as_int(task))


def _as_int(task: TaskIds | None) -> int | None:
    return int(task) if isinstance(task, torch.Tensor) else task


def _check_merged_task(model: nn.Module, task_ids: TaskIds | None) -> None:
    """``ValueError`` if a call is routed to another task than the merged one (CPU ids only: no sync)."""
    merged = getattr(model, _MERGED_ATTR, None)
    if merged is None or task_ids is None:
        return
    if isinstance(task_ids, torch.Tensor):
        if task_ids.device.type != "cpu" or not task_ids.numel():
            return
        if torch.compiler.is_compiling():  # a check inside the graph, no host read
            message = f"the adapters are merged for task {merged}: call tensoradapt.unmerge(model) to route others"
            torch._assert_async((task_ids == merged).all(), message)
            return
        if bool((task_ids == merged).all()):
            return
    elif task_ids == merged:
        return
    raise ValueError(
        f"the adapters are merged for task {merged}, so the model cannot route task_ids={task_ids}; "
        "call tensoradapt.unmerge(model) first"
    )


def unmerge(model: nn.Module) -> None:
    """Restore every merged base weight bit for bit."""
    for layer in adapted_layers(model).values():
        if layer.merged:
            layer.unmerge()
    setattr(model, _MERGED_ATTR, None)


@contextmanager
def disable_adapters(model: nn.Module):
    """Run the base model alone inside the block: ``with tensoradapt.disable_adapters(model): ...``.

    Merged layers are unmerged for the block (bit for bit) and merged again after it; meanwhile
    no task is merged, so calls may carry any ``task_ids``. Blocks nest: leaving an inner block
    restores what the outer one set, not the adapters.
    """
    layers = list(adapted_layers(model).values())
    merged = [(layer, layer.merged_task) for layer in layers if layer.merged]
    was_disabled = [layer.disabled for layer in layers]
    merged_task = getattr(model, _MERGED_ATTR, None)
    for layer, _ in merged:
        layer.unmerge()
    for layer in layers:
        layer.disabled = True
    if layers:
        setattr(model, _MERGED_ATTR, None)
    try:
        yield model
    finally:
        for layer, disabled in zip(layers, was_disabled):
            layer.disabled = disabled
        for layer, task in merged:
            layer.merge(task)
        if layers:
            setattr(model, _MERGED_ATTR, merged_task)
