"""Export one task as a plain PEFT LoRA checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from tensoradapt.atomic import atomic_write
from tensoradapt.layers import AdaptedLinear, is_conv1d
from tensoradapt.model import adapted_layers, adapter_config, validate_task_ids

__all__ = ["task_lora_matrices", "export_peft_lora"]


@torch.no_grad()
def task_lora_matrices(layer: AdaptedLinear, task: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One task's plain LoRA ``(A (d_in, r), B (r, d_out))`` with the scaling folded into ``B``.

    Routing runs in eval mode (sigmoid, no noise). Token-routed layers (T-REX) give their
    routing-averaged LoRA (``combiner.averaged_matrices``: calibrated mean weights, else the
    weights at zero input with ``task``'s prior row); `tensoradapt.trex.trex_export_error`
    measures what that approximation costs. ``task`` is checked as ``task_ids`` are
    (`tensoradapt.model.validate_task_ids`: an ``int``, a 0-d tensor, a numpy integer).
    """
    task = validate_task_ids(task, layer.config.n_tasks)
    if layer.combiner.token_routed:
        down, up = layer.combiner.averaged_matrices(layer.bank, task)
    else:
        was_training = layer.combiner.training
        layer.combiner.eval()
        try:
            down, up = layer.combiner.adapter_matrices(layer.bank, task)
        finally:
            layer.combiner.train(was_training)
    return down, up * layer.scaling


_Pair = tuple[torch.Tensor, torch.Tensor]


def _trim_zero_rank(matrices: dict[str, _Pair]) -> dict[str, _Pair]:
    """Drop the rank components that add exactly nothing, and the layers left with none.

    Component ``k`` of a layer's ``A (d_in, r)``, ``B (r, d_out)`` is dropped when column ``k`` of
    ``A`` or row ``k`` of ``B`` is all zeros (its term ``A[:, k] B[k]`` is exactly zero). Every
    kept layer is zero-padded to the largest kept rank, so one ``r`` serves all (no
    ``rank_pattern``). A layer with no component left is dropped; if every layer is, nothing is.
    """
    kept = {name: ((down != 0).any(0) & (up != 0).any(1)).nonzero().flatten() for name, (down, up) in matrices.items()}
    rank = max((int(index.numel()) for index in kept.values()), default=0)
    if rank == 0:
        return matrices
    trimmed = {}
    for name, (down, up) in matrices.items():
        index = kept[name]
        if index.numel() == 0:
            continue
        down_kept, up_kept = down[:, index], up[index]
        pad = rank - index.numel()
        if pad:
            down_kept = torch.cat([down_kept, down_kept.new_zeros(down.shape[0], pad)], dim=1)
            up_kept = torch.cat([up_kept, up_kept.new_zeros(pad, up.shape[1])], dim=0)
        trimmed[name] = (down_kept, up_kept)
    return trimmed


def export_peft_lora(
    model: nn.Module,
    directory: str | os.PathLike,
    task: int | None = None,
    *,
    base_model_name_or_path: str | None = None,
    trim_zero_rank: bool = False,
) -> Path:
    """Write task ``task`` as a PEFT LoRA checkpoint that ``peft.PeftModel.from_pretrained`` loads.

    The rank is the method's effective rank ``r`` (the routed mixture of rank-``r`` skills is
    rank ``r``); ``lora_alpha = r`` so PEFT's scaling is 1 and ours is folded into ``lora_B``.
    Keys: ``base_model.model.<module>.lora_A.weight (r, d_in)``, ``...lora_B.weight (d_out, r)``.

    ``trim_zero_rank=True`` drops the rank components whose column of ``A`` or row of ``B`` is
    exactly zero, and the layers where the task's adapter is exactly zero (`tensoradapt.library`
    uses it: a LoRA imported at a smaller rank than the library's, or without some module, is
    written back at its own rank and on its own modules). The output is the same either way.
    """
    config = adapter_config(model)
    task = validate_task_ids(task, config.n_tasks)
    layers = adapted_layers(model)
    matrices = {name: task_lora_matrices(layer, task) for name, layer in layers.items()}
    if trim_zero_rank:
        matrices = _trim_zero_rank(matrices)
    tensors: dict[str, torch.Tensor] = {}
    rank = None
    fan_in_fan_out = False
    for name, (down, up) in matrices.items():
        rank = down.shape[-1]
        fan_in_fan_out = fan_in_fan_out or is_conv1d(layers[name].base)
        prefix = f"base_model.model.{name}"
        tensors[f"{prefix}.lora_A.weight"] = down.T.contiguous().cpu()
        tensors[f"{prefix}.lora_B.weight"] = up.T.contiguous().cpu()
    peft_config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path
        or getattr(getattr(model, "config", None), "_name_or_path", None),
        "r": rank,
        "lora_alpha": rank,
        "lora_dropout": 0.0,
        "target_modules": sorted(matrices),
        "fan_in_fan_out": fan_in_fan_out,
        "bias": "none",
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
    }
    directory = Path(directory)
    atomic_write(directory / "adapter_model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    text = json.dumps(peft_config, indent=2) + "\n"
    atomic_write(directory / "adapter_config.json", lambda tmp: Path(tmp).write_text(text))
    return directory
