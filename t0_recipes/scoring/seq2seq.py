"""T-Few's training losses for encoder-decoder models, with the prompt encoded once per example.

Shapes: ``b`` examples, ``L`` prompt tokens, ``d`` model width, ``C`` choices, ``T`` choice
tokens, ``V`` vocabulary. The batch is `t0_recipes.collate.MultipleChoiceCollator`'s.

The encoder runs once on the ``b`` prompts; its states are repeated ``C`` times
(``b L d -> (b C) L d``) and the decoder scores every choice in one call of
``model(encoder_outputs=..., attention_mask=..., labels=..., decoder_attention_mask=...)``.
From the per-token losses ``l[b, c, t] = -log p(y_t | y_<t, x)``:

* LM loss: mean of ``l`` over the gold choice's tokens (all tokens of the batch);
* unlikelihood loss: mean over the wrong choices' tokens of ``-log(1 - exp(-l) + 1e-2)``;
* length-normalised scores ``s[b, c] = sum_t l / len_c`` and the multiple-choice loss
  ``cross_entropy(-s, gold)``;
* `tfew_loss`: ``w_lm * LM + w_ul * UL + w_mc * MC`` (T-Few: all weights 1).

Routing: ``route(model, task_ids=..., ...)`` (e.g. ``tensoradapt.use_routing``) is entered
around the encoder call with the ``b`` per-example routing inputs and around the decoder call
with them repeated ``C`` times; ``route=None`` runs the model as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from t0_recipes.data.collate import MultipleChoiceCollator
from t0_recipes.data.rows import Example

__all__ = [
    "LMCollator",
    "Seq2SeqLM",
    "seq2seq_lm_loss",
    "ROUTING_KEYS",
    "ChoiceScorer",
    "LossOutput",
    "LossWeights",
    "RouteFn",
    "choice_token_losses",
    "combine_tfew",
    "encode_prompts",
    "gold_lm_loss",
    "length_normalized_scores",
    "lm_loss",
    "multiple_choice_loss",
    "tfew_loss",
    "unlikelihood_loss",
]

#: ``route(model, **routing_inputs)`` -> context manager in which calls of ``model`` are routed.
RouteFn = Callable[..., AbstractContextManager]
#: Batch entries that are per-example routing inputs (repeated with the choices).
ROUTING_KEYS: tuple[str, ...] = ("task_ids", "semantic_prior")


def _at_least_fp32(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` in float32 when they are half precision (autocast), else as they are (float64 stays)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _routing_inputs(batch: Mapping[str, torch.Tensor], repeat: int = 1) -> dict[str, torch.Tensor]:
    inputs = {key: batch[key] for key in ROUTING_KEYS if key in batch and batch[key] is not None}
    if repeat > 1:
        inputs = {key: value.repeat_interleave(repeat, dim=0) for key, value in inputs.items()}
    return inputs


@contextmanager
def routed(model: nn.Module, route: RouteFn | None, batch: Mapping[str, torch.Tensor], repeat: int = 1) -> Iterator[None]:
    context = nullcontext() if route is None else route(model, **_routing_inputs(batch, repeat))
    with context:
        yield


def encode_prompts(model: nn.Module, batch: Mapping[str, torch.Tensor], *, route: RouteFn | None = None) -> torch.Tensor:
    """Encoder states of the prompts: ``input_ids (b, L) -> (b, L, d)``."""
    with routed(model, route, batch):
        return model.get_encoder()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], return_dict=True
        ).last_hidden_state


def choice_token_losses(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    route: RouteFn | None = None,
    encoder_states: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token losses of every answer choice, the prompt encoded once.

    Args:
        model: a Hugging Face encoder-decoder (``T5ForConditionalGeneration``).
        batch: ``input_ids``, ``attention_mask`` (b, L); ``choice_ids``, ``choice_mask`` (b, C, T).
        route: see the module docstring.
        encoder_states: ``(b, L, d)`` from `encode_prompts`, to reuse; computed when ``None``.

    Returns:
        ``(b, C, T)`` float32 (float64 for a float64 model): ``-log p(choice token | prompt, previous tokens)``, 0 on padding
        and on missing choices.
    """
    choice_ids, choice_mask = batch["choice_ids"], batch["choice_mask"]
    b, n_choices, width = choice_ids.shape
    if encoder_states is None:
        encoder_states = encode_prompts(model, batch, route=route)
    states = encoder_states.repeat_interleave(n_choices, dim=0)  # (b C) L d
    attention_mask = batch["attention_mask"].repeat_interleave(n_choices, dim=0)  # (b C) L
    flat_mask = choice_mask.reshape(b * n_choices, width)
    labels = choice_ids.reshape(b * n_choices, width).masked_fill(flat_mask == 0, -100)
    with routed(model, route, batch, repeat=n_choices):
        logits = model(
            encoder_outputs=BaseModelOutput(last_hidden_state=states),
            attention_mask=attention_mask,
            labels=labels,
            decoder_attention_mask=flat_mask,
            use_cache=False,
            return_dict=True,
        ).logits  # (b C) T V
    losses = F.cross_entropy(_at_least_fp32(logits).flatten(0, 1), labels.flatten(), reduction="none", ignore_index=-100)
    return losses.view(b, n_choices, width)


def length_normalized_scores(token_losses: torch.Tensor, choice_mask: torch.Tensor) -> torch.Tensor:
    """Rank-classification scores ``s[b, c] = sum_t l[b, c, t] / len[b, c]`` (lower is better).

    Args:
        token_losses: ``(b, C, T)``.
        choice_mask: ``(b, C, T)``, 1 on choice tokens (EOS included).

    Returns:
        ``(b, C)``; ``+inf`` for missing choices (``len = 0``).
    """
    lengths = choice_mask.sum(-1)
    totals = (token_losses * choice_mask).sum(-1)
    scores = totals / lengths.clamp_min(1)
    return scores.masked_fill(lengths == 0, float("inf"))


def _gold_rows(tensor: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    return tensor[torch.arange(tensor.shape[0], device=tensor.device), gold]


def lm_loss(token_losses: torch.Tensor, choice_mask: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Mean loss over the gold choices' tokens of the whole batch: ``(b, C, T) -> ()``."""
    losses, mask = _gold_rows(token_losses, gold), _gold_rows(choice_mask, gold).to(token_losses.dtype)
    return (losses * mask).sum() / mask.sum().clamp_min(1)


def unlikelihood_loss(
    token_losses: torch.Tensor, choice_mask: torch.Tensor, gold: torch.Tensor, eps: float = 1e-2
) -> torch.Tensor:
    """T-Few's "unlikely" loss: mean over the wrong choices' tokens of ``-log(1 - p + eps)``, ``p = exp(-l)``.

    Returns 0 when the batch has no wrong choice (single-answer examples).
    """
    wrong = choice_mask.to(token_losses.dtype).clone()
    wrong[torch.arange(wrong.shape[0], device=wrong.device), gold] = 0
    probabilities = torch.exp(-token_losses)
    terms = -torch.log1p(eps - probabilities)  # -log(1 - p + eps)
    return (terms * wrong).sum() / wrong.sum().clamp_min(1)


def multiple_choice_loss(scores: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """``cross_entropy(-scores, gold)`` over the choices; ``scores (b, C)``, ``+inf`` = missing choice."""
    logits = (-scores).masked_fill(torch.isinf(scores), torch.finfo(scores.dtype).min)
    return F.cross_entropy(logits, gold)


@dataclass(frozen=True)
class LossWeights:
    """Weights of `tfew_loss`'s terms (T-Few: 1, 1, 1)."""

    lm: float = 1.0
    unlikelihood: float = 1.0
    multiple_choice: float = 1.0


@dataclass
class LossOutput:
    """`tfew_loss`'s total (with graph) and its parts (detached, for logging).

    Attributes:
        loss: ``()`` the weighted sum to back-propagate.
        lm, unlikelihood, multiple_choice: ``()`` each term, unweighted, detached.
        scores: ``(b, C)`` length-normalised choice scores, detached.
    """

    loss: torch.Tensor
    lm: torch.Tensor
    unlikelihood: torch.Tensor
    multiple_choice: torch.Tensor
    scores: torch.Tensor


def combine_tfew(
    token_losses: torch.Tensor, choice_mask: torch.Tensor, gold: torch.Tensor, weights: LossWeights = LossWeights()
) -> LossOutput:
    """`tfew_loss` from per-token losses already computed (e.g. by a `ChoiceScorer`)."""
    mask = choice_mask
    lm = lm_loss(token_losses, mask, gold)
    unlikely = unlikelihood_loss(token_losses, mask, gold)
    scores = length_normalized_scores(token_losses, mask)
    mc = multiple_choice_loss(scores, gold)
    total = weights.lm * lm + weights.unlikelihood * unlikely + weights.multiple_choice * mc
    return LossOutput(total, lm.detach(), unlikely.detach(), mc.detach(), scores.detach())


def tfew_loss(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    weights: LossWeights = LossWeights(),
    route: RouteFn | None = None,
) -> LossOutput:
    """LM + unlikelihood + length-normalised multiple-choice loss, from one scoring pass."""
    token_losses = choice_token_losses(model, batch, route=route)
    return combine_tfew(token_losses, batch["choice_mask"], batch["gold"], weights)


class ChoiceScorer(nn.Module):
    """One ``forward`` that scores every choice with the prompt encoded once.

    `choice_token_losses` calls ``model.get_encoder()`` and then ``model(...)``: two calls,
    one of them of a sub-module. A data-parallel wrapper (DDP, FSDP, ``accelerate.prepare``)
    only synchronises gradients of its own ``forward``; wrap this module instead of the bare
    model, and both calls happen inside that forward.

    ``forward(input_ids, attention_mask, choice_ids, choice_mask, task_ids=None,
    semantic_prior=None) -> (b, C, T)`` per-token losses.
    """

    def __init__(self, model: nn.Module, *, route: RouteFn | None = None) -> None:
        super().__init__()
        self.model = model
        self.route = route

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        choice_ids: torch.Tensor,
        choice_mask: torch.Tensor,
        task_ids: torch.Tensor | None = None,
        semantic_prior: torch.Tensor | None = None,
        **_: torch.Tensor,
    ) -> torch.Tensor:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "choice_ids": choice_ids,
                 "choice_mask": choice_mask, "task_ids": task_ids, "semantic_prior": semantic_prior}
        return choice_token_losses(self.model, batch, route=self.route)


def gold_lm_loss(model: nn.Module, batch: Mapping[str, torch.Tensor], *, route: RouteFn | None = None) -> torch.Tensor:
    """Plain LM loss on the gold choice only (multi-task pre-training): one ordinary forward.

    Equals ``lm_loss(choice_token_losses(...), ...)`` without scoring the wrong choices.
    """
    gold = batch["gold"]
    ids, mask = _gold_rows(batch["choice_ids"], gold), _gold_rows(batch["choice_mask"], gold)
    labels = ids.masked_fill(mask == 0, -100)
    with routed(model, route, batch):
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=labels,
            decoder_attention_mask=mask,
            use_cache=False,
            return_dict=True,
        ).logits
    losses = F.cross_entropy(_at_least_fp32(logits).flatten(0, 1), labels.flatten(), reduction="none", ignore_index=-100)
    return losses.sum() / (labels != -100).sum().clamp_min(1)


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


def seq2seq_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``model(**inputs, task_ids=ids).loss``: the Hugging Face LM loss of a batch with ``labels``.

    The batch's ``task_ids`` / ``semantic_prior`` (when present) are the routing inputs; every
    other entry goes to the model.
    """
    inputs = {key: value for key, value in batch.items() if key not in ROUTING_KEYS}
    routing = {key: batch[key] for key in ROUTING_KEYS if key in batch}
    return model(**inputs, **routing).loss
