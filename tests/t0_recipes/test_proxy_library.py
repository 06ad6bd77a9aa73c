"""`benchmarks/t0_proxy_library.py`: a LoRA library trained, imported every way, evaluated, reported.

End to end on a tiny random BERT cross-encoder and made-up ``t0_train`` rows (the real run reads
MiniLM and ``../shared/data``); the paired bootstrap against hand-counted cases.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tensoradapt as ta
from t0_recipes.scoring.cross_encoder import CrossEncoder

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "t0_proxy_library.py"
TASKS = ("ag_news", "sst2")
WORDS = [f"w{i}" for i in range(60)]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("t0_proxy_library", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def data_dir(tmp_path, write_jsonl, make_row):
    """80 made-up rows per task: a shot pool of 40, an evaluation pool of 40."""
    rng = random.Random(0)
    for task, n_choices in (("ag_news", 4), ("sst2", 2)):
        write_jsonl(tmp_path / "data" / "t0_train" / task / "train.jsonl",
                    [make_row(task, rng, i % n_choices) for i in range(80)])
    return tmp_path / "data"


def tiny_cross_encoder(tmp_path):
    """A random 2-layer BERT (hidden 16) under the scoring head, with a word-level tokenizer of its own."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz"]))
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return CrossEncoder(BertModel(config)).eval(), tokenizer


def test_the_library_run_reports_every_import_against_the_loras(script, data_dir, tmp_path):
    """Seen failing when the shared-skill option is dropped (``poly_s1`` imported exactly)."""
    out = tmp_path / "out"
    payload = script.main(
        ["--data-dir", str(data_dir), "--tasks", *TASKS, "--steps", "6", "--batch-size", "4", "--lr", "0.3",
         "--eval-rows", "12", "--shared-skills", "1", "--tensor-ranks", "1", "6", "--tlora-rank", "1",
         "--fit-steps", "50", "--out", str(out), "--loras-dir", str(tmp_path / "loras"), "--quiet"],
        load=lambda: tiny_cross_encoder(tmp_path),
    )
    assert json.loads((out / "lora_library.json").read_text())["rows"].keys() == payload["rows"].keys()
    assert (out / "lora_library.png").stat().st_size > 0
    rows = payload["rows"]
    assert list(rows) == ["lora", "poly", "poly_s1", "tensorpoly_i_r1", "tensorpoly_i_r6", "tensorpoly_ii", "tlora_r1",
                          "base"]
    n_examples = sum(payload["n_eval"].values())
    assert payload["n_eval"] == {"ag_news": 12, "sst2": 12} and payload["n_train"] == {"ag_news": 40, "sst2": 40}

    # The exact import is the LoRAs, outcome for outcome; the compressed ones carry their errors.
    assert rows["poly"]["outcomes_equal_reference"] == n_examples and rows["poly"]["error"] is None
    assert rows["poly"]["delta"] == {"estimate": 0.0, "low": 0.0, "high": 0.0}
    assert rows["poly"]["adapter_parameters"] > rows["lora"]["adapter_parameters"]  # + the routing rows
    assert rows["poly_s1"]["adapter_parameters"] < 0.6 * rows["lora"]["adapter_parameters"]
    assert set(rows["poly_s1"]["error"]["per_task"]) == set(TASKS)  # a fit, whose error is reported
    assert rows["poly_s1"]["error"]["overall"] == pytest.approx(
        ta.library.combined_error(rows["poly_s1"]["error"]["per_task"], payload["update_norms"]))
    # Order 2 at R = 6 >= every leaf size (4 for 16 dims, 6 for 32) is exact; R = 1 is not.
    assert rows["tensorpoly_i_r6"]["error"]["max_layer"] < 1e-5
    assert rows["tensorpoly_i_r6"]["outcomes_equal_reference"] == n_examples
    assert rows["tensorpoly_i_r1"]["error"]["overall"] > 0.1
    # TLoRA per task fits each LoRA as TensorPoly-I's block of it does; TensorPoly-II is TensorPoly-I at R = 1.
    for name in ("tlora_r1", "tensorpoly_ii"):
        assert rows[name]["error"]["per_task"] == pytest.approx(rows["tensorpoly_i_r1"]["error"]["per_task"], rel=1e-5)
    for name, row in rows.items():
        mean = np.mean([row["accuracy"][t] for t in TASKS])
        assert row["mean"] == pytest.approx(mean)
        if row["delta"] is not None:
            assert row["delta"]["estimate"] == pytest.approx(mean - rows["lora"]["mean"])
            assert row["delta"]["low"] <= row["delta"]["estimate"] + 1e-12 <= row["delta"]["high"] + 2e-12
    assert rows["base"]["adapter_parameters"] == 0 and rows["base"]["error"] is None
    gain = rows["lora"]["mean"] - rows["base"]["mean"]
    for row in rows.values():
        assert row["gain_kept"] == (None if gain <= 0 else pytest.approx((row["mean"] - rows["base"]["mean"]) / gain))
    markdown = (out / "lora_library.md").read_text()
    for label in ("Poly, exact", "Poly, 1 shared skills", "TensorPoly-I, R=6, N=2", "TLoRA per task, R=1, N=2",
                  "no adapter (the base model)"):
        assert f"| {label} |" in markdown

    # The same LoRAs read back (--loras-from) are the same reference, outcome for outcome.
    again = script.main(
        ["--data-dir", str(data_dir), "--tasks", *TASKS, "--loras-from", str(tmp_path / "loras"), "--eval-rows", "12",
         "--shared-skills", "--tensor-ranks", "--tlora-rank", "0", "--out", str(tmp_path / "again"), "--quiet"],
        load=lambda: tiny_cross_encoder(tmp_path),
    )
    assert list(again["rows"]) == ["lora", "poly", "tensorpoly_ii", "base"]
    assert again["lora_sha256"] == payload["lora_sha256"] and "read from" in again["loras"]
    for name in ("lora", "poly", "tensorpoly_ii", "base"):
        assert again["rows"][name]["accuracy"] == rows[name]["accuracy"]


def test_rows_come_from_the_split_pools_with_each_task_at_its_library_id(script, data_dir):
    """Seen failing when every task's evaluation rows carry task id 0 (the imports would answer sst2 with
    ag_news's LoRA)."""
    from t0_recipes.data.holdout import split_pools
    from t0_recipes.data.rows import load_train_rows

    train, evaluation = script.library_examples(str(data_dir), TASKS, eval_rows=12, seed=0)
    for task_id, task in enumerate(TASKS):
        assert {e.task_id for e in train[task]} == {e.task_id for e in evaluation[task]} == {task_id}
        assert {e.task for e in train[task] + evaluation[task]} == {task}
        assert len(train[task]) == 40 and len(evaluation[task]) == 12
        shots, held = split_pools(load_train_rows(str(data_dir), task), task)
        assert len(shots) == 40 and len(held) == 40  # training rows from one pool, evaluation from the other


@pytest.mark.parametrize("flags, message", [
    (["--tasks", "ag_news"], "at least two different tasks"),
    (["--tensor-ranks", "0"], "--tensor-ranks"),
    (["--shared-skills", "2", "0"], "--shared-skills"),
])
def test_bad_flags_are_refused_naming_the_flag(script, capsys, flags, message):
    with pytest.raises(SystemExit):
        script.main(["--data-dir", "unused", *flags])
    assert message in capsys.readouterr().err
