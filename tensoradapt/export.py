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


def export_peft_lora(
    model: nn.Module,
    directory: str | os.PathLike,
    task: int | None = None,
    *,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Write task ``task`` as a PEFT LoRA checkpoint that ``peft.PeftModel.from_pretrained`` loads.

    The rank is the method's effective rank ``r`` (the routed mixture of rank-``r`` skills is
    rank ``r``); ``lora_alpha = r`` so PEFT's scaling is 1 and ours is folded into ``lora_B``.
    Keys: ``base_model.model.<module>.lora_A.weight (r, d_in)``, ``...lora_B.weight (d_out, r)``.
    """
    config = adapter_config(model)
    task = validate_task_ids(task, config.n_tasks)
    layers = adapted_layers(model)
    tensors: dict[str, torch.Tensor] = {}
    rank = None
    fan_in_fan_out = False
    for name, layer in layers.items():
        down, up = task_lora_matrices(layer, task)
        rank = down.shape[-1]
        fan_in_fan_out = fan_in_fan_out or is_conv1d(layer.base)
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
        "target_modules": sorted(layers),
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
