"""`check_data` on a made-up data folder: a clean pass with row counts, one-line errors naming path:line and field."""

import json
import random

import pytest

from t0_recipes.data import templates as templates_module
from t0_recipes.data.validate import DataError, check_data

SEEDS = (42, 0)
MIXTURE = ("imdb", "dream", "arc_easy")


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))


def _rows(make_row, task, n, n_choices, seed=0):
    rng = random.Random(seed)
    return [make_row(task, rng, i % n_choices) for i in range(n)]


@pytest.fixture()
def root(tmp_path, make_row):
    """Three t0_train tasks; rte and cb with few-shot files for two seeds and validation rows."""
    _write(tmp_path / "t0_train" / "imdb" / "train.jsonl", _rows(make_row, "imdb", 6, 2))
    _write(tmp_path / "t0_train" / "dream" / "train.jsonl", _rows(make_row, "dream", 5, 3))
    _write(tmp_path / "t0_train" / "arc_easy" / "train.jsonl", _rows(make_row, "arc_easy", 4, 4))
    for name, folder, n_choices in (("rte", "rte", 2), ("cb", "cb", 3)):
        for seed in SEEDS:
            _write(tmp_path / "t0_fewshot" / folder / "32_shot" / f"{seed}_seed.jsonl",
                   _rows(make_row, name, 3, n_choices, seed))
        _write(tmp_path / "t0_validation" / folder / "validation.jsonl", _rows(make_row, name, 20, n_choices))
    return tmp_path


def _error(root, **kwargs) -> str:
    kwargs.setdefault("eval_tasks", ("rte", "cb"))
    kwargs.setdefault("seeds", SEEDS)
    with pytest.raises(DataError) as caught:
        check_data(root, **kwargs)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_a_clean_folder_passes_with_rows_per_file(root):
    check = check_data(root, eval_tasks=("rte", "cb"), seeds=SEEDS)
    assert check.mixture_tasks == ["imdb", "dream", "arc_easy"]  # registry order
    assert check.eval_tasks == ["rte", "cb"]
    assert check.rows[root / "t0_train" / "dream" / "train.jsonl"] == 5
    assert check.rows[root / "t0_validation" / "rte" / "validation.jsonl"] == 20
    assert len(check.rows) == 3 + 2 * (len(SEEDS) + 1) and check.total_rows == 15 + 2 * (2 * 3 + 20)
    assert check.summary().startswith("data checked: 9 files, 67 rows; mixture: 3 tasks; evaluated: 2 tasks")
    assert check_data(root, mixture_tasks=(), eval_tasks=(), seeds=SEEDS).rows == {}
    assert issubclass(DataError, ValueError)


def test_a_line_that_is_not_json(root):
    path = root / "t0_train" / "dream" / "train.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:-1]  # the closing brace lost
    path.write_text("\n".join(lines) + "\n")
    assert _error(root).startswith(f"{path}:3: not JSON (")


def test_a_row_missing_a_field_a_template_reads(root):
    path = root / "t0_fewshot" / "cb" / "32_shot" / "0_seed.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    del rows[1]["hypothesis"]
    _write(path, rows)
    message = _error(root)
    assert message.startswith(f"{path}:2: field 'hypothesis': missing; the row has ['idx', 'label', 'premise']")
    assert "template 'cb/" in message


def test_a_label_outside_the_choices(root):
    path = root / "t0_validation" / "rte" / "validation.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[16]["label"] = 7
    _write(path, rows)
    assert _error(root).startswith(f"{path}:17: field 'label': 7 is outside the 2 choices")


def test_an_answer_that_names_no_choice(root):
    path = root / "t0_train" / "dream" / "train.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[3]["answer"] = "none of these"
    _write(path, rows[:3] + [""] + rows[3:])  # a blank line still counts in the numbering
    assert _error(root).startswith(f"{path}:5: field 'answer': 'none of these' is not one of the 3 choices")


def test_a_missing_held_out_file_names_the_path_and_the_layout(root):
    path = root / "t0_validation" / "cb" / "validation.jsonl"
    path.unlink()
    message = _error(root)
    assert message.startswith(f"{path}: missing; expected layout under {root}")
    assert "t0_validation/<task>/validation.jsonl" in message and "t0_train/<task>/train.jsonl" in message
    seed_7 = root / "t0_fewshot" / "rte" / "32_shot" / "7_seed.jsonl"
    assert _error(root, seeds=(42, 7)).startswith(f"{seed_7}: missing")
    check = check_data(root, eval_tasks=("rte", "cb"), seeds=SEEDS, missing="skip")
    assert check.eval_tasks == ["rte"] and "cb" in check.skipped
    assert _error(root, mixture_tasks=["paws"]).startswith(f"{root / 't0_train' / 'paws' / 'train.jsonl'}: missing")


def test_a_task_without_a_template(root, monkeypatch):
    message = _error(root, eval_tasks=("rte", "foo"))
    assert message.startswith("task 'foo' has no template; known: ") and "anli_r1" in message
    monkeypatch.delitem(templates_module.TEMPLATES, "cb")  # a registry task whose templates are gone
    assert _error(root).startswith("task 'cb' has no template; known: ")


def test_held_out_tasks_never_enter_the_mixture_and_folder_names_resolve(root):
    assert _error(root, mixture_tasks=["rte"]).startswith("task 'rte' is held out")
    (root / "t0_fewshot" / "cb").rename(root / "t0_fewshot" / "anli-r1")
    (root / "t0_fewshot" / "anli-r1" / "32_shot").rename(root / "t0_fewshot" / "anli-r1" / "50_shot")
    (root / "t0_validation" / "cb").rename(root / "t0_validation" / "anli-r1")
    check = check_data(root, mixture_tasks=(), eval_tasks=["anli-r1"], seeds=SEEDS)  # cb rows fit anli's fields
    assert check.eval_tasks == ["anli_r1"]


def test_no_data_folder_and_an_empty_mixture(tmp_path):
    assert _error(tmp_path / "nowhere", eval_tasks=()).endswith("t0_validation/<task>/validation.jsonl")
    (tmp_path / "t0_validation").mkdir()
    assert "no pre-training rows" in _error(tmp_path, eval_tasks=())
