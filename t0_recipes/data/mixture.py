"""The multi-task pre-training mixture: every task that is not held out, rendered by its templates.

Two sources:

* ``local``: the data folder's few-shot files of every registry task with ``held_out=False``
  (``boolq`` and ``sst2`` in ``t0_fewshot``), the rows of all its seed files pooled without
  repeats, each rendered by every template of its dataset;
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
from typing import Any, Literal

from t0_recipes.data.rows import Example, TaskIndex, TaskMode, list_fewshot_files, read_jsonl, render_examples
from t0_recipes.data.hub import P3_PER_DATASET_CAP
from t0_recipes.data.tasks import TASKS
from t0_recipes.data.templates import templates_for

__all__ = ["cap_per_template", "load_mixture", "local_mixture", "local_mixture_tasks"]

logger = logging.getLogger(__name__)


def local_mixture_tasks(data_dir: str | os.PathLike | None, exclude: Iterable[str] = ()) -> list[str]:
    """Registry names of the non-held-out tasks with few-shot files under ``data_dir``, minus ``exclude``."""
    excluded = set(exclude)
    return [
        name
        for name, files in list_fewshot_files(data_dir).items()
        if files and not TASKS[name].held_out and name not in excluded
    ]


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


def local_mixture(
    data_dir: str | os.PathLike | None,
    index: TaskIndex,
    *,
    exclude: Iterable[str] = (),
    per_dataset_cap: int = P3_PER_DATASET_CAP,
) -> list[Example]:
    """The mixture from the local few-shot files (see the module docstring).

    Args:
        data_dir: the ``--data-dir`` folder.
        index: numbers the routing rows; new keys are added.
        exclude: task names kept out on top of the held-out ones (e.g. the evaluated tasks).
        per_dataset_cap: examples per dataset before sharing over its templates.
    """
    files = list_fewshot_files(data_dir)
    examples: list[Example] = []
    for task in local_mixture_tasks(data_dir, exclude):
        rows = _pooled_rows(files[task])
        rendered = render_examples(rows, task, index=index)
        capped = cap_per_template(rendered, max(1, per_dataset_cap // len(templates_for(task))))
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
) -> tuple[list[Example], TaskIndex]:
    """The pre-training examples and the task index that numbers them.

    Raises:
        ValueError: an unknown ``source``.
    """
    index = TaskIndex(task_mode)
    if source == "local":
        return local_mixture(data_dir, index, exclude=exclude, per_dataset_cap=per_dataset_cap), index
    if source == "hub":
        from t0_recipes.data.hub import load_p3_mixture

        return load_p3_mixture(index, per_dataset_cap=per_dataset_cap), index
    raise ValueError(f"source={source!r} is unknown; choose 'local' or 'hub'")
