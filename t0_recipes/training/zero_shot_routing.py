"""Zero-shot routing of a held-out task over a pre-trained model's skills: Arrow, no gradient step.

The recipe's ``zeroshot`` variant gives the new task a fresh routing row, i.e. the skills
averaged ("uniform averaging"). Two more variants route it from the skills themselves
(`tensoradapt.arrow`), each written as its own run record next to it:

=======================  ==================================================================  ==================
variant                  routing of the held-out task                                        results per task
=======================  ==================================================================  ==================
``zeroshot_arrow``       every token by Arrow (`tensoradapt.arrow_routing`): its ``|<x, v_e>|``  one (the first seed;
                         against each skill's top singular direction, softmax over the top  nothing depends on
                         ``k``; no task id, no data                                          a seed)
``zeroshot_arrow_task``  one routing row per task from the seed's few-shot inputs, labels    one per seed
                         unused (`tensoradapt.arrow_task_row`): the Arrow weights averaged
                         over every token of every (prompt, choice) pair
=======================  ==================================================================  ==================

Arrow needs several skills, so it applies to the task-routed methods with a skill bank:
`ARROW_METHODS` (Poly, MHR: the ``n_skills`` LoRAs; TensorPoly-I / -II: the ``R`` rank
components). Not to LoRA (one skill: Arrow's softmax over it is 1, the plain adapter, which the
``zeroshot`` record already holds), nor to TLoRA (its ``R`` components are pre-trained to be
summed, never routed, and it has no task rows to set), nor to T-REX (its rank-one pairs have their
own token router; `tensoradapt.arrow` refuses it).

``top_k``: ``None`` (softmax over every skill) is mttl's default (``moe_top_k`` unset) and the
one the proxy uses; the Arrow paper and PEFT's ``ArrowConfig`` (``top_k=3``) also route to a
few. The temperature is mttl's 1.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from t0_recipes.data.rows import Example
from t0_recipes.protocol import ProtocolConfig, run_protocol
from t0_recipes.reporting.report import SeedResult
from t0_recipes.scoring.scorers import Scorer

__all__ = [
    "ARROW_METHODS",
    "ROUTINGS",
    "ArrowTaskRow",
    "check_routing_method",
    "evaluate_zero_shot_routing",
    "unlabeled_calls",
]

logger = logging.getLogger(__name__)

#: The methods Arrow routes: task-routed, with several skills per layer.
ARROW_METHODS: tuple[str, ...] = ("poly", "mhr", "tensorpoly_i", "tensorpoly_ii")
#: ``--zero-shot-routing`` choice -> the run record's variant.
ROUTINGS: dict[str, str] = {"arrow": "zeroshot_arrow", "arrow_task": "zeroshot_arrow_task"}


def check_routing_method(method: str, routings: Sequence[str]) -> None:
    """``ValueError`` naming ``--zero-shot-routing`` when a routing is unknown or ``method`` has no skills to route."""
    unknown = [routing for routing in routings if routing not in ROUTINGS]
    if unknown:
        raise ValueError(f"--zero-shot-routing {unknown[0]} is unknown; choose from {sorted(ROUTINGS)}")
    if routings and method not in ARROW_METHODS:
        raise ValueError(f"--zero-shot-routing applies to the methods with several routed skills {ARROW_METHODS}, "
                         f"not to {method} (LoRA: one skill; TLoRA: no routing; T-REX: its own token router)")


def unlabeled_calls(scorer: Scorer, examples: Sequence[Example], collator: Callable) -> list[dict[str, torch.Tensor]]:
    """Forward kwargs of every (prompt, choice) pair of ``examples``, one unpadded call each; no label is read.

    Every answer choice is paired with its prompt, as rank classification reads them, so the gold
    one is not singled out. Cross-encoder: ``input_ids``, ``attention_mask``, ``token_type_ids``
    ``(1, L)`` of the pair. Seq2seq: the prompt ``(1, L)`` and the choice as ``labels (1, T)`` (the
    decoder's inputs, so its layers see tokens too). Unpadded because `tensoradapt.arrow_task_row`
    averages over every token it is given.
    """
    calls = []
    for example in examples:
        batch = collator([example])
        if scorer.name == "cross_encoder":
            for choice in range(len(example.choices)):
                keep = batch["attention_mask"][0, choice].bool()
                calls.append({key: batch[key][0, choice][keep].unsqueeze(0)
                              for key in ("input_ids", "attention_mask", "token_type_ids") if key in batch})
        elif scorer.name == "seq2seq":
            keep = batch["attention_mask"][0].bool()
            prompt = {"input_ids": batch["input_ids"][0][keep].unsqueeze(0),
                      "attention_mask": batch["attention_mask"][0][keep].unsqueeze(0)}
            for choice in range(len(example.choices)):
                labels = batch["choice_ids"][0, choice][batch["choice_mask"][0, choice].bool()]
                calls.append(prompt | {"labels": labels.unsqueeze(0)})
        else:
            raise ValueError(f"scorer {scorer.name!r} has no unlabeled calls; use 'cross_encoder' or 'seq2seq'")
    return calls


class ArrowTaskRow:
    """The protocol's ``adapt(model, examples, collator, seed) -> model`` of ``zeroshot_arrow_task``.

    Opens the new task as few-shot adaptation does (`t0_recipes.training.fewshot.open_new_task`,
    seeded by ``seed``), then overwrites its row (task 0) with `tensoradapt.arrow_task_row` of the
    seed's inputs (`unlabeled_calls`). No parameter is trained; the labels are never read.
    """

    def __init__(self, method: str, scorer: Scorer, *, top_k: int | None = None, temperature: float = 1.0) -> None:
        check_routing_method(method, ["arrow_task"])
        self.method, self.scorer, self.top_k, self.temperature = method, scorer, top_k, temperature

    def __call__(self, model: nn.Module, examples: list[Example], collator, seed: int) -> nn.Module:
        import tensoradapt

        from t0_recipes.training.fewshot import open_new_task  # the training loop (accelerate) only when used

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            open_new_task(model, self.method, "full", examples)
        calls = unlabeled_calls(self.scorer, examples, collator)
        tensoradapt.arrow_task_row(model, calls, task=0, top_k=self.top_k, temperature=self.temperature)
        return model


def evaluate_zero_shot_routing(
    model: nn.Module,
    tokenizer: Any,
    protocol: ProtocolConfig,
    *,
    method: str,
    routing: str,
    scorer: Scorer,
    top_k: int | None = None,
    temperature: float = 1.0,
    progress: bool = False,
) -> list[SeedResult]:
    """Evaluate ``model`` (pre-trained, left untouched) on every task of ``protocol`` with ``routing``.

    Args:
        model: the pre-trained routed model (copied; its own routers are not changed).
        tokenizer: its tokenizer.
        protocol: the run's protocol; ``arrow`` evaluates its first seed only (one result per task).
        method: one of `ARROW_METHODS`.
        routing: ``"arrow"`` or ``"arrow_task"`` (`ROUTINGS`).
        scorer: the model family's scorer.
        top_k, temperature: Arrow's (module docstring).

    Returns:
        One `SeedResult` per evaluated (task, seed), as `t0_recipes.protocol.run_protocol` returns them.
    """
    import tensoradapt

    check_routing_method(method, [routing])
    if routing == "arrow":
        first = dataclasses.replace(protocol, seeds=list(protocol.seeds)[:1], skipped={})
        routed_model = copy.deepcopy(model).eval()
        with tensoradapt.arrow_routing(routed_model, top_k=top_k, temperature=temperature):
            return run_protocol(lambda: routed_model, tokenizer, first, adapt=None, route=None, scorer=scorer,
                                progress=progress)
    adapt = ArrowTaskRow(method, scorer, top_k=top_k, temperature=temperature)
    return run_protocol(lambda: copy.deepcopy(model).eval(), tokenizer, dataclasses.replace(protocol, skipped={}),
                        adapt=adapt, route=tensoradapt.use_routing, scorer=scorer, progress=progress)
