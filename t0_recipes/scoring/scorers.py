"""One protocol, two scorers: what the pipeline asks of a model family, in one object each.

=====================  ==========================================  =========================================
                       `Seq2SeqScorer` (T5, T0-3B)                 `CrossEncoderScorer` (BERT-like encoders)
=====================  ==========================================  =========================================
batch                  prompt + tokenised choices (`collate`)      (prompt, choice) pairs (`PairCollator`)
rank score (b, C)      length-normalised choice loss               minus the head's logit
few-shot loss          T-Few: LM + unlikelihood + MC               cross-entropy over the choices
pre-training loss      plain LM loss on the gold answer            cross-entropy over the choices
trainable besides      nothing                                     the scoring head, in pre-training only
the adapters
=====================  ==========================================  =========================================

Everything else (data, routing, modes, optimiser, checkpoints, report) is shared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from t0_recipes.data.collate import MultipleChoiceCollator
from t0_recipes.data.rows import Example
from t0_recipes.scoring.cross_encoder import HEAD_NAME, PairCollator, PairScorer, pair_loss, pair_rank_scores
from t0_recipes.scoring.rank import seq2seq_rank_scores
from t0_recipes.scoring.seq2seq import (
    ChoiceScorer,
    LMCollator,
    LossOutput,
    LossWeights,
    RouteFn,
    Seq2SeqLM,
    combine_tfew,
    seq2seq_lm_loss,
)

__all__ = ["SCORERS", "CrossEncoderScorer", "Scorer", "Seq2SeqScorer", "get_scorer"]

Batch = Mapping[str, torch.Tensor]
#: ``(module, batch) -> scalar loss (or an object with .loss)``, as `t0_recipes.training.loop.train` reads it.
LossFn = Callable[[nn.Module, Any], Any]


class Scorer:
    """The interface; see the module docstring for what each scorer does."""

    name: ClassVar[str]

    def collator(self, tokenizer: Any, max_length: int) -> Callable[[Sequence[Example]], dict[str, torch.Tensor]]:
        """``examples -> batch`` with ``gold (b,)`` and ``task_ids (b,)``."""
        raise NotImplementedError

    def rank_scores(self, model: nn.Module, batch: Batch, *, route: RouteFn | None = None) -> torch.Tensor:
        """``(b, C)`` scores, lower is better, ``+inf`` for missing choices."""
        raise NotImplementedError

    def fewshot_parts(self, model: nn.Module, route: RouteFn | None, weights: LossWeights) -> tuple[nn.Module, LossFn]:
        """The module to train in few-shot adaptation and its loss."""
        raise NotImplementedError

    def pretrain_parts(
        self, model: nn.Module, collate: Callable, *, route: RouteFn | None
    ) -> tuple[nn.Module, Callable, LossFn]:
        """The module to pre-train, its collate function (over `collator`'s) and its loss."""
        raise NotImplementedError

    def extra_trainable(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters besides the adapters that train in multi-task pre-training."""
        return []


class Seq2SeqScorer(Scorer):
    """Rank classification by choice likelihood (T-Few / T0)."""

    name = "seq2seq"

    def collator(self, tokenizer: Any, max_length: int) -> MultipleChoiceCollator:
        return MultipleChoiceCollator(tokenizer, max_length=max_length, max_choice_length=max_length)

    def rank_scores(self, model: nn.Module, batch: Batch, *, route: RouteFn | None = None) -> torch.Tensor:
        return seq2seq_rank_scores(model, batch, route=route)

    def fewshot_parts(self, model: nn.Module, route: RouteFn | None, weights: LossWeights) -> tuple[nn.Module, LossFn]:
        def loss(scorer: nn.Module, batch: dict) -> LossOutput:
            return combine_tfew(scorer(**batch), batch["choice_mask"], batch["gold"], weights)

        return ChoiceScorer(model, route=route), loss

    def pretrain_parts(self, model: nn.Module, collate: Callable, *, route: RouteFn | None):
        return Seq2SeqLM(model), LMCollator(collate, with_task_ids=route is not None), seq2seq_lm_loss


class CrossEncoderScorer(Scorer):
    """A pretrained encoder reads every (prompt, choice) pair; a linear head scores it."""

    name = "cross_encoder"

    def collator(self, tokenizer: Any, max_length: int) -> PairCollator:
        return PairCollator(tokenizer, max_length=max_length)

    def rank_scores(self, model: nn.Module, batch: Batch, *, route: RouteFn | None = None) -> torch.Tensor:
        return pair_rank_scores(model, batch, route=route)

    def fewshot_parts(self, model: nn.Module, route: RouteFn | None, weights: LossWeights) -> tuple[nn.Module, LossFn]:
        return PairScorer(model, route=route), _pair_loss

    def pretrain_parts(self, model: nn.Module, collate: Callable, *, route: RouteFn | None):
        return PairScorer(model, route=route), collate, _pair_loss

    def extra_trainable(self, model: nn.Module) -> list[nn.Parameter]:
        return list(getattr(model, HEAD_NAME).parameters())


def _pair_loss(scorer: nn.Module, batch: dict) -> torch.Tensor:
    return pair_loss(scorer(**batch), batch["gold"])


SCORERS: dict[str, Scorer] = {scorer.name: scorer for scorer in (Seq2SeqScorer(), CrossEncoderScorer())}


def get_scorer(name: str) -> Scorer:
    """The scorer called ``name`` (``"seq2seq"`` or ``"cross_encoder"``)."""
    if name not in SCORERS:
        raise ValueError(f"scorer={name!r} is unknown; choose one of {sorted(SCORERS)}")
    return SCORERS[name]
