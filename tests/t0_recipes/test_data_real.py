"""Readers, templates and `check_data` on the real rows of ``../shared/data`` (skipped where it is absent).

The folder is found at ``$TENSORADAPT_T0_DATA`` or ``<repo>/../shared/data``; nothing of it
is copied into the repository (the tests print counts, never rows).
"""

import os
from pathlib import Path

import pytest

from t0_recipes.data.mixture import load_mixture
from t0_recipes.data.rows import TaskIndex, find_data_root, list_fewshot_files, load_validation_rows, read_jsonl, render_examples
from t0_recipes.data.tasks import FEWSHOT_SEEDS, HELD_OUT, MIXTURE_TASKS, TASKS, TRAINING, get_task
from t0_recipes.data.templates import TEMPLATES
from t0_recipes.data.validate import check_data, check_file

_ENV = os.environ.get("TENSORADAPT_T0_DATA")
DATA = Path(_ENV) if _ENV else Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real T0 rows not found at {DATA} (set TENSORADAPT_T0_DATA to run these tests)"
)
LOCAL = sorted({name for name in HELD_OUT if name != "story_cloze"} | {task.name for task in MIXTURE_TASKS})


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


def _folders(part: str) -> list[Path]:
    return sorted(path for path in (DATA / part).iterdir() if path.is_dir()) if (DATA / part).is_dir() else []


def _answer_text(task: str, row: dict) -> str | None:
    """The right answer's text read straight from a multiple-choice row's hub fields (None: a label task)."""
    if task in ("dream", "cos_e"):
        return row["answer"]
    if task in ("arc_easy", "arc_challenge", "openbookqa"):
        return row["choices"]["text"][row["choices"]["label"].index(row["answerKey"])].strip()
    if task == "piqa":
        return row[f"sol{row['label'] + 1}"].strip()
    if task == "cosmos_qa":
        return row[f"answer{row['label']}"].strip()
    return None


@needs_data
def test_every_folder_is_a_registry_task():
    for part, attribute in (("t0_train", "train_dir"), ("t0_fewshot", "local_dir"), ("t0_validation", "local_dir")):
        for folder in _folders(part):
            task = get_task(folder.name)
            assert getattr(task, attribute) == folder.name, (part, folder.name)
    assert {folder.name for folder in _folders("t0_train")} <= set(TRAINING)


@needs_data
@pytest.mark.parametrize("task", TRAINING)
def test_every_train_file_renders_to_its_answer(task):
    path = DATA / "t0_train" / TASKS[task].train_dir / "train.jsonl"
    if not path.is_file():
        pytest.skip(f"no t0_train rows for {task} under {DATA}")
    rows = read_jsonl(path)
    n_templates = len(TEMPLATES[task])
    examples = render_examples(rows, task, index=TaskIndex("templates"))
    assert len(examples) == len(rows) * n_templates
    for i, example in enumerate(examples):
        answer = _answer_text(task, rows[i // n_templates])
        if answer is not None:
            assert example.choices[example.gold] == answer
    print(f"{task}: {len(rows)} rows, {len(examples)} examples")


@needs_data
def test_every_real_file_passes_check_data():
    evaluated = [get_task(folder.name).name for folder in _folders("t0_validation")]
    check = check_data(DATA, eval_tasks=evaluated, seeds=FEWSHOT_SEEDS)  # every task with validation rows, 5 seeds
    assert check.eval_tasks == evaluated and len(check.mixture_tasks) == len(_folders("t0_train"))
    for name, files in list_fewshot_files(DATA).items():  # the other few-shot files: seed 100, h-swag, boolq, sst2
        for path in files:
            if path not in check.rows:
                check.rows[path] = check_file(path, name)
    n_files = sum(1 for part in ("t0_train", "t0_fewshot", "t0_validation") for _ in (DATA / part).rglob("*.jsonl"))
    assert len(check.rows) == n_files
    print(check.summary(), f"({len(check.rows)} of {n_files} files)")
    examples, index = load_mixture("local", DATA, max_rows_per_task=500)
    assert {e.task for e in examples} == set(check.mixture_tasks) and not {e.task for e in examples} & set(HELD_OUT)
    print(f"mixture at 500 rows per task: {len(examples)} examples, {len(index)} templates")
