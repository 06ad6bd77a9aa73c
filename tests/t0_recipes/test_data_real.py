"""Readers and templates on the real rows of ``../shared/data`` (skipped where it is absent).

The folder is found at ``$TENSORADAPT_T0_DATA`` or ``<repo>/../shared/data``; nothing of it
is copied into the repository.
"""

import os
from pathlib import Path

import pytest

from t0_recipes.data.rows import TaskIndex, find_data_root, list_fewshot_files, load_validation_rows, read_jsonl, render_examples
from t0_recipes.data.tasks import TASKS
from t0_recipes.data.templates import TEMPLATES

_ENV = os.environ.get("TENSORADAPT_T0_DATA")
DATA = Path(_ENV) if _ENV else Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real T0 rows not found at {DATA} (set TENSORADAPT_T0_DATA to run these tests)"
)
LOCAL = sorted(name for name, task in TASKS.items() if name != "story_cloze")


def _gold_label(task: str, row: dict) -> int:
    if task == "winogrande":
        return int(row["answer"]) - 1
    return int(row["label"])


def _check(task: str, rows: list[dict]) -> None:
    n_templates = len(TEMPLATES[task])
    examples = render_examples(rows, task, index=TaskIndex("templates"))
    assert len(examples) == len(rows) * n_templates
    for i, example in enumerate(examples):
        row = rows[i // n_templates]
        assert len(example.choices) == TASKS[task].n_choices
        assert example.gold == _gold_label(task, row)


@needs_data
@pytest.mark.parametrize("task", LOCAL)
def test_every_fewshot_file(task):
    files = list_fewshot_files(DATA).get(task)
    if not files:
        pytest.skip(f"no few-shot folder for {task} under {DATA}")
    for path in files:
        rows = read_jsonl(path)
        assert rows, path
        _check(task, rows)
    seeds = {int(path.name.split("_")[0]) for path in files}
    assert {42, 1024, 0, 1, 32} <= seeds


@needs_data
@pytest.mark.parametrize("task", LOCAL)
def test_every_validation_file(task):
    path = find_data_root(DATA) / "t0_validation" / TASKS[task].local_dir / "validation.jsonl"
    if not path.is_file():
        pytest.skip(f"no validation rows for {task} under {DATA}")
    _check(task, load_validation_rows(DATA, task))
