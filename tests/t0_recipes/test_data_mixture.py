"""The local pre-training mixture on a made-up data folder: ``t0_train`` tasks, caps, task ids, fallback."""

import json
import random

import pytest

from t0_recipes.data.mixture import load_mixture, local_mixture, local_mixture_tasks, mixture_rows, subsample_rows
from t0_recipes.data.rows import TaskIndex
from t0_recipes.data.tasks import HELD_OUT, TASKS, TRAINING
from t0_recipes.data.templates import TEMPLATES, template_ids

N_ROWS = 12


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _fewshot(root, make_row, names, rng):
    for name in names:
        task = TASKS[name]
        for seed in (42, 0):
            _write(root / "t0_fewshot" / task.local_dir / f"{task.k}_shot" / f"{seed}_seed.jsonl",
                   [make_row(name, rng, i % task.n_choices) for i in range(4)])


@pytest.fixture()
def train_root(tmp_path, make_row):
    """Every t0_train task (rows numbered in ``idx_row``), a held-out task's rows dropped under t0_train
    (``rte``: it has no train_dir), a stray folder, and few-shot files of rte, cb, boolq and sst2."""
    rng = random.Random(0)
    for name in TRAINING:
        rows = [make_row(name, rng, i % TASKS[name].n_choices) | {"idx_row": i} for i in range(N_ROWS)]
        _write(tmp_path / "t0_train" / name / "train.jsonl", rows)
    _write(tmp_path / "t0_train" / "rte" / "train.jsonl", [make_row("rte", rng, 0) for _ in range(3)])
    _write(tmp_path / "t0_train" / "not_a_task" / "train.jsonl", [{"text": "x", "label": 0}])
    _fewshot(tmp_path, make_row, ("rte", "cb", "boolq", "sst2"), rng)
    return tmp_path


def test_mixture_reads_every_t0_train_task_and_no_held_out_one(train_root):
    assert local_mixture_tasks(train_root) == list(TRAINING)  # registry order; boolq's few-shot rows unused
    index = TaskIndex("templates")
    examples = local_mixture(train_root, index)
    by_task = {}
    for example in examples:
        by_task.setdefault(example.task, []).append(example)
        assert example.task_id == index[example.template]
        assert example.template.startswith(f"{example.task}/")
    assert set(by_task) == set(TRAINING)
    assert not set(by_task) & set(HELD_OUT)
    for name, task_examples in by_task.items():
        assert len(task_examples) == N_ROWS * len(TEMPLATES[name]), name
    assert list(index.ids) == [t for name in TRAINING for t in template_ids(name)]  # one id per template, in order


def test_datasets_mode_and_exclude(train_root):
    examples, index = load_mixture("local", train_root, task_mode="datasets", exclude=["imdb", "rte"])
    assert list(index.ids) == [name for name in TRAINING if name != "imdb"]
    assert {e.task for e in examples} == set(TRAINING) - {"imdb"}
    assert all(e.task_id == index[e.task] for e in examples)


def test_max_rows_per_task_is_a_seeded_subset_in_file_order(train_root):
    first, _ = load_mixture("local", train_root, max_rows_per_task=5)
    again, _ = load_mixture("local", train_root, max_rows_per_task=5)
    other, _ = load_mixture("local", train_root, max_rows_per_task=5, seed=1)
    for name in TRAINING:
        assert sum(e.task == name for e in first) == 5 * len(TEMPLATES[name]), name
    assert first == again
    assert first != other
    rows = mixture_rows([train_root / "t0_train" / "imdb" / "train.jsonl"], "imdb", max_rows=5)
    assert [row["idx_row"] for row in rows] == subsample_rows(list(range(N_ROWS)), 5, seed=0, key="imdb")
    picked = subsample_rows(list(range(N_ROWS)), 5, seed=0, key="imdb")
    assert picked == sorted(picked) and len(set(picked)) == 5
    assert picked == subsample_rows(list(range(N_ROWS)), 5, seed=0, key="imdb")
    assert subsample_rows(list(range(3)), 5) == [0, 1, 2]
    with pytest.raises(ValueError, match="max_rows_per_task"):
        load_mixture("local", train_root, max_rows_per_task=0)


def test_per_template_cap_still_applies(train_root):
    examples, index = load_mixture("local", train_root, per_dataset_cap=6)
    counts = {}
    for example in examples:
        counts[example.template] = counts.get(example.template, 0) + 1
    for name in TRAINING:
        for template_id in template_ids(name):
            assert counts[template_id] == 6 // len(TEMPLATES[name]), template_id


def test_without_t0_train_the_fewshot_stand_ins_are_pooled(tmp_path, make_row):
    _fewshot(tmp_path, make_row, ("rte", "boolq", "sst2"), random.Random(0))
    examples, index = load_mixture("local", tmp_path, task_mode="datasets")
    assert list(index.ids) == ["boolq", "sst2"]  # folder order; rte is held out
    assert sum(e.task == "boolq" for e in examples) == 8 * len(TEMPLATES["boolq"])  # two seed files of 4 distinct rows
