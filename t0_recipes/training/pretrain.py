"""Multi-task pre-training of the adapters: task-id routed, resumable checkpoints.

Every example of the mixture (`t0_recipes.data.mixture`) trains with its scorer's pre-training
loss (seq2seq: the gold answer's plain LM loss; cross-encoder: cross-entropy over the choices,
with the scoring head trained alongside), routed by its task id. The loop is `t0_recipes.training.train`:
accelerate (DDP / bf16), Adafactor with the routing logits at ``lr_routing`` and the modules at
``lr_modules``, a linear schedule with warm-up, a checkpoint every ``checkpoint_every`` steps
written atomically, and ``resume=True`` continuing exactly where a killed run stopped (a run
already complete returns at once with its weights loaded).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from t0_recipes.scoring.scorers import Scorer, Seq2SeqScorer
from t0_recipes.data.rows import Example
from t0_recipes.training.optim import OptimConfig, build_optimization
from t0_recipes.presets import PretrainHParams
from t0_recipes.training.loop import TrainResult, train

__all__ = ["pretrain"]

logger = logging.getLogger(__name__)


def pretrain(
    model: nn.Module,
    examples: Sequence[Example],
    collator: Callable[[Sequence[Example]], dict],
    hparams: PretrainHParams,
    *,
    accelerator,
    with_task_ids: bool,
    scorer: Scorer | None = None,
    output_dir: str | os.PathLike,
    checkpoint_every: int | None = None,
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> TrainResult:
    """``hparams.steps`` steps of the LM loss over ``examples``; checkpoints under ``output_dir``.

    Args:
        model: the adapted backbone (its trainable parameters train in place).
        examples: the mixture, task ids numbered by its `TaskIndex`.
        collator: tokenizer-side collation (`LMCollator` wraps it).
        hparams: steps, batch size, learning rates, warm-up, clipping.
        accelerator: from `t0_recipes.training.make_accelerator`.
        with_task_ids: route by the examples' task ids.
        output_dir: checkpoint folder (``checkpoint-<step>/`` and ``latest``).
        checkpoint_every: steps between checkpoints (the last step is always saved).
        resume: continue from ``output_dir``'s latest checkpoint.

    Raises:
        ValueError: no examples.
    """
    if not examples:
        raise ValueError(
            "the pre-training mixture is empty: --data-dir holds no non-held-out task (e.g. t0_fewshot/boolq); "
            "add one or pass --pretrain-steps 0"
        )
    from tensoradapt import use_routing

    scorer = scorer if scorer is not None else Seq2SeqScorer()
    extra = scorer.extra_trainable(model)
    for parameter in extra:
        parameter.requires_grad_(True)
    wrapper, collate_fn, loss_fn = scorer.pretrain_parts(model, collator, route=use_routing if with_task_ids else None)
    optimizer, scheduler = build_optimization(wrapper, OptimConfig.from_hparams(hparams), total_steps=hparams.steps)
    result = train(
        wrapper,
        loss_fn,
        list(examples),
        collate_fn=collate_fn,
        batch_size=hparams.batch_size,
        steps=hparams.steps,
        optimizer=optimizer,
        scheduler=scheduler,
        accelerator=accelerator,
        grad_clip=hparams.grad_clip,
        seed=seed,
        output_dir=output_dir,
        checkpoint_every=checkpoint_every,
        keep_last=2,
        save_adapter=False,  # the wrapper is not the adapted model; `pretrain` writes adapter/ itself
        resume=resume,
        progress=progress,
        desc="pre-training",
    )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        from tensoradapt import save_adapter

        save_adapter(model, Path(output_dir) / "adapter")
    accelerator.free_memory()
    for parameter in extra:
        parameter.requires_grad_(False)
    return result
