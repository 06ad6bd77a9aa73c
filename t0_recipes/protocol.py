"""The few-shot protocol over tasks and seeds: rows -> (adapt) -> rank classification -> results.

For every held-out task and every few-shot seed: read the seed's training rows, render them,
let ``adapt`` train a fresh model on them, and evaluate on the task's evaluation rows (the
same rows for every seed). A pre-training task held out of the mixture (``hold_out``) takes
both from its ``t0_train`` rows, split into a shot pool and an evaluation pool
(`t0_recipes.data.holdout`). ``adapt`` is where a method plugs in: zero-shot returns the model
untouched, full fine-tuning trains every weight, an adapter recipe injects / resets its
adapter and trains it (part 2). The evaluated checkpoint is the last one: nothing is selected
on the evaluation rows.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from t0_recipes.data.holdout import check_evaluated_tasks, load_hold_out_rows
from t0_recipes.data.rows import (
    Example,
    TaskIndex,
    load_fewshot_rows,
    load_validation_rows,
    render_examples,
    sample_template_examples,
)
from t0_recipes.data.tasks import FEWSHOT_SEEDS, HELD_OUT, get_task
from t0_recipes.reporting.report import SeedResult
from t0_recipes.scoring.rank import evaluate_examples
from t0_recipes.scoring.scorers import Scorer, Seq2SeqScorer
from t0_recipes.scoring.seq2seq import RouteFn

__all__ = ["AdaptFn", "ProtocolConfig", "eval_examples", "fewshot_examples", "run_protocol"]

logger = logging.getLogger(__name__)

#: ``adapt(model, train_examples, collator, seed) -> model`` (the adapted model to evaluate).
AdaptFn = Callable[[nn.Module, list[Example], Callable[[Sequence[Example]], dict], int], nn.Module]


@dataclass
class ProtocolConfig:
    """Which tasks, seeds and rows a protocol run uses.

    Attributes:
        tasks: registry task names (default: the eleven held-out tasks); a pre-training task
            only when ``hold_out`` names it too.
        seeds: few-shot subset seeds (default: T-Few's five).
        data_dir: local data folder (see `t0_recipes.data.rows`); ``None`` with ``source="hub"``.
        source: ``"local"`` (``--data-dir`` layout) or ``"hub"`` (``datasets.load_dataset``).
        train_templates: ``"random"`` (one random template per training row, T-Few) or ``"all"``.
        eval_templates: ``"all"`` (every evaluation row with every template, T0) or ``"random"``
            (one template per row, seed 0: the same examples for every method and seed).
        eval_max_rows: cap on evaluation rows per task (a seeded random subset); ``None``: all.
        eval_batch_size: examples per rank-classification batch.
        max_length: token cap of prompts and choices.
        skip_missing: skip a task whose rows are missing (logged, listed in ``skipped``) instead of failing.
        hold_out: pre-training tasks held out of the mixture and evaluated on their ``t0_train``
            rows (local source only; `t0_recipes.data.holdout`).

    Raises:
        ValueError: a task of ``tasks`` has no evaluation rows (a pre-training task not held out).
    """

    tasks: Sequence[str] = HELD_OUT
    seeds: Sequence[int] = FEWSHOT_SEEDS
    data_dir: str | None = None
    source: Literal["local", "hub"] = "local"
    train_templates: Literal["random", "all"] = "random"
    eval_templates: Literal["all", "random"] = "all"
    eval_max_rows: int | None = None
    eval_batch_size: int = 32
    max_length: int = 256
    skip_missing: bool = True
    skipped: dict[str, str] = field(default_factory=dict)
    hold_out: Sequence[str] = ()

    def __post_init__(self) -> None:
        check_evaluated_tasks(self.tasks, self.hold_out)


def _rows(config: ProtocolConfig, task: str, *, seed: int | None) -> list[dict[str, Any]]:
    """Few-shot rows (``seed`` given) or evaluation rows (``seed=None``) from the configured source."""
    if task in config.hold_out:
        if config.source != "local":
            raise ValueError(f"held-out task {task!r} reads t0_train; it needs source='local', not {config.source!r}")
        return load_hold_out_rows(config.data_dir, task, seed)
    if config.source == "local":
        if seed is None:
            return load_validation_rows(config.data_dir, task)
        return load_fewshot_rows(config.data_dir, task, seed)
    if config.source == "hub":
        from t0_recipes.data.hub import load_hub_rows

        entry = get_task(task)
        if seed is None:
            return load_hub_rows(entry)
        rows = load_hub_rows(entry, entry.train_split)
        return random.Random(seed).sample(rows, entry.k)
    raise ValueError(f"source={config.source!r} is unknown; choose 'local' or 'hub'")


def fewshot_examples(config: ProtocolConfig, task: str, seed: int) -> list[Example]:
    """The rendered few-shot training set of ``task`` for ``seed`` (one routing task: id 0).

    With ``source="hub"`` the subset is drawn here with ``random.Random(seed)``; it is not
    T-Few's subset (that one is what the local ``t0_fewshot`` files hold).
    """
    rows = _rows(config, task, seed=seed)
    index = TaskIndex("datasets")
    if config.train_templates == "all":
        return render_examples(rows, task, index=index)
    return sample_template_examples(rows, task, index=index, rng=random.Random(seed))


def eval_examples(config: ProtocolConfig, task: str) -> list[Example]:
    """The rendered evaluation set of ``task``: every (capped) row with every template."""
    rows = _rows(config, task, seed=None)
    if config.eval_max_rows is not None and len(rows) > config.eval_max_rows:
        rows = random.Random(0).sample(rows, config.eval_max_rows)
    if config.eval_templates == "random":
        return sample_template_examples(rows, task, index=TaskIndex("datasets"), rng=random.Random(0))
    return render_examples(rows, task, index=TaskIndex("datasets"))


def run_protocol(
    make_model: Callable[[], nn.Module],
    tokenizer: Any,
    config: ProtocolConfig,
    *,
    adapt: AdaptFn | None = None,
    route: RouteFn | None = None,
    scorer: Scorer | None = None,
    progress: bool = True,
) -> list[SeedResult]:
    """Every (task, seed): a fresh ``make_model()``, ``adapt`` on the seed's rows, rank classification.

    Args:
        make_model: returns the model to adapt (a fresh copy each call).
        tokenizer: the model's tokenizer.
        config: tasks, seeds, rows.
        adapt: see `AdaptFn`; ``None`` evaluates the model as it is (zero-shot: once per task,
            the result shared by every seed).
        route: routing context for evaluation of routed models (task id 0 after a reset).
        scorer: the model family's scorer (collation and rank scores); default seq2seq.

    Returns:
        One `SeedResult` per evaluated (task, seed); skipped tasks land in ``config.skipped``.
    """
    scorer = scorer if scorer is not None else Seq2SeqScorer()
    collator = scorer.collator(tokenizer, config.max_length)
    results: list[SeedResult] = []
    for task in config.tasks:
        try:
            evaluation = eval_examples(config, task)
        except FileNotFoundError as error:
            if not config.skip_missing:
                raise
            config.skipped[task] = str(error)
            logger.warning("skipping %s: %s", task, error)
            continue
        zero_shot = None
        for seed in config.seeds:
            try:
                train = fewshot_examples(config, task, seed) if adapt is not None else []
            except FileNotFoundError as error:
                if not config.skip_missing:
                    raise
                config.skipped[f"{task}/seed{seed}"] = str(error)
                logger.warning("skipping %s seed %s: %s", task, seed, error)
                continue
            train_s = eval_s = None
            if adapt is None and zero_shot is not None:
                result = zero_shot  # no training: every seed evaluates the same model
            else:
                start = time.perf_counter()
                model = make_model()
                if adapt is not None:
                    model = adapt(model, train, collator, seed)
                train_s = time.perf_counter() - start
                start = time.perf_counter()
                result = evaluate_examples(
                    model,
                    evaluation,
                    collator,
                    batch_size=config.eval_batch_size,
                    route=route,
                    rank_fn=scorer.rank_scores,
                    desc=f"{task} seed {seed}",
                    progress=progress,
                )
                eval_s = time.perf_counter() - start
                if adapt is None:
                    zero_shot = result
            logger.info("%s seed %d: accuracy %.4f on %d examples", task, seed, result.accuracy, result.n)
            correct = [int(p == g) for p, g in zip(result.predictions, result.golds)]
            results.append(SeedResult(task, seed, result.accuracy, result.n, result.by_template, len(train) or None,
                                      correct, train_s=train_s, eval_s=eval_s))
    return results
