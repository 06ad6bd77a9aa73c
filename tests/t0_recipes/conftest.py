"""Fixtures of the T0 recipe tests: a tiny random T5, the ByT5 tokenizer, the real-rows folder, made-up rows
and the writers of a made-up data folder."""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # t0_recipes/ sits at the repository root, outside the installed package
    sys.path.insert(0, str(REPO))

from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration  # noqa: E402

from t0_recipes.data.tasks import TASKS  # noqa: E402


def shared_data_dir() -> Path | None:
    """``$TENSORADAPT_T0_DATA`` or ``<repo>/../shared/data``, when it exists; else ``None``."""
    candidate = os.environ.get("TENSORADAPT_T0_DATA")
    path = Path(candidate) if candidate else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def tokenizer() -> ByT5Tokenizer:
    return ByT5Tokenizer()


def tiny_t5(seed: int = 0) -> T5ForConditionalGeneration:
    """A 2+2-layer gated-GELU T5 over ByT5 bytes, no dropout, eval mode."""
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(config).eval()


@pytest.fixture()
def model() -> T5ForConditionalGeneration:
    return tiny_t5()


# ----------------------------------------------------------------------------- synthetic rows
# Rows in each dataset's hub field format, made up here (never copied from real data).

_WORDS = "apple river stone quiet lamp orange table seven cloud garden violin paper".split()


def _sentence(rng, n: int = 6) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + "."


def _distinct(rng, count: int, n: int = 4) -> list[str]:
    """``count`` made-up answers, all different."""
    answers: list[str] = []
    while len(answers) < count:
        answer = " ".join(rng.choice(_WORDS) for _ in range(n))
        if answer not in answers:
            answers.append(answer)
    return answers



def synthetic_row(task: str, rng, label: int) -> dict:
    """One made-up row of ``task`` whose gold answer index is ``label``."""
    s = lambda n=6: _sentence(rng, n)  # noqa: E731
    if task in ("rte", "cb") or task.startswith("anli"):
        row = {"premise": s(12), "hypothesis": s(5), "label": label, "idx": rng.randrange(1000)}
        if task.startswith("anli"):
            row |= {"uid": f"uid-{rng.randrange(10**6)}", "reason": ""}
        return row
    if task == "copa":
        return {"premise": s(), "choice1": s(), "choice2": s(), "question": rng.choice(["cause", "effect"]),
                "label": label, "idx": 0}
    if task == "hellaswag":
        ctx_a, ctx_b = s(8), "then they"
        return {"ind": 1, "activity_label": "Doing things", "ctx_a": ctx_a, "ctx_b": ctx_b, "ctx": f"{ctx_a} {ctx_b}",
                "endings": [s(4) for _ in range(4)], "source_id": "x", "split": "val", "split_type": "indomain",
                "label": str(label)}  # the hub stores the label as a string
    if task == "story_cloze":
        row = {f"input_sentence_{i}": s() for i in range(1, 5)}
        return row | {"sentence_quiz1": s(), "sentence_quiz2": s(), "answer_right_ending": label + 1, "story_id": "s"}
    if task == "wsc":
        return {"text": s(10), "span1_index": 0, "span2_index": 5, "span1_text": "Apple", "span2_text": "it",
                "label": label, "idx": 0}
    if task == "winogrande":
        return {"sentence": "The apple fell on the lamp because _ was heavy.", "option1": "apple", "option2": "lamp",
                "answer": str(label + 1)}
    if task == "wic":
        return {"word": "stone", "sentence1": s(), "sentence2": s(), "start1": 0, "start2": 0, "end1": 5, "end2": 5,
                "label": label, "idx": 0}
    if task == "boolq":
        return {"question": "is the river quiet", "passage": s(20), "label": label, "idx": 0}
    if task == "sst2":
        return {"sentence": s(7), "label": label, "idx": 0}
    return _training_row(task, rng, label, s)


def _training_row(task: str, rng, label: int, s) -> dict:
    """A made-up ``t0_train`` row of ``task`` (its hub field format) whose gold answer index is ``label``."""
    if task == "rotten_tomatoes":
        return {"text": s(9).lower(), "label": label}
    if task == "imdb":  # long, with the hub's line-break tags
        return {"text": "<br /><br />".join(s(40) for _ in range(6)), "label": label}
    if task == "ag_news":
        return {"text": f"{s(4)} {s(15)}", "label": label}
    if task == "trec":
        return {"text": f"What {s(5).lower()[:-1]} ?", "coarse_label": label, "fine_label": 7 * label}
    if task == "mrpc":
        return {"sentence1": s(10), "sentence2": s(9), "label": label, "idx": rng.randrange(4000)}
    if task == "paws":
        return {"id": rng.randrange(8000), "sentence1": s(10), "sentence2": s(10), "label": label}
    if task == "dream":
        choices = _distinct(rng, 3)
        turns = [f"{speaker}: {s(rng.randrange(4, 60))}" for speaker in "MWMWMW"]
        return {"id": 0, "dialogue_id": "1-1", "dialogue": turns, "question": f"What {s(4).lower()[:-1]}?",
                "choice": choices, "answer": choices[label]}
    if task == "cos_e":
        choices = _distinct(rng, 3, 2)
        return {"id": "x", "question": f"Where {s(6).lower()[:-1]}?", "choices": choices, "answer": choices[label],
                "abstractive_explanation": s(), "extractive_explanation": s(3)}
    if task == "cosmos_qa":
        answers = _distinct(rng, 4, 6)
        return {"id": "c", "context": " ".join(s(12) for _ in range(20)), "question": f"Why {s(5).lower()[:-1]} ?",
                **{f"answer{i}": answer for i, answer in enumerate(answers)}, "label": label}
    if task == "piqa":
        sol1, sol2 = _distinct(rng, 2, 8)
        return {"goal": s(5), "sol1": sol1, "sol2": sol2, "label": label}
    if task in ("arc_easy", "arc_challenge", "openbookqa"):
        keys = list("ABCD") if task == "openbookqa" or rng.random() < 0.7 else list("1234")  # ARC uses both
        row = {"id": "q-1", "choices": {"text": _distinct(rng, 4, 3), "label": keys}, "answerKey": keys[label]}
        return row | ({"question_stem": s(8).lower()[:-1]} if task == "openbookqa" else {"question": f"{s(9)[:-1]}?"})
    if task == "mc_taco":
        return {"sentence": s(12), "question": f"How long {s(4).lower()[:-1]}?", "answer": s(3).lower()[:-1],
                "label": label, "category": rng.randrange(5)}
    raise ValueError(task)


@pytest.fixture()
def make_row():
    return synthetic_row


# ----------------------------------------------------------------------------- made-up data folders


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """``rows`` as a JSON-lines file at ``path``, its parent folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_fewshot_tasks(root: Path, names: Iterable[str], seeds: Iterable[int], rng: random.Random) -> Path:
    """Per task of ``names``, in the local layout under ``root``: 8 made-up rows in its few-shot file of each
    seed, then, for a held-out task, 5 in its validation file (``rng`` drawn in that order); returns ``root``."""
    for name in names:
        task = TASKS[name]
        for seed in seeds:
            write_jsonl(root / "t0_fewshot" / task.local_dir / f"{task.k}_shot" / f"{seed}_seed.jsonl",
                        [synthetic_row(name, rng, i % task.n_choices) for i in range(8)])
        if task.held_out:
            write_jsonl(root / "t0_validation" / task.local_dir / "validation.jsonl",
                        [synthetic_row(name, rng, i % task.n_choices) for i in range(5)])
    return root


@pytest.fixture(name="write_jsonl")
def write_jsonl_fixture() -> Callable[[Path, Iterable[dict]], None]:
    """``write_jsonl``, for a test module."""
    return write_jsonl


@pytest.fixture(name="write_fewshot_tasks")
def write_fewshot_tasks_fixture() -> Callable[[Path, Iterable[str], Iterable[int], random.Random], Path]:
    """``write_fewshot_tasks``, for a test module."""
    return write_fewshot_tasks
