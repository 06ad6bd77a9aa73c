"""Save and load adapters: ``adapter_config.json`` + ``adapter_model.safetensors``, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tensoradapt.atomic import atomic_write
from tensoradapt.config import CONFIG_NAME, AdapterConfig
from tensoradapt.model import adapted_layers, adapter_config

__all__ = ["WEIGHTS_NAME", "adapter_state_dict", "save_adapter", "load_adapter"]

WEIGHTS_NAME = "adapter_model.safetensors"


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' parameters: ``"<module name>.<bank|combiner>.<parameter>" -> tensor``."""
    state: dict[str, torch.Tensor] = {}
    for name, layer in adapted_layers(model).items():
        for part in ("bank", "combiner"):
            for parameter_name, parameter in getattr(layer, part).named_parameters():
                state[f"{name}.{part}.{parameter_name}"] = parameter.detach()
    return state


def save_adapter(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into ``directory``.

    Each file is written to a temporary name and moved into place (weights first, config last).
    """
    directory = Path(directory)
    config = adapter_config(model)
    tensors = {key: value.contiguous().cpu() for key, value in adapter_state_dict(model).items()}
    metadata = {"format": "pt", "tensoradapt_method": config.method}
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    text = json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return directory


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Load adapter weights saved by `save_adapter` into an injected ``model``.

    Raises:
        ValueError: the saved method differs, a setting that changes the output but no shape differs
            (``lora_alpha`` through the scaling, ``normalize_outer``), or the first key (in sorted
            order) that is missing, unexpected or of another shape is named.
    """
    directory = Path(directory)
    saved_config = AdapterConfig.from_json(directory / CONFIG_NAME)
    config = adapter_config(model)
    if saved_config.method != config.method:
        raise ValueError(
            f"checkpoint {directory} holds method={saved_config.method!r} but the model has {config.method!r}; "
            "inject the model with the checkpoint's config (AdapterConfig.from_json(directory))"
        )
    saved = load_file(directory / WEIGHTS_NAME)
    expected = adapter_state_dict(model)
    for key in sorted(set(saved) | set(expected)):
        if key not in expected:
            raise ValueError(f"checkpoint key {key!r} has no parameter in the model: the adapted modules differ")
        if key not in saved:
            raise ValueError(f"model parameter {key!r} is missing from checkpoint {directory}")
        if saved[key].shape != expected[key].shape:
            raise ValueError(
                f"checkpoint key {key!r} has shape {tuple(saved[key].shape)} but the model expects "
                f"{tuple(expected[key].shape)} (different dims, ranks, tasks or heads)"
            )
    # Settings the shapes cannot reveal: loading across them would silently change every output.
    for name, saved_value, value in (
        ("lora_alpha", saved_config.scaling, config.scaling),
        ("normalize_outer", saved_config.normalize_outer, config.normalize_outer),
    ):
        if saved_value != value:
            raise ValueError(
                f"checkpoint {directory} was trained with {name}={getattr(saved_config, name)!r} but the model "
                f"has {name}={getattr(config, name)!r}; inject the model with the checkpoint's config "
                "(AdapterConfig.from_json(directory))"
            )
    with torch.no_grad():
        for key, parameter in expected.items():
            parameter.copy_(saved[key])
    return model
