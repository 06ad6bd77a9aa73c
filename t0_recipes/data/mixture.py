"""The multi-task pre-training mixture: every task that is not held out, rendered by its templates.

Two sources:

* ``local``: the data folder's rows of every registry task with ``held_out=False``:

  - with a ``t0_train/`` part: ``t0_train/<task>/train.jsonl`` of each pre-training task
    present (`t0_recipes.data.tasks.TRAINING_TASKS`: sentiment, topic, paraphrase,
    multiple-choice QA);
  - without one (a folder of few-shot files only): the few-shot files of ``boolq`` and
    ``sst2`` in ``t0_fewshot``, the rows of all their seed files pooled without repeats;

  optionally ``max_rows_per_task`` rows of each (a seeded subset in file order), each row
  rendered by every template of its dataset;
* ``hub``: T0's training mixture from P3 (`t0_recipes.hub.load_p3_mixture`).

Either way a dataset contributes at most ``per_dataset_cap // n_templates`` examples per
template (T0's cap: 500,000 per dataset shared by its templates), and the `TaskIndex` numbers
the routing rows: one per template (``"templates"``, T0's 313 tasks) or one per dataset.
A held-out task never enters the mixture.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from t0_recipes.data.hub import P3_PER_DATASET_CAP
from t0_recipes.data.rows import (
    Example,
    TaskIndex,
    TaskMode,
    has_train_part,
    list_fewshot_files,
    list_train_files,
    read_jsonl,
    render_examples,
)
from t0_recipes.data.tasks import TASKS
from t0_recipes.data.templates import templates_for

__all__ = [
    "cap_per_template",
    "load_mixture",
    "local_mixture",
    "local_mixture_files",
    "local_mixture_tasks",
    "mixture_rows",
    "subsample_rows",
]

logger = logging.getLogger(__name__)


def local_mixture_files(data_dir: str | os.PathLike | None, exclude: Iterable[str] = ()) -> dict[str, list[Path]]:
    """The files the local mixture reads, by registry task name (held-out tasks and ``exclude`` left out).

    With a ``t0_train/`` part: ``[t0_train/<task>/train.jsonl]`` for each pre-training task that
    has one; without: the few-shot seed files of each non-held-out task (boolq, sst2).
    """
    excluded = set(exclude)
    if has_train_part(data_dir):
        found = {name: [path] for name, path in list_train_files(data_dir).items()}
    else:
        found = {name: files for name, files in list_fewshot_files(data_dir).items() if files}
    return {name: files for name, files in found.items() if not TASKS[name].held_out and name not in excluded}


def local_mixture_tasks(data_dir: str | os.PathLike | None, exclude: Iterable[str] = ()) -> list[str]:
    """Registry names of the tasks `local_mixture` reads under ``data_dir``, minus ``exclude``."""
    return list(local_mixture_files(data_dir, exclude))


def _pooled_rows(files: Sequence[os.PathLike]) -> list[dict[str, Any]]:
    """Rows of every file, each distinct row once, in first-seen order."""
    seen: set[str] = set()
    rows = []
    for path in files:
        for row in read_jsonl(path):
            key = json.dumps(row, sort_keys=True)
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return rows


def cap_per_template(examples: Sequence[Example], cap: int, *, seed: int = 0) -> list[Example]:
    """At most ``cap`` examples per template (a seeded random subset of a template over it), order kept."""
    if cap < 1:
        raise ValueError(f"cap={cap} must be at least 1 example per template")
    by_template: dict[str, list[int]] = {}
    for position, example in enumerate(examples):
        by_template.setdefault(example.template, []).append(position)
    keep: set[int] = set()
    rng = random.Random(seed)
    for positions in by_template.values():
        keep.update(positions if len(positions) <= cap else rng.sample(positions, cap))
    return [example for position, example in enumerate(examples) if position in keep]


def subsample_rows(rows: Sequence[Any], max_rows: int | None, *, seed: int = 0, key: str = "") -> list[Any]:
    """At most ``max_rows`` of ``rows``: a subset drawn with ``random.Random(f"{seed}/{key}")``, in file order.

    The draw depends only on ``seed``, ``key`` (the task name) and ``len(rows)``, so every run
    and every process takes the same rows. ``None`` keeps them all.
    """
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows={max_rows} must be at least 1 (or None for every row)")
    if max_rows is None or len(rows) <= max_rows:
        return list(rows)
    keep = sorted(random.Random(f"{seed}/{key}").sample(range(len(rows)), max_rows))
    return [rows[position] for position in keep]


def mixture_rows(
    files: Sequence[os.PathLike], task: str, *, max_rows: int | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """The rows of ``task``'s mixture files, then at most ``max_rows`` of them (`subsample_rows`).

    One file (``t0_train``) is read as it is; several (few-shot seed files) are pooled, each
    distinct row once, in first-seen order.
    """
    rows = _pooled_rows(files) if len(files) > 1 else read_jsonl(files[0])
    return subsample_rows(rows, max_rows, seed=seed, key=task)


def local_mixture(
    data_dir: str | os.PathLike | None,
    index: TaskIndex,
    *,
    exclude: Iterable[str] = (),
    per_dataset_cap: int = P3_PER_DATASET_CAP,
    max_rows_per_task: int | None = None,
    seed: int = 0,
) -> list[Example]:
    """The mixture from the local files (see the module docstring and `local_mixture_files`).

    Args:
        data_dir: the ``--data-dir`` folder.
        index: numbers the routing rows; new keys are added (registry order, then template order).
        exclude: task names kept out on top of the held-out ones (e.g. the evaluated tasks).
        per_dataset_cap: examples per dataset before sharing over its templates.
        max_rows_per_task: rows read per task before rendering (a CPU preset's 500, say);
            ``None``: every row.
        seed: seeds the row subset and the per-template cap.
    """
    if max_rows_per_task is not None and max_rows_per_task < 1:
        raise ValueError(f"max_rows_per_task={max_rows_per_task} must be at least 1 (or None for every row)")
    examples: list[Example] = []
    for task, files in local_mixture_files(data_dir, exclude).items():
        rows = mixture_rows(files, task, max_rows=max_rows_per_task, seed=seed)
        rendered = render_examples(rows, task, index=index)
        capped = cap_per_template(rendered, max(1, per_dataset_cap // len(templates_for(task))), seed=seed)
        logger.info("mixture: %s, %d rows, %d examples", task, len(rows), len(capped))
        examples += capped
    return examples


def load_mixture(
    source: Literal["local", "hub"],
    data_dir: str | os.PathLike | None,
    *,
    task_mode: TaskMode = "templates",
    exclude: Iterable[str] = (),
    per_dataset_cap: int = P3_PER_DATASET_CAP,
    max_rows_per_task: int | None = None,
    seed: int = 0,
) -> tuple[list[Example], TaskIndex]:
    """The pre-training examples and the task index that numbers them.

    ``max_rows_per_task`` and ``seed`` are `local_mixture`'s; P3's rows come rendered, one
    configuration per template, so on the hub ``max_rows_per_task`` lowers the per-dataset
    cap instead (``min(per_dataset_cap, max_rows_per_task)`` examples per dataset).

    Raises:
        ValueError: an unknown ``source``.
    """
    index = TaskIndex(task_mode)
    if source == "local":
        examples = local_mixture(data_dir, index, exclude=exclude, per_dataset_cap=per_dataset_cap,
                                 max_rows_per_task=max_rows_per_task, seed=seed)
        return examples, index
    if source == "hub":
        from t0_recipes.data.hub import load_p3_mixture

        if max_rows_per_task is not None:
            per_dataset_cap = min(per_dataset_cap, max_rows_per_task)
        return load_p3_mixture(index, per_dataset_cap=per_dataset_cap, shuffle_seed=seed), index
    raise ValueError(f"source={source!r} is unknown; choose 'local' or 'hub'")
