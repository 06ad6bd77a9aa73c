"""Few-shot adaptation of a pre-trained adapter to one held-out task (T-Few's recipe).

For every (task, seed) the protocol hands `FewShotAdapter` a fresh copy of the pre-trained
model and the seed's training examples (all with task id 0). It then

1. opens a new task: routed methods get one fresh routing row (`tensoradapt.reset_routing`,
   uniform +-1e-3); T-REX gets one prior row computed from the training inputs
   (`t0_recipes.trex_prior.set_single_task_prior`); LoRA / TLoRA have nothing to reset;
2. picks what trains (`tensoradapt.set_training_mode`): ``full``, ``routing_only`` ("z") or
   ``modules_only`` ("mu": skills averaged, routing dropped);
3. trains ``steps`` Adafactor steps of LM + unlikelihood + length-normalised MC loss
   (`t0_recipes.losses.combine_tfew`) with a linear schedule and 6 % warm-up, through
   `t0_recipes.training.train` on a `ChoiceScorer` (the prompt encoded once, DDP-safe).

The evaluated model is the last one: nothing is selected on evaluation rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from t0_recipes.data.rows import Example
from t0_recipes.scoring.scorers import Scorer, Seq2SeqScorer
from t0_recipes.scoring.seq2seq import LossWeights, RouteFn
from t0_recipes.methods import check_mode
from t0_recipes.training.optim import OptimConfig, build_optimization
from t0_recipes.presets import FewShotHParams
from t0_recipes.training.loop import train

__all__ = ["FewShotAdapter", "open_new_task"]

logger = logging.getLogger(__name__)


def open_new_task(model: nn.Module, method: str, mode: str, examples: Sequence[Example], trex_prior=None) -> None:
    """Give ``model`` one fresh task (id 0) and set what trains for ``mode`` (steps 1-2 above).

    Raises:
        ValueError: ``mode`` does not apply to ``method``; T-REX without its fitted prior.
    """
    import tensoradapt

    check_mode(method, mode)
    if method == "trex":
        if trex_prior is None:
            raise ValueError("method='trex' needs trex_prior (a SemanticPrior fitted on the pre-training inputs)")
        from t0_recipes.training.trex_prior import set_single_task_prior

        set_single_task_prior(model, trex_prior, examples)
    elif tensoradapt.adapter_config(model).is_routed:
        tensoradapt.reset_routing(model, 1)
    tensoradapt.set_training_mode(model, mode)


class FewShotAdapter:
    """The protocol's ``adapt(model, examples, collator, seed) -> model`` for one method and mode.

    Args:
        method: the adapter method of ``model``.
        mode: ``"full"``, ``"routing_only"`` or ``"modules_only"``.
        hparams: few-shot steps, batch size, learning rate, warm-up, clipping.
        accelerator: from `t0_recipes.training.make_accelerator` (shared by every run).
        route: routing context of the loss (``tensoradapt.use_routing`` for task-routed methods).
        trex_prior: the fitted `SemanticPrior` (T-REX only).
        scorer: the model family's scorer (its few-shot module and loss).
        loss_weights: T-Few's weights of the LM, unlikelihood and MC terms.
        progress: tqdm bars.

    Attributes:
        params: ``tensoradapt.count_parameters`` of the first adapted model (trainable / total).
    """

    def __init__(
        self,
        method: str,
        mode: str,
        hparams: FewShotHParams,
        *,
        accelerator,
        route: RouteFn | None,
        trex_prior=None,
        scorer: Scorer | None = None,
        loss_weights: LossWeights = LossWeights(),
        progress: bool = True,
    ) -> None:
        check_mode(method, mode)
        self.method = method
        self.mode = mode
        self.hparams = hparams
        self.accelerator = accelerator
        self.route = route
        self.trex_prior = trex_prior
        self.scorer = scorer if scorer is not None else Seq2SeqScorer()
        self.loss_weights = loss_weights
        self.progress = progress
        self.params: dict[str, Any] | None = None

    def open_only(self, model: nn.Module, examples: list[Example], collator, seed: int) -> nn.Module:
        """Open the new task (steps 1-2) without training: the zero-shot start of few-shot adaptation.

        The fresh routing row is drawn from ``seed`` alone, so a run's every draw comes from its seeds.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            open_new_task(model, self.method, self.mode, examples, self.trex_prior)
        return model

    def __call__(self, model: nn.Module, examples: list[Example], collator, seed: int) -> nn.Module:
        import tensoradapt

        self.open_only(model, examples, collator, seed)
        if self.params is None:
            counts = tensoradapt.count_parameters(model)
            self.params = {key: counts[key] for key in ("trainable", "total", "adapter", "routing", "modules")}
        module, loss_fn = self.scorer.fewshot_parts(model, self.route, self.loss_weights)
        optimizer, scheduler = build_optimization(
            module, OptimConfig.from_hparams(self.hparams), total_steps=self.hparams.steps
        )
        result = train(
            module,
            loss_fn,
            examples,
            collate_fn=collator,
            batch_size=self.hparams.batch_size,
            steps=self.hparams.steps,
            optimizer=optimizer,
            scheduler=scheduler,
            accelerator=self.accelerator,
            grad_clip=self.hparams.grad_clip,
            seed=seed,
            progress=self.progress,
            desc=f"few-shot {examples[0].task} seed {seed}" if examples else "few-shot",
        )
        self.accelerator.free_memory()
        logger.info("few-shot seed %d: final loss %.4f in %.1f s", seed, result.losses[-1], result.wall_time_s)
        return model
