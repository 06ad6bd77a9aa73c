"""The adapter of every recipe: the paper's settings on T0-3B, the MiniLM proxy's, and a scaled-down copy for the tiny preset.

Paper settings (PAPER_FACTS sections 2-5): LoRA rank 1 for LoRA / Poly / MHR, rank 16 for the
TLoRA-based methods; 8 skills for Poly / MHR and 64 MHR heads; TensorPoly-I / -II at tensor
rank R = 8 and order N = 2; T-REX with r1 = 4 down and r2 = 8 up vectors and 32 clusters. The
routed methods use plain sigmoid-then-normalise routing (the paper's final runs: no Gumbel
noise). The tiny preset (d_model 64) keeps every method's structure at smaller sizes.

Few-shot training modes (the paper's Table 4): ``full`` (routing and modules), ``routing_only``
("z": the new task's routing row) and ``modules_only`` ("mu": skills averaged, no routing).
LoRA and TLoRA have no routing, so only ``full`` applies to them.
"""

from __future__ import annotations

from typing import Any

from tensoradapt import METHODS, TRAINING_MODES, AdapterConfig

__all__ = ["ADAPTER_SIZES", "adapter_config_for", "check_mode", "modes_of", "routes_by_task"]


_ROUTED = {"routing_noise": "none"}
_PAPER: dict[str, dict[str, Any]] = {
    "lora": {"lora_rank": 1},
    "tlora": {"lora_rank": 16, "tensor_rank": 1, "order": 2},
    "poly": {"lora_rank": 1, "n_skills": 8, **_ROUTED},
    "mhr": {"lora_rank": 1, "n_skills": 8, "n_heads": 64, **_ROUTED},
    "tensorpoly_i": {"lora_rank": 16, "tensor_rank": 8, "order": 2, **_ROUTED},
    "tensorpoly_ii": {"lora_rank": 16, "tensor_rank": 8, "order": 2, **_ROUTED},
    "trex": {"trex_down": 4, "trex_up": 8, "trex_n_clusters": 32},
}
_TINY: dict[str, dict[str, Any]] = {
    "lora": {"lora_rank": 1},
    "tlora": {"lora_rank": 4, "tensor_rank": 1, "order": 2},
    "poly": {"lora_rank": 1, "n_skills": 4, **_ROUTED},
    "mhr": {"lora_rank": 1, "n_skills": 4, "n_heads": 8, **_ROUTED},  # 8 divides 64 and 128
    "tensorpoly_i": {"lora_rank": 4, "tensor_rank": 4, "order": 2, **_ROUTED},
    "tensorpoly_ii": {"lora_rank": 4, "tensor_rank": 4, "order": 2, **_ROUTED},
    "trex": {"trex_down": 2, "trex_up": 4, "trex_n_clusters": 4},
}
#: The MiniLM proxy (hidden 384, FFN 1536): the sizes of the issue that found the dead defaults
#: (LoRA rank 8, R 8, N 2, 8 skills), every method at one LoRA rank so the comparison is fair.
_MINILM: dict[str, dict[str, Any]] = {
    "lora": {"lora_rank": 8},
    "tlora": {"lora_rank": 8, "tensor_rank": 8, "order": 2},
    "poly": {"lora_rank": 8, "n_skills": 8, **_ROUTED},
    "mhr": {"lora_rank": 8, "n_skills": 8, "n_heads": 8, **_ROUTED},  # 8 divides 384 and 1536
    "tensorpoly_i": {"lora_rank": 8, "tensor_rank": 8, "order": 2, **_ROUTED},
    "tensorpoly_ii": {"lora_rank": 8, "tensor_rank": 8, "order": 2, **_ROUTED},
    "trex": {"trex_down": 4, "trex_up": 8, "trex_n_clusters": 16},
}
#: Adapter sizes per preset name.
ADAPTER_SIZES: dict[str, dict[str, dict[str, Any]]] = {"paper": _PAPER, "minilm": _MINILM, "tiny": _TINY}


def routes_by_task(method: str) -> bool:
    """Whether the method reads task ids: a routing matrix (Poly, MHR, TensorPoly) or a task prior (T-REX)."""
    _check_method(method)
    return method not in ("lora", "tlora")


def modes_of(method: str) -> tuple[str, ...]:
    """The few-shot training modes the method supports."""
    _check_method(method)
    return TRAINING_MODES if routes_by_task(method) else ("full",)


def check_mode(method: str, mode: str) -> None:
    """``ValueError`` naming ``--mode`` when ``mode`` does not apply to ``method``."""
    if mode not in modes_of(method):
        raise ValueError(f"--mode {mode} does not apply to {method}: it has no routing; choose one of {modes_of(method)}")


def adapter_config_for(method: str, preset: str, *, n_tasks: int = 1, **overrides: Any) -> AdapterConfig:
    """The `AdapterConfig` of ``method`` at the sizes of ``preset`` (``"paper"`` or ``"tiny"``).

    Args:
        method: one of `tensoradapt.METHODS`.
        preset: ``"paper"`` (T0-3B settings), ``"minilm"`` (the CPU proxy) or ``"tiny"`` (the
            same structure, smaller).
        n_tasks: rows of the task routing (pre-training tasks) / of the T-REX task prior.
        overrides: any other `AdapterConfig` field.
    """
    _check_method(method)
    if preset not in ADAPTER_SIZES:
        raise ValueError(f"preset={preset!r} has no adapter sizes; choose one of {sorted(ADAPTER_SIZES)}")
    return AdapterConfig(method=method, n_tasks=n_tasks, **{**ADAPTER_SIZES[preset][method], **overrides})


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; choose one of {METHODS}")
