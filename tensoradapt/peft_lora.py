"""Read a PEFT LoRA directory (``adapter_config.json`` + weights) without importing peft.

What a plain PEFT LoRA computes on a linear ``d_in -> d_out``, for every module it adapts:
``y = base(x) + s * (x A^T) B^T`` with ``lora_A.weight A (r, d_in)``, ``lora_B.weight B (d_out, r)``
and ``s = alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``), where ``r`` and ``alpha`` are the
config's ``r`` / ``lora_alpha`` or, for a module a key of ``rank_pattern`` / ``alpha_pattern``
matches, that key's value (matched as PEFT does: the first key ``k`` in file order with
``re.match(rf"(.*\\.)?({k})$", module)``). The rank of every module is read from its weights and
checked against the config's.

Only plain LoRA on ``nn.Linear`` / ``Conv1D`` is read. Variants that compute something else, or
that need weights outside the LoRA pair, are refused with the reason: DoRA, LoRA biases,
``bias != "none"``, ``modules_to_save``, trainable tokens, parameter targeting, aLoRA, QALoRA,
layer replication, and inits that rewrite the base weights (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA)
unless the adapter was converted to a plain LoRA when saved.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

__all__ = ["LoraLibraryError", "LoraModule", "PeftLora", "read_peft_lora"]

ADAPTER_CONFIG = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
#: Prefix of every key PEFT saves (``PeftModel.base_model.model``); the rest is the module's name.
KEY_PREFIX = "base_model.model."

#: Config fields of LoRA variants that a plain ``(A, B, s)`` cannot represent: field -> what it is.
_VARIANTS = {
    "use_dora": "DoRA (a learned magnitude vector rescales the weight)",
    "lora_bias": "a LoRA bias on lora_B",
    "modules_to_save": "fully trained copies of modules (modules_to_save)",
    "trainable_token_indices": "trainable token embeddings",
    "target_parameters": "LoRA on nn.Parameters (target_parameters)",
    "alora_invocation_tokens": "activated LoRA (the adapter switches on after invocation tokens)",
    "use_qalora": "QALoRA (pooled inputs)",
    "layer_replication": "replicated layers",
    "megatron_config": "Megatron parallel layers",
    "velora_config": "VeLoRA",
    "monteclora_config": "MonteCLoRA",
    "use_bdlora": "block-diagonal LoRA",
    "arrow_config": "an Arrow router over several LoRAs",
    "kasa_config": "KaSA (singular values of the base weight)",
}
#: ``init_lora_weights`` values that rewrite the base weights: the adapter needs the rewritten base.
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


class LoraLibraryError(ValueError):
    """A LoRA directory that cannot be imported as it is; the message names the directory and the fix.

    Attributes:
        directory: the LoRA directory.
    """

    def __init__(self, directory: str | os.PathLike, message: str) -> None:
        self.directory = Path(directory)
        self.message = message
        super().__init__(f"LoRA {self.directory}: {message}")

    def __reduce__(self):
        return type(self), (self.directory, self.message)


class LoraModule(NamedTuple):
    """One adapted module of a PEFT LoRA, in this library's orientation.

    ``down A (d_in, r)`` (PEFT's ``lora_A.weight`` transposed), ``up B (r, d_out)`` (``lora_B.weight``
    transposed), unscaled; the module's update is ``scaling * A B`` (``(d_in, d_out)``).
    """

    down: torch.Tensor
    up: torch.Tensor
    scaling: float

    @property
    def rank(self) -> int:
        return self.down.shape[1]

    def scaled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, scaling * B)``: the pair whose product is the update (what export writes)."""
        return self.down, self.up * self.scaling


@dataclass(frozen=True)
class PeftLora:
    """A PEFT LoRA directory, read.

    Attributes:
        directory: where it was read from.
        modules: ``{module name in the base model: LoraModule}`` (names without PEFT's
            ``base_model.model.`` prefix).
        base_model_name_or_path: the config's, ``None`` when unset or empty.
    """

    directory: Path
    modules: dict[str, LoraModule]
    base_model_name_or_path: str | None

    @property
    def max_rank(self) -> int:
        return max(module.rank for module in self.modules.values())


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's ``get_pattern_key``: the first key ``k`` with ``re.match(rf"(.*\\.)?({k})$", module)``."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _load_weights(directory: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(path)
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a damaged file: name it
            raise LoraLibraryError(directory, f"cannot read {name}: {error}") from error
    raise LoraLibraryError(
        directory, f"has no weights ({' or '.join(WEIGHT_FILES)}); pass the folder save_pretrained wrote"
    )


def _read_config(directory: Path) -> dict:
    path = directory / ADAPTER_CONFIG
    if not path.is_file():
        nested = sorted(p.parent.name for p in directory.glob(f"*/{ADAPTER_CONFIG}")) if directory.is_dir() else []
        hint = f"; it has adapters in the subfolders {nested} (PEFT saves non-default adapter names there)"
        hint = hint if nested else ""
        what = "is not a directory" if not directory.is_dir() else f"has no {ADAPTER_CONFIG}"
        raise LoraLibraryError(directory, f"{what}: pass a PEFT LoRA folder as save_pretrained writes it{hint}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LoraLibraryError(directory, f"{ADAPTER_CONFIG} is not JSON: {error}") from error
    if not isinstance(config, dict):
        raise LoraLibraryError(directory, f"{ADAPTER_CONFIG} holds a {type(config).__name__}, not a config object")
    return config


def _check_plain_lora(directory: Path, config: dict) -> None:
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise LoraLibraryError(
            directory, f"is a PEFT {config.get('peft_type')!r} adapter, not a LoRA; only peft_type 'LORA' is imported"
        )
    for field, what in _VARIANTS.items():
        if config.get(field):
            raise LoraLibraryError(
                directory,
                f"uses {what} ({field}={config[field]!r}), which a plain LoRA (A, B, alpha / r) cannot represent; "
                "import plain LoRAs only, or merge the variant into a plain LoRA first",
            )
    if config.get("bias", "none") != "none":
        raise LoraLibraryError(
            directory,
            f"trains biases (bias={config['bias']!r}), which live outside the LoRA pair; retrain with bias='none'",
        )
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
        raise LoraLibraryError(
            directory,
            f"was initialised with init_lora_weights={init!r}, which rewrites the base weights, so it only works on "
            "that rewritten base; save it converted to a plain LoRA (PEFT's save_pretrained("
            "path_initial_model_for_weight_conversion=...)) and import that",
        )


def read_peft_lora(directory: str | os.PathLike) -> PeftLora:
    """Read one PEFT LoRA directory (no peft needed), checking that it is a plain LoRA.

    Raises:
        LoraLibraryError: not a LoRA folder, a LoRA variant (see the module docstring), weights
            that are not LoRA pairs, or ranks that disagree with the config.
    """
    directory = Path(directory)
    config = _read_config(directory)
    _check_plain_lora(directory, config)
    weights = _load_weights(directory)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        name = key.removeprefix(KEY_PREFIX)
        match = re.fullmatch(r"(?P<module>.+)\.lora_(?P<side>A|B)(\.[^.]+)?\.weight", name)
        if match is None:
            raise LoraLibraryError(
                directory,
                f"holds {key!r}, which is not a lora_A / lora_B weight of a linear layer (embedding, convolution, "
                "bias and magnitude weights are not imported); import plain linear LoRAs only",
            )
        if tensor.dim() != 2:
            raise LoraLibraryError(
                directory, f"{key} has shape {tuple(tensor.shape)}; only linear (2-d) LoRA weights import"
            )
        pairs.setdefault(match["module"], {})[match["side"]] = tensor
    if not pairs:
        raise LoraLibraryError(directory, "holds no LoRA weights")
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora", False))
    modules = {}
    for name, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            missing = "lora_B" if "A" in pair else "lora_A"
            raise LoraLibraryError(directory, f"has no {missing} weight for {name}; the file is incomplete")
        lora_a, lora_b = pair["A"], pair["B"]
        rank = lora_a.shape[0]
        if lora_b.shape[1] != rank:
            raise LoraLibraryError(
                directory, f"{name}: lora_A {tuple(lora_a.shape)} and lora_B {tuple(lora_b.shape)} disagree on the rank"
            )
        configured = _pattern_value(rank_pattern, name, config.get("r", rank))
        if configured != rank:
            raise LoraLibraryError(
                directory,
                f"{name}: the weights have rank {rank} but {ADAPTER_CONFIG} gives r={configured} (r / rank_pattern); "
                "the scaling alpha / r would be wrong: fix the config",
            )
        alpha = float(_pattern_value(alpha_pattern, name, config.get("lora_alpha", 8)))
        scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
        modules[name] = LoraModule(lora_a.T, lora_b.T, scaling)
    base = config.get("base_model_name_or_path") or None
    return PeftLora(directory, modules, base)
