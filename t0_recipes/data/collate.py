"""Tokenize prompted multiple-choice examples into padded tensors for a seq2seq model.

Batch layout (``b`` examples, ``L`` prompt tokens, ``C`` choices, ``T`` choice tokens)::

    input_ids       (b, L)     long   prompt tokens, right-padded with pad_token_id
    attention_mask  (b, L)     long   1 on prompt tokens
    choice_ids      (b, C, T)  long   every answer choice, ending with EOS, right-padded
    choice_mask     (b, C, T)  long   1 on choice tokens (EOS included); a missing choice
                                      (examples with fewer than C choices) is all 0
    gold            (b,)       long   index of the right choice
    task_ids        (b,)       long   routing row of each example

Every sequence is cut to ``max_length`` tokens (256 in the T0 protocol) with its EOS kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from t0_recipes.data.rows import Example

__all__ = ["MultipleChoiceCollator", "tokenize_with_eos"]


def tokenize_with_eos(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, at most ``max_length`` long and ending with EOS.

    T5 tokenizers append EOS themselves; one that does not gets it appended here, so the
    rank-classification length (tokens incl. EOS) means the same for every tokenizer.
    """
    if max_length < 1:
        raise ValueError(f"max_length={max_length} must be at least 1")
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is None:
        return [list(ids) for ids in encoded]
    out = []
    for ids in encoded:
        ids = list(ids)
        if not ids or ids[-1] != eos:
            ids = ids[: max_length - 1] + [eos]
        out.append(ids)
    return out


def _pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(sequence) for sequence in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = 1
    return ids, mask


class MultipleChoiceCollator:
    """``examples -> batch`` (see the module docstring for the tensors and their shapes).

    Args:
        tokenizer: a Hugging Face tokenizer with ``pad_token_id`` (T5's / ByT5's).
        max_length: longest prompt, in tokens.
        max_choice_length: longest answer choice, in tokens (EOS included).
    """

    def __init__(self, tokenizer: Any, *, max_length: int = 256, max_choice_length: int = 256) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad_token_id; set one before collating")
        if max_length < 1 or max_choice_length < 1:
            raise ValueError(f"max_length={max_length} and max_choice_length={max_choice_length} must be >= 1")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_choice_length = max_choice_length
        self.pad_id = int(tokenizer.pad_token_id)

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        prompts = tokenize_with_eos(self.tokenizer, [e.input_text for e in examples], self.max_length)
        input_ids, attention_mask = _pad(prompts, self.pad_id)

        flat = [choice for e in examples for choice in e.choices]
        flat_ids = tokenize_with_eos(self.tokenizer, flat, self.max_choice_length)
        n_choices = max(len(e.choices) for e in examples)
        width = max(len(ids) for ids in flat_ids)
        choice_ids = torch.full((len(examples), n_choices, width), self.pad_id, dtype=torch.long)
        choice_mask = torch.zeros((len(examples), n_choices, width), dtype=torch.long)
        cursor = 0
        for row, example in enumerate(examples):
            for column in range(len(example.choices)):
                ids = flat_ids[cursor]
                cursor += 1
                choice_ids[row, column, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                choice_mask[row, column, : len(ids)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "choice_ids": choice_ids,
            "choice_mask": choice_mask,
            "gold": torch.tensor([e.gold for e in examples], dtype=torch.long),
            "task_ids": torch.tensor([e.task_id for e in examples], dtype=torch.long),
        }
