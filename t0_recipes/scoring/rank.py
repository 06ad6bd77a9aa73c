"""Rank classification (T-Few / T0): pick the answer choice with the lowest length-normalised loss.

For an example with prompt ``x`` and choices ``y_1..y_C`` (each ending with EOS)::

    score(c) = sum_t -log p(y_c,t | y_c,<t, x) / len(y_c)      (len counts EOS)
    prediction = argmin_c score(c)

The prompt is encoded once per example (see `t0_recipes.losses.choice_token_losses`); the
evaluation runs batched under ``torch.no_grad`` with a tqdm bar.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from t0_recipes.data.rows import Example
from t0_recipes.scoring.seq2seq import RouteFn, choice_token_losses, length_normalized_scores

__all__ = ["EvalResult", "accuracy", "batches_of", "evaluate_examples", "move_batch", "predict", "score_batches", "seq2seq_rank_scores"]

#: ``(model, batch, route=...) -> (b, C)`` rank scores, lower is better, ``+inf`` for missing choices.
RankFn = Callable[..., torch.Tensor]


def seq2seq_rank_scores(model: nn.Module, batch: Mapping[str, torch.Tensor], *, route: RouteFn | None = None) -> torch.Tensor:
    """T0's rank scores: the length-normalised loss of every choice, ``(b, C)``."""
    return length_normalized_scores(choice_token_losses(model, batch, route=route), batch["choice_mask"])


def move_batch(batch: Mapping[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """Every tensor of ``batch`` on ``device`` (non-blocking)."""
    return {key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value for key, value in batch.items()}


def predict(scores: torch.Tensor) -> torch.Tensor:
    """``(b, C) -> (b,)``: the index of the lowest score (ties: the first)."""
    return scores.argmin(dim=-1)


def accuracy(predictions: Sequence[int] | torch.Tensor, golds: Sequence[int] | torch.Tensor) -> float:
    """Fraction of ``predictions`` equal to ``golds`` (0.0 for no examples)."""
    predictions, golds = torch.as_tensor(predictions), torch.as_tensor(golds)
    if predictions.shape != golds.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and golds {tuple(golds.shape)} differ in shape")
    return int((predictions == golds).sum()) / predictions.numel() if predictions.numel() else 0.0  # exact: hits / n


def batches_of(examples: Sequence[Example], collator: Callable[[Sequence[Example]], dict], batch_size: int) -> Iterable[dict]:
    """``examples`` collated ``batch_size`` at a time, in order."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    for start in range(0, len(examples), batch_size):
        yield collator(examples[start : start + batch_size])


@torch.no_grad()
def score_batches(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    route: RouteFn | None = None,
    rank_fn: RankFn = seq2seq_rank_scores,
    autocast_dtype: torch.dtype | None = None,
    total: int | None = None,
    desc: str = "rank classification",
    progress: bool = True,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``rank_fn``'s scores of every batch (model in eval mode, restored afterwards).

    Returns:
        ``(scores, golds)``: per batch, ``(b, C)`` scores and ``(b,)`` gold indices, on CPU.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    all_scores, all_golds = [], []
    try:
        for batch in tqdm(batches, total=total, desc=desc, disable=not progress, leave=False):
            batch = move_batch(batch, device)
            with autocast:
                scores = rank_fn(model, batch, route=route)
            all_scores.append(scores.float().cpu())
            all_golds.append(batch["gold"].cpu())
    finally:
        model.train(was_training)
    return all_scores, all_golds


@dataclass
class EvalResult:
    """Accuracy of one evaluation run.

    Attributes:
        accuracy: over every example (all templates pooled).
        n: number of examples.
        predictions, golds: per example, in input order.
        by_template: accuracy of each template's examples.
    """

    accuracy: float
    n: int
    predictions: list[int]
    golds: list[int]
    by_template: dict[str, float] = field(default_factory=dict)

    @property
    def median_over_templates(self) -> float:
        """Median of ``by_template`` (T0's way to summarise several prompts); ``accuracy`` if none."""
        return statistics.median(self.by_template.values()) if self.by_template else self.accuracy


def evaluate_examples(
    model: nn.Module,
    examples: Sequence[Example],
    collator: Callable[[Sequence[Example]], dict],
    *,
    batch_size: int = 32,
    route: RouteFn | None = None,
    rank_fn: RankFn = seq2seq_rank_scores,
    autocast_dtype: torch.dtype | None = None,
    desc: str = "rank classification",
    progress: bool = True,
) -> EvalResult:
    """Rank-classification accuracy of ``model`` on ``examples``."""
    if not examples:
        raise ValueError("no examples to evaluate")
    n_batches = -(-len(examples) // batch_size)
    scores, golds = score_batches(
        model,
        batches_of(examples, collator, batch_size),
        route=route,
        rank_fn=rank_fn,
        autocast_dtype=autocast_dtype,
        total=n_batches,
        desc=desc,
        progress=progress,
    )
    predictions = torch.cat([predict(s) for s in scores]).tolist()
    gold_list = torch.cat(golds).tolist()
    hits: dict[str, list[bool]] = defaultdict(list)
    for example, prediction, gold in zip(examples, predictions, gold_list):
        hits[example.template].append(prediction == gold)
    by_template = {template: sum(h) / len(h) for template, h in hits.items() if template}
    return EvalResult(accuracy(predictions, gold_list), len(examples), predictions, gold_list, by_template)
