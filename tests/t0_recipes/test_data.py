"""Local readers on a made-up ``--data-dir`` tree, task ids, the collator, and the hub's fail-fast path."""

import json
import random
import time

import pytest
import torch

from t0_recipes.data.collate import MultipleChoiceCollator, tokenize_with_eos
from t0_recipes.data.rows import (
    Example,
    TaskIndex,
    fewshot_path,
    find_data_root,
    list_fewshot_files,
    load_fewshot_rows,
    load_validation_rows,
    render_examples,
    sample_template_examples,
)
from t0_recipes.data.tasks import HELD_OUT, MIXTURE_TASKS, TASKS
from t0_recipes.data.templates import TEMPLATES

LOCAL_TASKS = [name for name in HELD_OUT if name != "story_cloze"] + [task.name for task in MIXTURE_TASKS]


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture()
def data_root(tmp_path, make_row):
    """A made-up tree in the local layout: every task, seeds 42 and 0, validation rows."""
    rng = random.Random(0)
    for name in LOCAL_TASKS:
        task = TASKS[name]
        for seed in (42, 0):
            rows = [make_row(name, rng, i % task.n_choices) for i in range(task.k)]
            _write(tmp_path / "t0_fewshot" / task.local_dir / f"{task.k}_shot" / f"{seed}_seed.jsonl", rows)
        _write(tmp_path / "t0_validation" / task.local_dir / "validation.jsonl",
               [make_row(name, rng, i % task.n_choices) for i in range(7)])
    return tmp_path


def test_data_root_accepts_the_parent_or_either_part(data_root, monkeypatch):
    assert find_data_root(data_root) == data_root.resolve()
    assert find_data_root(data_root / "t0_fewshot") == data_root.resolve()
    assert find_data_root(data_root / "t0_validation") == data_root.resolve()
    monkeypatch.setenv("TENSORADAPT_T0_DATA", str(data_root))
    assert find_data_root(None) == data_root.resolve()
    with pytest.raises(FileNotFoundError, match="neither"):
        find_data_root(data_root / "t0_fewshot" / "rte")


@pytest.mark.parametrize("name", LOCAL_TASKS)
def test_reader_and_templates_give_choices_and_gold(data_root, name):
    task = TASKS[name]
    rows = load_fewshot_rows(data_root, name, 42)
    assert len(rows) == task.k
    index = TaskIndex.build([name], "templates")
    examples = render_examples(rows, name, index=index)
    assert len(examples) == task.k * len(TEMPLATES[name])
    for i, example in enumerate(examples):
        assert len(example.choices) == task.n_choices
        assert example.gold == (i // len(TEMPLATES[name])) % task.n_choices  # labels cycle over the choices
        assert example.task_id == index[example.template]
    assert len(load_validation_rows(data_root, name)) == 7


def test_missing_files_name_the_path(data_root):
    with pytest.raises(FileNotFoundError, match="7_seed.jsonl"):
        load_fewshot_rows(data_root, "rte", 7)
    assert fewshot_path(data_root, "hellaswag", 1).parts[-3:] == ("h-swag", "20_shot", "1_seed.jsonl")
    files = list_fewshot_files(data_root)
    assert set(files) == set(LOCAL_TASKS) and all(len(paths) == 2 for paths in files.values())


def test_task_modes(make_row):
    rng = random.Random(0)
    rows = {name: [make_row(name, rng, 0) for _ in range(3)] for name in ("rte", "cb")}
    by_template = TaskIndex("templates")
    by_dataset = TaskIndex("datasets")
    for name in rows:
        render_examples(rows[name], name, index=by_template)
        render_examples(rows[name], name, index=by_dataset)
    assert len(by_template) == len(TEMPLATES["rte"]) + len(TEMPLATES["cb"])
    assert by_dataset.ids == {"rte": 0, "cb": 1}
    assert TaskIndex.build(["rte", "cb"], "templates").ids == by_template.ids
    with pytest.raises(ValueError, match="mode"):
        TaskIndex("tasks")
    sampled = sample_template_examples(rows["rte"] * 10, "rte", index=TaskIndex("templates"), rng=random.Random(0))
    assert len(sampled) == 30 and len({e.template for e in sampled}) > 1
    with pytest.raises(ValueError, match="does not belong"):
        render_examples(rows["rte"], "rte", index=by_template, templates=["cb/how_sure"])


def test_example_validates_gold():
    with pytest.raises(ValueError, match="gold"):
        Example(0, "x", ("a", "b"), 2)
    with pytest.raises(ValueError, match="choices"):
        Example(0, "x", (), 0)


def test_collator_shapes_eos_padding_and_truncation(tokenizer):
    examples = [
        Example(3, "short prompt", ("yes", "no"), 1, "rte", "rte/x"),
        Example(5, "p" * 400, ("a", "bb", "ccc"), 2, "cb", "cb/y"),
    ]
    batch = MultipleChoiceCollator(tokenizer, max_length=256)(examples)
    assert batch["input_ids"].shape == (2, 256)  # 400 bytes cut to 256 tokens
    assert batch["input_ids"][1, -1] == tokenizer.eos_token_id
    assert batch["attention_mask"][0].sum() == len("short prompt") + 1
    b, c, t = batch["choice_ids"].shape
    assert (b, c, t) == (2, 3, 4)  # "ccc" + EOS
    assert batch["choice_mask"][0, 2].sum() == 0  # rte has two choices: the third is missing
    assert batch["choice_mask"][0].sum(-1).tolist() == [4, 3, 0]
    lengths = batch["choice_mask"].sum(-1)
    for row in range(b):
        for column in range(c):
            n = int(lengths[row, column])
            if n:
                assert batch["choice_ids"][row, column, n - 1] == tokenizer.eos_token_id
                assert (batch["choice_ids"][row, column, n:] == tokenizer.pad_token_id).all()
    assert batch["gold"].tolist() == [1, 2] and batch["task_ids"].tolist() == [3, 5]
    assert batch["task_ids"].dtype == torch.long


def test_tokenize_with_eos_appends_eos_when_the_tokenizer_does_not(tokenizer):
    class NoEos:
        eos_token_id = 1

        def __call__(self, texts, **kwargs):
            return {"input_ids": [[7] * min(len(t), kwargs["max_length"]) for t in texts]}

    assert tokenize_with_eos(NoEos(), ["abc", "abcdef"], 4) == [[7, 7, 7, 1], [7, 7, 7, 1]]
    assert tokenize_with_eos(tokenizer, ["ab"], 8)[0][-1] == tokenizer.eos_token_id


def test_hub_fails_at_once_when_offline(monkeypatch):
    import datasets

    from t0_recipes.data import hub

    def forbidden(*args, **kwargs):
        raise AssertionError("load_dataset must not be called offline")

    monkeypatch.setattr(datasets, "load_dataset", forbidden)
    monkeypatch.setattr(datasets, "get_dataset_config_names", forbidden)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(hub.HubUnavailableError, match="--data-dir"):
        hub.load_hub_rows("rte")
    with pytest.raises(hub.HubUnavailableError, match="HF_HUB_OFFLINE"):
        hub.load_p3_mixture(TaskIndex("templates"))
    assert time.perf_counter() - start < 1.0


def test_hub_fails_fast_when_the_host_does_not_answer(monkeypatch):
    from t0_recipes.data import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    with pytest.raises(hub.HubUnavailableError, match="does not answer"):
        hub.load_hub_rows("cb")


def test_p3_grouping_and_examples():
    from t0_recipes.data.hub import p3_example, p3_template_configs

    names = ["glue_mrpc_equivalent", "glue_mrpc_paraphrase", "dream_answer_to_dialogue", "super_glue_rte_x_score_eval",
             "wiki_qa_Is_This_True_", "wiki_hop_original_choose_best_object_interrogative_1"]
    grouped = p3_template_configs([("glue", "mrpc"), ("dream", None), ("wiki_qa", None), ("wiki_hop", "original")],
                                  config_names=names)
    assert grouped["glue_mrpc_"] == ["glue_mrpc_equivalent", "glue_mrpc_paraphrase"]
    assert grouped["wiki_qa_"] == ["wiki_qa_Is_This_True_"]
    assert grouped["wiki_hop_original_"] == ["wiki_hop_original_choose_best_object_interrogative_1"]
    row = {"inputs_pretokenized": "Q? ", "targets_pretokenized": " no", "answer_choices": ["yes", "no"]}
    example = p3_example(row, task_id=4, task="glue_mrpc", template="glue_mrpc_equivalent")
    assert example.choices == ("yes", "no") and example.gold == 1 and example.task_id == 4
    generative = p3_example({"inputs_pretokenized": "Sum up:", "targets_pretokenized": "A summary."},
                            task_id=0, task="xsum", template="xsum_x")
    assert generative.choices == ("A summary.",) and generative.gold == 0
