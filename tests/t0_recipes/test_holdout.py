"""A cluster held out of ``t0_train``: shot pool and evaluation pool never meet, no held-out row is
pre-trained on, and a pre-training task passed to ``--tasks`` without ``--hold-out`` stops the run."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from t0_recipes import pipeline, zero_shot
from t0_recipes.data.holdout import (
    HOLD_OUT_SHOTS,
    SHOT_POOL_ROWS,
    TOPIC_CLUSTER,
    load_hold_out_rows,
    split_pools,
)
from t0_recipes.data.mixture import load_mixture
from t0_recipes.data.rows import DataError, read_jsonl
from t0_recipes.data.tasks import FEWSHOT_SEEDS, TASKS
from t0_recipes.protocol import ProtocolConfig, eval_examples, fewshot_examples

SEEDS = (42, 0)
N_TRAIN = 90  # rows per t0_train file: a shot pool of 45 (half), 45 evaluation rows
FAST = ["--preset", "tiny", "--steps", "2", "--pretrain-steps", "3", "--eval-max-rows", "3", "--quiet"]


@pytest.fixture()
def data_dir(tmp_path, make_row, write_jsonl, write_fewshot_tasks):
    """rte and cb (few-shot and validation files); ag_news, trec, imdb and mrpc in t0_train (trec: a row twice)."""
    rng = random.Random(0)
    root = write_fewshot_tasks(tmp_path / "data", ("rte", "cb"), SEEDS, rng)
    for name in ("imdb", "ag_news", "trec", "mrpc"):
        rows = [make_row(name, rng, i % TASKS[name].n_choices) for i in range(N_TRAIN)]
        if name == "trec":
            rows[-1] = dict(rows[0])  # a repeated row must not land in both pools
        write_jsonl(root / "t0_train" / name / "train.jsonl", rows)
    return root


def _texts(rows) -> set[str]:
    return {row["text"] for row in rows}


def test_the_pools_split_every_distinct_row_once_whatever_the_seed(data_dir):
    rows = read_jsonl(data_dir / "t0_train" / "trec" / "train.jsonl")
    shot_pool, evaluation = split_pools(rows, "trec")
    distinct = {json.dumps(row, sort_keys=True) for row in rows}
    assert len(distinct) == N_TRAIN - 1 and len(shot_pool) == (N_TRAIN - 1) // 2
    assert not _texts(shot_pool) & _texts(evaluation)
    assert {json.dumps(row, sort_keys=True) for row in shot_pool + evaluation} == distinct
    assert split_pools(rows, "trec") == (shot_pool, evaluation)  # fixed: no few-shot seed enters it
    assert split_pools(rows, "ag_news") != (shot_pool, evaluation)  # each task its own permutation
    for seed in FEWSHOT_SEEDS:
        shots = load_hold_out_rows(data_dir, "trec", seed)
        assert len(shots) == HOLD_OUT_SHOTS and _texts(shots) <= _texts(shot_pool)
        assert not _texts(shots) & _texts(load_hold_out_rows(data_dir, "trec", None))
    assert load_hold_out_rows(data_dir, "trec", 42) == load_hold_out_rows(data_dir, "trec", 42)
    assert load_hold_out_rows(data_dir, "trec", 42) != load_hold_out_rows(data_dir, "trec", 0)
    assert load_hold_out_rows(data_dir, "trec", None) == evaluation
    with pytest.raises(DataError, match="fewer than its 32 shots"):
        split_pools(rows[:40], "trec")


def test_the_protocol_trains_on_shots_and_scores_other_rows(data_dir):
    config = ProtocolConfig(tasks=["rte", "ag_news"], hold_out=["ag_news"], seeds=SEEDS, data_dir=str(data_dir),
                            eval_templates="random")
    evaluation = eval_examples(config, "ag_news")
    rows = read_jsonl(data_dir / "t0_train" / "ag_news" / "train.jsonl")
    assert len(evaluation) == N_TRAIN - N_TRAIN // 2
    for seed in SEEDS:
        train = fewshot_examples(config, "ag_news", seed)
        assert len(train) == HOLD_OUT_SHOTS and {len(e.choices) for e in train} == {4}
        trained = {row["text"] for row in rows if any(row["text"] in e.input_text for e in train)}
        scored = {row["text"] for row in rows if any(row["text"] in e.input_text for e in evaluation)}
        assert len(trained) == HOLD_OUT_SHOTS and len(scored) == len(evaluation) and not trained & scored
    with pytest.raises(ValueError, match="--tasks ag_news: .*--hold-out ag_news"):
        ProtocolConfig(tasks=["rte", "ag_news"], data_dir=str(data_dir))
    with pytest.raises(ValueError, match="needs source='local'"):
        eval_examples(ProtocolConfig(tasks=["ag_news"], hold_out=["ag_news"], source="hub"), "ag_news")


def test_a_held_out_task_never_enters_the_mixture_and_is_evaluated(data_dir, tmp_path, monkeypatch):
    from t0_recipes.training import pretrain as pretrain_module

    seen, original = [], pretrain_module.pretrain

    def recording_pretrain(model, examples, *args, **kwargs):
        seen.extend(examples)
        return original(model, examples, *args, **kwargs)

    monkeypatch.setattr(pretrain_module, "pretrain", recording_pretrain)
    out = tmp_path / "out"
    pipeline.main("poly", [*FAST, "--data-dir", str(data_dir), "--tasks", "cb", "--hold-out", *TOPIC_CLUSTER,
                           "--seeds", *map(str, SEEDS), "--output-dir", str(out), "--zero-shot"])
    held_rows = [row for name in TOPIC_CLUSTER for row in read_jsonl(data_dir / "t0_train" / name / "train.jsonl")]
    assert seen and {e.task for e in seen} == {"imdb", "mrpc"}
    assert not [e for e in seen for row in held_rows if row["text"] in e.input_text]
    config = json.loads((out / "poly_tiny_config.json").read_text())
    assert config["tasks"] == ["cb", *TOPIC_CLUSTER] and config["hold_out"] == list(TOPIC_CLUSTER)
    assert config["mixture_tasks"] == ["imdb", "mrpc"]
    assert config["hold_out_pools"] == {"ag_news": {"shot_pool": 45, "eval_pool": 45},
                                        "trec": {"shot_pool": 44, "eval_pool": 45}}
    for name in ("poly_tiny.run.json", "poly_tiny_zeroshot.run.json"):
        record = json.loads((out / name).read_text())
        assert {r["task"] for r in record["results"]} == {"cb", *TOPIC_CLUSTER}
        assert {"setup", "pretrain", "zero_shot", "fewshot"} <= set(record["phases_s"])
        timings = record["task_seed_s"]
        assert len(timings) == len(record["results"]) and all(r["eval"] > 0 for r in timings)
    assert "Held-out cluster from t0_train (not T0 tasks" in (out / "poly_tiny.md").read_text()


@pytest.mark.parametrize("argv", [["--tasks", "rte", "ag_news"], ["--tasks", "boolq"]])
def test_a_training_task_without_hold_out_stops_before_any_model_loads(data_dir, tmp_path, monkeypatch, capsys, argv):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pipeline, "load_model", no_model)
    out = tmp_path / "out"
    start = time.perf_counter()
    with pytest.raises(SystemExit) as error:
        pipeline.main("lora", ["--preset", "minilm", "--data-dir", str(data_dir), *argv, "--seeds", "42",
                               "--output-dir", str(out)])
    message = capsys.readouterr().err.strip()
    assert error.value.code == 2 and len(message.splitlines()) == 1 and "Traceback" not in message, message
    task = argv[-1]
    assert f"--tasks {task}: " in message
    assert (f"--hold-out {task}" in message) == (task == "ag_news")  # boolq has no t0_train rows to hold out
    assert time.perf_counter() - start < 5 and not out.exists()
    with pytest.raises(SystemExit) as error:
        zero_shot.main(["--preset", "tiny", "--data-dir", str(data_dir), *argv, "--out", str(out)])
    assert f"--tasks {task}: " in str(error.value.code) and not out.exists()


def test_hold_out_reads_local_rows_only(data_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        pipeline.main("lora", [*FAST, "--source", "hub", "--hold-out", "trec", "--output-dir", str(tmp_path / "o")])
    assert "--hold-out trec reads t0_train" in capsys.readouterr().err


# --------------------------------------------------------------------------- the real rows

_ENV = os.environ.get("TENSORADAPT_T0_DATA")
DATA = Path(_ENV) if _ENV else Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not (DATA / "t0_train").is_dir(),
    reason="real t0_train rows not found (set $TENSORADAPT_T0_DATA or place them at ../shared/data)",
)


@needs_data
@pytest.mark.parametrize(("task", "n_eval"), [("ag_news", 1500), ("trec", 1489)])
def test_real_topic_cluster_pools(task, n_eval):
    rows = read_jsonl(DATA / "t0_train" / task / "train.jsonl")
    shot_pool, evaluation = split_pools(rows, task)
    assert (len(shot_pool), len(evaluation)) == (SHOT_POOL_ROWS, n_eval)
    assert not _texts(shot_pool) & _texts(evaluation)
    for seed in FEWSHOT_SEEDS:
        shots = load_hold_out_rows(DATA, task, seed)
        assert len(shots) == HOLD_OUT_SHOTS and _texts(shots) <= _texts(shot_pool)
        assert not _texts(shots) & _texts(evaluation)
    print(f"{task}: {len(shot_pool)} shot-pool rows, {len(evaluation)} evaluation rows")


@needs_data
def test_real_mixture_without_the_topic_cluster():
    examples, _ = load_mixture("local", DATA, exclude=["rte", *TOPIC_CLUSTER], max_rows_per_task=200)
    held = {row["text"] for name in TOPIC_CLUSTER for row in read_jsonl(DATA / "t0_train" / name / "train.jsonl")}
    assert examples and not {e.task for e in examples} & set(TOPIC_CLUSTER)
    assert not [e for e in examples if any(text in e.input_text for text in held)]
