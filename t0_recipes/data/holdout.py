"""Held-out clusters taken from ``t0_train``: T0 holds out whole clusters, so can the proxy.

A pre-training task named by ``--hold-out`` leaves the pre-training mixture and is evaluated
next to the T0 held-out tasks. Its ``t0_train/<task>/train.jsonl`` rows (each distinct row
once) are split once, by a permutation seeded with the task's name alone (no few-shot seed
touches it), into

* the *shot pool*: the first ``min(SHOT_POOL_ROWS, n // 2)`` rows of the permutation; each
  few-shot seed draws its `HOLD_OUT_SHOTS` training rows from it with ``random.Random(seed)``;
* the *evaluation pool*: every other row, in file order; the protocol's evaluation cap then
  takes its seeded subset of it, as for any task.

With the 2,000-row files of ``ag_news`` and ``trec`` (1,989 distinct) that is a shot pool of
500 rows and an evaluation pool of 1,500 (ag_news) or 1,489 (trec). Shots and evaluation rows
never share a row, whatever the seed, and no row of a held-out task is pre-trained on.

`TOPIC_CLUSTER` (AG News, 4 choices; TREC, 6 choices) is the proxy's default: a 22M-parameter
encoder learns topic classification from 32 shots, where it stays at chance on the T0 tasks.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Sequence
from typing import Any

from t0_recipes.data.rows import DataError, load_train_rows
from t0_recipes.data.tasks import TASKS

__all__ = [
    "HOLD_OUT_SHOTS",
    "SHOT_POOL_ROWS",
    "TOPIC_CLUSTER",
    "check_evaluated_tasks",
    "load_hold_out_rows",
    "split_pools",
]

#: T0's topic-classification cluster, held out of the proxy's mixture and evaluated.
TOPIC_CLUSTER: tuple[str, ...] = ("ag_news", "trec")
#: Training rows per few-shot seed of a held-out task (as the T0 tasks with 32 shots).
HOLD_OUT_SHOTS = 32
#: Largest shot pool; a smaller file gives half of its rows to the shot pool.
SHOT_POOL_ROWS = 500


def _distinct(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each distinct row once, in first-seen order (a repeated row must not land in both pools)."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        key = json.dumps(row, sort_keys=True)
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept


def split_pools(rows: Sequence[dict[str, Any]], task: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(shot pool, evaluation pool)`` of a held-out task's rows (see the module docstring).

    The split depends only on ``task`` and the distinct rows, never on a few-shot seed.

    Raises:
        DataError: the shot pool would hold fewer than `HOLD_OUT_SHOTS` rows.
    """
    distinct = _distinct(rows)
    n_shot_pool = min(SHOT_POOL_ROWS, len(distinct) // 2)
    if n_shot_pool < HOLD_OUT_SHOTS:
        raise DataError(f"held-out task {task!r}: {len(distinct)} distinct rows leave a shot pool of {n_shot_pool}, "
                        f"fewer than its {HOLD_OUT_SHOTS} shots (a held-out task needs {2 * HOLD_OUT_SHOTS} rows)")
    order = list(range(len(distinct)))
    random.Random(f"hold-out/{task}").shuffle(order)
    in_shot_pool = set(order[:n_shot_pool])
    shot_pool = [row for position, row in enumerate(distinct) if position in in_shot_pool]
    evaluation = [row for position, row in enumerate(distinct) if position not in in_shot_pool]
    return shot_pool, evaluation


def load_hold_out_rows(data_dir: str | os.PathLike | None, task: str, seed: int | None) -> list[dict[str, Any]]:
    """The few-shot rows of ``seed`` (`HOLD_OUT_SHOTS` from the shot pool) or, ``seed=None``, the evaluation pool."""
    shot_pool, evaluation = split_pools(load_train_rows(data_dir, task), task)
    if seed is None:
        return evaluation
    return random.Random(seed).sample(shot_pool, HOLD_OUT_SHOTS)


def check_evaluated_tasks(tasks: Iterable[str], hold_out: Iterable[str]) -> None:
    """Refuse an evaluated task that has no evaluation rows: a pre-training task not held out.

    Raises:
        ValueError: one line naming ``--tasks`` / ``--hold-out``, the task and the fix.
    """
    hold_out = list(hold_out)
    for name in hold_out:
        if TASKS[name].train_dir is None:
            raise ValueError(f"--hold-out {name}: {name} has no t0_train rows to split into shots and evaluation rows")
    for name in tasks:
        task = TASKS[name]
        if task.held_out or name in hold_out:
            continue
        if task.train_dir is None:
            raise ValueError(f"--tasks {name}: {name} is a pre-training stand-in with no evaluation rows; "
                             "it cannot be evaluated")
        raise ValueError(f"--tasks {name}: {name} is a pre-training task of t0_train, not a held-out one, so it "
                         f"would be trained on and never evaluated; hold it out of the mixture to evaluate it: "
                         f"--hold-out {name}")
