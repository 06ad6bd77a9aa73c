"""Check every data file a run will use before any training starts, with one-line errors.

`check_data` reads and renders (every row, every template) the pre-training files of the
mixture, the few-shot and validation files of every evaluated task, and the ``t0_train`` file
of every task held out of the mixture (`t0_recipes.data.holdout`), whose pools it sizes. The first problem
raises a `DataError` whose message is one line naming the place and the field::

    .../t0_validation/rte/validation.jsonl:17: field 'label': 7 is outside the 2 choices (template 'rte/does_it_follow')
    .../t0_train/dream/train.jsonl:3: not JSON (Expecting ',' delimiter at column 41)
    .../t0_fewshot/cb/32_shot/42_seed.jsonl:5: field 'hypothesis': missing; the row has ['idx', 'label', 'premise'] (template 'cb/how_sure')
    task 'foo' has no template; known: ag_news, anli_r1, ...
    .../t0_validation/wic/validation.jsonl: missing; expected layout under .../data: t0_train/<task>/train.jsonl, ...

A run that passes has no data surprise left for hour three.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from t0_recipes.data.holdout import split_pools
from t0_recipes.data.mixture import local_mixture_files
from t0_recipes.data.prompt import TemplateError
from t0_recipes.data.rows import (
    DATA_LAYOUT,
    DataError,
    fewshot_path,
    find_data_root,
    has_train_part,
    iter_jsonl,
    list_fewshot_files,
    read_jsonl,
    train_path,
    validation_path,
)
from t0_recipes.data.tasks import FEWSHOT_SEEDS, TASKS, Task
from t0_recipes.data.templates import TEMPLATES

__all__ = ["DataCheck", "DataError", "check_data", "check_file"]

logger = logging.getLogger(__name__)


@dataclass
class DataCheck:
    """What `check_data` read.

    Attributes:
        rows: rows per file, by path, in the order checked (mixture, then each task's few-shot
            files and validation file).
        mixture_tasks: the pre-training tasks checked, in order.
        eval_tasks: the evaluated tasks checked, in order (registry names).
        skipped: evaluated tasks left out with ``missing="skip"``, with the reason.
        pools: per held-out ``t0_train`` task, ``{"shot_pool": n, "eval_pool": n}`` rows.
    """

    rows: dict[Path, int] = field(default_factory=dict)
    mixture_tasks: list[str] = field(default_factory=list)
    eval_tasks: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    pools: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def summary(self) -> str:
        """One line for a log: files, rows, tasks, skips."""
        line = (f"data checked: {len(self.rows)} files, {self.total_rows} rows; mixture: {len(self.mixture_tasks)} "
                f"tasks; evaluated: {len(self.eval_tasks)} tasks")
        line += "".join(f"; held out {task}: {pool['shot_pool']} shot-pool + {pool['eval_pool']} evaluation rows"
                        for task, pool in self.pools.items())
        return line + (f"; skipped: {', '.join(sorted(self.skipped))}" if self.skipped else "")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _registry_task(name: str) -> Task:
    """The registry entry of ``name`` (registry or folder name) that has templates, else `DataError`."""
    task = TASKS.get(name)
    if task is None:
        task = next((t for t in TASKS.values() if name in (t.local_dir, t.train_dir)), None)
    if task is None or task.name not in TEMPLATES or not TEMPLATES[task.name]:
        raise DataError(f"task {name!r} has no template; known: {', '.join(sorted(TEMPLATES))}")
    return task


def _missing(path: Path, root: Path) -> DataError:
    return DataError(f"{path}: missing; expected layout under {root}: {DATA_LAYOUT}")


def check_file(path: str | os.PathLike, task: str) -> int:
    """Read every line of ``path`` and render every row with every template of ``task``.

    Returns:
        The number of rows.

    Raises:
        DataError: the first bad line: ``path:line: not JSON (...)``, ``path:line: field 'f':
            ...`` (missing, out of range, wrong type; the template named), or ``path: no rows``.
    """
    templates = TEMPLATES[task]
    n_rows = 0
    for number, row in iter_jsonl(path):
        for template in templates:
            try:
                template(row)
            except TemplateError as error:
                problem = error.problem
                if error.field is not None and problem.startswith("row has no field"):
                    problem = f"missing; the row has {sorted(row)}"
                where = f"field {error.field!r}: " if error.field is not None else ""
                raise DataError(_one_line(f"{path}:{number}: {where}{problem} (template {template.id!r})")) from None
        n_rows += 1
    if not n_rows:
        raise DataError(f"{path}: no rows")
    return n_rows


def _mixture_files(root: Path, mixture_tasks: Sequence[str] | None, eval_tasks: Sequence[str]) -> dict[str, list[Path]]:
    """The files the mixture reads, by task (see `t0_recipes.data.mixture.local_mixture_files`)."""
    if mixture_tasks is None:
        found = local_mixture_files(root, exclude=eval_tasks)
        if not found:
            raise DataError(f"{root}: no pre-training rows (no t0_train/<task>/train.jsonl of a registry "
                            f"pre-training task); expected layout: {DATA_LAYOUT}")
        return found
    files: dict[str, list[Path]] = {}
    with_train = has_train_part(root)
    fewshot = {} if with_train else list_fewshot_files(root)
    for name in mixture_tasks:
        task = _registry_task(name)
        if task.held_out:
            raise DataError(f"task {task.name!r} is held out; it cannot enter the pre-training mixture")
        if with_train:
            if task.train_dir is None:
                raise DataError(f"task {task.name!r} has no t0_train rows (its registry entry has no train_dir)")
            files[task.name] = [train_path(root, task)]
        elif fewshot.get(task.name):
            files[task.name] = fewshot[task.name]
        else:
            expected = root / "t0_train" / (task.train_dir or task.name) / "train.jsonl"
            raise _missing(expected, root)
    return files


def _held_out_pools(root: Path, task: Task) -> dict[str, int]:
    """The pool sizes of a held-out ``t0_train`` task; `DataError` for a missing or too small file."""
    if task.train_dir is None:
        raise DataError(f"task {task.name!r} has no t0_train rows to hold out (its registry entry has no train_dir)")
    path = train_path(root, task)
    if not path.is_file():
        raise _missing(path, root)
    shot_pool, evaluation = split_pools(read_jsonl(path), task.name)
    return {"shot_pool": len(shot_pool), "eval_pool": len(evaluation)}


def check_data(
    data_dir: str | os.PathLike | None,
    *,
    mixture_tasks: Sequence[str] | None = None,
    eval_tasks: Iterable[str] = (),
    hold_out: Iterable[str] = (),
    seeds: Iterable[int] = FEWSHOT_SEEDS,
    missing: Literal["error", "skip"] = "error",
) -> DataCheck:
    """Read and render every file a local run will use; raise one `DataError` at the first problem.

    Args:
        data_dir: the ``--data-dir`` folder (or one of its parts; ``None``: ``$TENSORADAPT_T0_DATA``).
        mixture_tasks: pre-training tasks; ``None`` checks what `local_mixture` would read
            (``t0_train`` when present, else the boolq/sst2 few-shot files) minus
            ``eval_tasks`` and ``hold_out``, and an empty mixture is an error; ``()`` checks none
            (no pre-training).
        eval_tasks: evaluated tasks (registry names or folder names): each seed's few-shot file
            and the validation file.
        hold_out: pre-training tasks held out of the mixture and evaluated (they may be in
            ``eval_tasks`` too): their ``t0_train`` file, which must exist and fill both pools.
        seeds: few-shot seeds.
        missing: ``"error"``: a missing file of an evaluated task raises; ``"skip"``: the task
            is listed in ``DataCheck.skipped`` (as the protocol's ``skip_missing`` does).

    Returns:
        The rows per file, for a log line (`DataCheck.summary`).

    Raises:
        DataError: one line naming ``path:line`` and the field, a missing path and the
            expected layout, a task without templates, or a held-out task in ``mixture_tasks``.
    """
    if missing not in ("error", "skip"):
        raise ValueError(f"missing={missing!r} is unknown; choose 'error' or 'skip'")
    try:
        root = find_data_root(data_dir)
    except FileNotFoundError as error:
        raise DataError(f"{_one_line(str(error))}; expected layout: {DATA_LAYOUT}") from None
    held = [_registry_task(name) for name in hold_out]
    evaluated = [task for task in map(_registry_task, eval_tasks) if task not in held]
    seeds = list(seeds)
    check = DataCheck()
    for name, files in _mixture_files(root, mixture_tasks, [t.name for t in evaluated + held]).items():
        if name in {task.name for task in held}:
            raise DataError(f"task {name!r} is held out (--hold-out); it cannot enter the pre-training mixture")
        for path in files:
            if not path.is_file():
                raise _missing(path, root)
            check.rows[path] = check_file(path, name)
        check.mixture_tasks.append(name)
    for task in evaluated:
        paths = [fewshot_path(root, task, seed) for seed in seeds] + [validation_path(root, task)]
        absent = [path for path in paths if not path.is_file()]
        if absent:
            if missing == "error":
                raise _missing(absent[0], root)
            check.skipped[task.name] = f"{absent[0]}: missing"
            logger.warning("data check: skipping %s: %s missing", task.name, absent[0])
            continue
        for path in paths:
            check.rows[path] = check_file(path, task.name)
        check.eval_tasks.append(task.name)
    for task in held:
        check.pools[task.name] = _held_out_pools(root, task)
        check.rows[train_path(root, task)] = check_file(train_path(root, task), task.name)
        check.eval_tasks.append(task.name)
    logger.info(check.summary())
    return check
