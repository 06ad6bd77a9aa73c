"""Rows to prompted multiple-choice examples: local readers, task ids, rendering.

Local layout (``--data-dir``), either the folder holding the parts or one of them::

    <data-dir>/t0_fewshot/<task>/<K>_shot/<seed>_seed.jsonl     few-shot training rows
    <data-dir>/t0_validation/<task>/validation.jsonl            evaluation rows
    <data-dir>/t0_train/<task>/train.jsonl                      pre-training rows (mixture)

``<task>`` is the registry's ``local_dir`` (``rte``, ``anli-r1``, ``h-swag``, ...), or its
``train_dir`` under ``t0_train`` (``rotten_tomatoes``, ``cos_e``, ...). The hub
path (``datasets.load_dataset``) lives in `t0_recipes.data.hub`; the tokenizing collator in
`t0_recipes.data.collate`.

Task ids: with ``task_mode="templates"`` every (dataset, template) pair is a task (T0's 313
training tasks are its templates); with ``task_mode="datasets"`` every dataset is one task
whatever the template.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from t0_recipes.data.tasks import TASKS, Task, get_task
from t0_recipes.data.templates import Template, templates_for

__all__ = [
    "DATA_ENV",
    "DATA_LAYOUT",
    "DataError",
    "Example",
    "TASK_MODES",
    "TaskIndex",
    "fewshot_path",
    "find_data_root",
    "has_train_part",
    "iter_jsonl",
    "list_fewshot_files",
    "list_train_files",
    "load_fewshot_rows",
    "load_train_rows",
    "load_validation_rows",
    "read_jsonl",
    "render_examples",
    "sample_template_examples",
    "train_path",
    "validation_path",
]

#: Environment variable naming the local data folder when no ``--data-dir`` is given.
DATA_ENV = "TENSORADAPT_T0_DATA"
TASK_MODES: tuple[str, ...] = ("templates", "datasets")
TaskMode = Literal["templates", "datasets"]
_FEWSHOT = "t0_fewshot"
_VALIDATION = "t0_validation"
_TRAIN = "t0_train"
_PARTS = (_FEWSHOT, _VALIDATION, _TRAIN)
#: The local layout in one line, for error messages.
DATA_LAYOUT = (f"{_TRAIN}/<task>/train.jsonl, {_FEWSHOT}/<task>/<K>_shot/<seed>_seed.jsonl, "
               f"{_VALIDATION}/<task>/validation.jsonl")


class DataError(ValueError):
    """A data file a run needs is missing or holds a row it cannot use.

    The message is one line naming the place (``path:line``) and, where one is at fault, the
    field: ``.../rte/validation.jsonl:17: field 'label': 7 is outside the 2 choices``.
    """


@dataclass(frozen=True)
class Example:
    """One prompted multiple-choice example.

    Attributes:
        task_id: row of the routing matrix this example trains / evaluates (see `TaskIndex`).
        input_text: the rendered prompt (encoder input).
        choices: answer strings (decoder targets), at least one; generative P3 rows carry one.
        gold: index of the right answer in ``choices``.
        task: the dataset (registry name or P3 dataset prefix).
        template: the template id that rendered it.
    """

    task_id: int
    input_text: str
    choices: tuple[str, ...]
    gold: int
    task: str = ""
    template: str = ""

    def __post_init__(self) -> None:
        if not self.choices:
            raise ValueError("choices must hold at least one answer")
        if not 0 <= self.gold < len(self.choices):
            raise ValueError(f"gold={self.gold} is outside the {len(self.choices)} choices")


@dataclass
class TaskIndex:
    """Maps task keys to contiguous task ids (the rows of every router).

    With ``mode="templates"`` the key of an example is its template id; with
    ``mode="datasets"`` it is its dataset name.
    """

    mode: TaskMode = "templates"
    ids: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in TASK_MODES:
            raise ValueError(f"mode={self.mode!r} is unknown; choose one of {TASK_MODES}")

    @classmethod
    def build(cls, tasks: Iterable[str], mode: TaskMode = "templates") -> TaskIndex:
        """Index every registry task of ``tasks`` (and, for ``"templates"``, each of its templates)."""
        index = cls(mode)
        for task in tasks:
            if mode == "datasets":
                index.add(task)
            else:
                for template in templates_for(task):
                    index.add(template.id)
        return index

    def key(self, task: str, template: str) -> str:
        """The key of an example of ``task`` rendered by ``template``."""
        return template if self.mode == "templates" else task

    def add(self, key: str) -> int:
        """The id of ``key``, appending it when new."""
        if key not in self.ids:
            self.ids[key] = len(self.ids)
        return self.ids[key]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: str) -> int:
        return self.ids[key]

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "ids": dict(self.ids)}


# --------------------------------------------------------------------------- local files


def find_data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds ``t0_fewshot/``, ``t0_validation/`` and/or ``t0_train/``.

    Args:
        data_dir: that folder, or one of the parts themselves; ``None`` reads
            ``$TENSORADAPT_T0_DATA``.

    Raises:
        FileNotFoundError: naming what was looked for.
    """
    if data_dir is None:
        data_dir = os.environ.get(DATA_ENV)
        if not data_dir:
            raise FileNotFoundError(f"no data folder: pass --data-dir or set ${DATA_ENV}")
    path = Path(data_dir).expanduser().resolve()
    if path.name in _PARTS and path.is_dir():
        return path.parent
    if any((path / part).is_dir() for part in _PARTS):
        return path
    raise FileNotFoundError(f"{path} holds neither {_FEWSHOT}/ nor {_VALIDATION}/ nor {_TRAIN}/ "
                            "(nor is it one of them)")


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` for every non-blank line of a JSON-lines file.

    Raises:
        DataError: ``path:line: not JSON (...)`` or ``path:line: not a JSON object (...)``.
    """
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: not a JSON object (a {type(row).__name__})")
            yield number, row


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (blank lines skipped); a bad line raises `DataError` (``path:line``)."""
    return [row for _, row in iter_jsonl(path)]


def _task(task: str | Task) -> Task:
    return task if isinstance(task, Task) else get_task(task)


def fewshot_path(data_dir: str | os.PathLike | None, task: str | Task, seed: int, k: int | None = None) -> Path:
    """``<root>/t0_fewshot/<local_dir>/<k>_shot/<seed>_seed.jsonl`` (``k`` defaults to the task's)."""
    task = _task(task)
    root = find_data_root(data_dir)
    return root / _FEWSHOT / task.local_dir / f"{task.k if k is None else k}_shot" / f"{seed}_seed.jsonl"


def validation_path(data_dir: str | os.PathLike | None, task: str | Task) -> Path:
    """``<root>/t0_validation/<local_dir>/validation.jsonl``."""
    return find_data_root(data_dir) / _VALIDATION / _task(task).local_dir / "validation.jsonl"


def train_path(data_dir: str | os.PathLike | None, task: str | Task) -> Path:
    """``<root>/t0_train/<train_dir>/train.jsonl``.

    Raises:
        ValueError: ``task`` has no ``train_dir`` (a held-out task, boolq).
    """
    task = _task(task)
    if task.train_dir is None:
        raise ValueError(f"task {task.name!r} has no {_TRAIN} rows (its registry entry has no train_dir)")
    return find_data_root(data_dir) / _TRAIN / task.train_dir / "train.jsonl"


def load_train_rows(data_dir: str | os.PathLike | None, task: str | Task) -> list[dict[str, Any]]:
    """The pre-training rows of ``task`` from ``t0_train``."""
    path = train_path(data_dir, task)
    if not path.is_file():
        raise FileNotFoundError(f"no pre-training file {path} (layout: {DATA_LAYOUT})")
    return read_jsonl(path)


def load_fewshot_rows(
    data_dir: str | os.PathLike | None, task: str | Task, seed: int, k: int | None = None
) -> list[dict[str, Any]]:
    """The few-shot training rows of ``task`` for ``seed``."""
    path = fewshot_path(data_dir, task, seed, k)
    if not path.is_file():
        raise FileNotFoundError(f"no few-shot file {path}")
    return read_jsonl(path)


def load_validation_rows(data_dir: str | os.PathLike | None, task: str | Task) -> list[dict[str, Any]]:
    """The evaluation rows of ``task`` from the local layout."""
    path = validation_path(data_dir, task)
    if not path.is_file():
        raise FileNotFoundError(f"no validation file {path}")
    return read_jsonl(path)


def list_fewshot_files(data_dir: str | os.PathLike | None) -> dict[str, list[Path]]:
    """Every few-shot jsonl under the root, by registry task name (unknown folders skipped)."""
    root = find_data_root(data_dir) / _FEWSHOT
    found: dict[str, list[Path]] = {}
    if not root.is_dir():
        return found
    by_dir = {task.local_dir: task.name for task in TASKS.values()}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name in by_dir:
            found[by_dir[folder.name]] = sorted(folder.glob("*_shot/*_seed.jsonl"))
    return found


def has_train_part(data_dir: str | os.PathLike | None) -> bool:
    """Whether the data folder has a ``t0_train/`` part (then the mixture reads it, not ``t0_fewshot``)."""
    return (find_data_root(data_dir) / _TRAIN).is_dir()


def list_train_files(data_dir: str | os.PathLike | None) -> dict[str, Path]:
    """Every ``t0_train/<train_dir>/train.jsonl`` present, by registry task name, in registry order."""
    root = find_data_root(data_dir) / _TRAIN
    return {
        task.name: root / task.train_dir / "train.jsonl"
        for task in TASKS.values()
        if task.train_dir is not None and (root / task.train_dir / "train.jsonl").is_file()
    }


# --------------------------------------------------------------------------- rendering


def _resolve_templates(task: str, templates: Sequence[Template | str] | None) -> list[Template]:
    known = {template.id: template for template in templates_for(task)}
    if templates is None:
        return list(known.values())
    chosen = []
    for template in templates:
        template_id = template if isinstance(template, str) else template.id
        if template_id not in known:
            raise ValueError(f"template {template_id!r} does not belong to task {task!r}; it has {sorted(known)}")
        chosen.append(known[template_id])
    return chosen


def render_examples(
    rows: Iterable[Mapping[str, Any]],
    task: str,
    *,
    index: TaskIndex,
    templates: Sequence[Template | str] | None = None,
) -> list[Example]:
    """Every row rendered by every template (row-major: all templates of row 0, then row 1, ...).

    Args:
        rows: raw rows in the hub field format of ``task``.
        task: registry task name.
        index: gives each example its task id; unseen keys are added.
        templates: templates (or ids) to use; ``None`` means all of ``task``'s.

    Returns:
        ``len(rows) * len(templates)`` examples.
    """
    chosen = _resolve_templates(task, templates)
    examples = []
    for row in rows:
        for template in chosen:
            text, choices, gold = template(row)
            task_id = index.add(index.key(task, template.id))
            examples.append(Example(task_id, text, tuple(choices), gold, task, template.id))
    return examples


def sample_template_examples(
    rows: Iterable[Mapping[str, Any]],
    task: str,
    *,
    index: TaskIndex,
    rng: random.Random,
    templates: Sequence[Template | str] | None = None,
) -> list[Example]:
    """Each row rendered by one template drawn from ``rng`` (T-Few trains on a random prompt per example)."""
    chosen = _resolve_templates(task, templates)
    examples = []
    for row in rows:
        template = rng.choice(chosen)
        text, choices, gold = template(row)
        task_id = index.add(index.key(task, template.id))
        examples.append(Example(task_id, text, tuple(choices), gold, task, template.id))
    return examples
