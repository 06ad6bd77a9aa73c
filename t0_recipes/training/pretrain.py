"""Multi-task pre-training of the adapters: task-id routed, plain LM loss, resumable checkpoints.

Every example of the mixture (`t0_recipes.data.mixture`) trains its gold answer with the LM loss,
routed by its task id (``model(**batch, task_ids=ids)``). The loop is `t0_recipes.training.train`:
accelerate (DDP / bf16), Adafactor with the routing logits at ``lr_routing`` and the modules at
``lr_modules``, a linear schedule with warm-up, a checkpoint every ``checkpoint_every`` steps
written atomically, and ``resume=True`` continuing exactly where a killed run stopped (a run
already complete returns at once with its weights loaded).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from t0_recipes.data.collate import MultipleChoiceCollator
from t0_recipes.data.rows import Example
from t0_recipes.training.optim import OptimConfig, build_optimization
from t0_recipes.presets import PretrainHParams
from t0_recipes.training.loop import TrainResult, seq2seq_lm_loss, train

__all__ = ["LMCollator", "Seq2SeqLM", "pretrain"]

logger = logging.getLogger(__name__)


class LMCollator:
    """``examples -> batch`` for the plain LM loss: the prompt and its gold answer as ``labels``.

    Batch: ``input_ids``, ``attention_mask`` (b, L); ``labels`` (b, T) with -100 on padding;
    ``decoder_attention_mask`` (b, T); ``task_ids`` (b,) when ``with_task_ids``.

    Args:
        collator: tokenizes prompts and choices (`MultipleChoiceCollator`).
        with_task_ids: pass the routing rows (methods that route by task).
    """

    def __init__(self, collator: MultipleChoiceCollator, *, with_task_ids: bool) -> None:
        self.collator = collator
        self.with_task_ids = with_task_ids

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        batch = self.collator(examples)
        rows = torch.arange(len(examples))
        ids = batch["choice_ids"][rows, batch["gold"]]  # b T
        mask = batch["choice_mask"][rows, batch["gold"]]
        out = {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "labels": ids.masked_fill(mask == 0, -100),
            "decoder_attention_mask": mask,
        }
        if self.with_task_ids:
            out["task_ids"] = batch["task_ids"]
        return out


class Seq2SeqLM(nn.Module):
    """A plain wrapper whose ``forward(**kwargs)`` calls the model.

    Accelerate patches the ``forward`` of what it prepares (mixed precision); preparing this
    wrapper leaves the adapted model itself untouched, so it can be copied for every few-shot
    run afterwards.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **kwargs: Any) -> Any:
        return self.model(**kwargs)


def pretrain(
    model: nn.Module,
    examples: Sequence[Example],
    collator: MultipleChoiceCollator,
    hparams: PretrainHParams,
    *,
    accelerator,
    with_task_ids: bool,
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
    wrapper = Seq2SeqLM(model)
    optimizer, scheduler = build_optimization(wrapper, OptimConfig.from_hparams(hparams), total_steps=hparams.steps)
    result = train(
        wrapper,
        seq2seq_lm_loss,
        list(examples),
        collate_fn=LMCollator(collator, with_task_ids=with_task_ids),
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
    return result
