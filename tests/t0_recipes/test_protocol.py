"""The protocol over tasks x seeds on made-up rows, the zero-shot script, and the adapter plug."""

import copy
import json
import random

import pytest
import torch

import tensoradapt
from t0_recipes.data.collate import MultipleChoiceCollator
from t0_recipes.scoring.seq2seq import tfew_loss
from t0_recipes.protocol import ProtocolConfig, eval_examples, fewshot_examples, run_protocol
from t0_recipes.data.tasks import TASKS
from t0_recipes.data.templates import TEMPLATES

TASKS_HERE = ("rte", "cb")
SEEDS = (42, 0)


@pytest.fixture()
def data_root(tmp_path, make_row):
    rng = random.Random(0)
    for name in TASKS_HERE:
        task = TASKS[name]
        for seed in SEEDS:
            path = tmp_path / "t0_fewshot" / task.local_dir / f"{task.k}_shot" / f"{seed}_seed.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(make_row(name, rng, i % task.n_choices)) + "\n" for i in range(task.k)))
        path = tmp_path / "t0_validation" / task.local_dir / "validation.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(make_row(name, rng, i % task.n_choices)) + "\n" for i in range(6)))
    return tmp_path


def test_examples_for_training_and_evaluation(data_root):
    config = ProtocolConfig(tasks=TASKS_HERE, seeds=SEEDS, data_dir=str(data_root), eval_max_rows=4)
    train = fewshot_examples(config, "rte", 42)
    assert len(train) == 32 and {e.task_id for e in train} == {0}  # one routing row after a reset
    assert train == fewshot_examples(config, "rte", 42)  # the template draw is seeded
    evaluation = eval_examples(config, "cb")
    assert len(evaluation) == 4 * len(TEMPLATES["cb"])


def test_run_protocol_adapts_a_fresh_model_per_seed_and_skips_missing_tasks(data_root, model, tokenizer):
    calls = []
    base = copy.deepcopy(model)

    def adapt(m, examples, collator, seed):
        calls.append((examples[0].task, seed, len(examples)))
        return m

    config = ProtocolConfig(tasks=("rte", "cb", "copa"), seeds=SEEDS, data_dir=str(data_root))
    results = run_protocol(lambda: copy.deepcopy(base), tokenizer, config, adapt=adapt, progress=False)
    assert calls == [("rte", 42, 32), ("rte", 0, 32), ("cb", 42, 32), ("cb", 0, 32)]
    assert [(r.task, r.seed) for r in results] == [("rte", 42), ("rte", 0), ("cb", 42), ("cb", 0)]
    assert all(r.n_eval == 6 * len(TEMPLATES[r.task]) and 0 <= r.accuracy <= 1 for r in results)
    assert "copa" in config.skipped


def test_zero_shot_script_writes_the_report(data_root, tmp_path):
    from t0_recipes import zero_shot

    out = tmp_path / "out"
    zero_shot.main(["--preset", "tiny", "--data-dir", str(data_root), "--tasks", *TASKS_HERE, "--seeds", "42", "0",
                    "--out", str(out), "--quiet"])
    report = json.loads((out / "zero_shot_tiny.json").read_text())
    assert set(report["summary"]["tasks"]) == set(TASKS_HERE)
    assert report["random_init"] and report["params"]["trainable"] == 0
    assert "Tiny random-init model" in (out / "zero_shot_tiny.md").read_text()
    assert (out / "zero_shot_tiny.png").stat().st_size > 0


@pytest.mark.skipif(not hasattr(tensoradapt, "inject"), reason="tensoradapt.inject has not landed yet")
def test_an_adapter_plugs_in_through_route(data_root, model, tokenizer):
    """LoRA injected into the tiny T5; routing via ``tensoradapt.use_routing``; only the adapter trains."""
    adapted = tensoradapt.inject(model, tensoradapt.AdapterConfig(method="poly", n_tasks=1, lora_rank=2, n_skills=2))
    route = tensoradapt.use_routing
    config = ProtocolConfig(tasks=("rte",), seeds=(42,), data_dir=str(data_root))
    examples = fewshot_examples(config, "rte", 42)
    batch = MultipleChoiceCollator(tokenizer)(examples[:4])
    frozen = {n: p.detach().clone() for n, p in adapted.named_parameters() if not p.requires_grad}
    trainable = [p for p in adapted.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    output = tfew_loss(adapted, batch, route=route)
    output.loss.backward()
    optimizer.step()
    assert any(not torch.equal(p, q) for p, q in zip(trainable, before))
    assert all(torch.equal(p, frozen[n]) for n, p in adapted.named_parameters() if n in frozen)
    results = run_protocol(lambda: adapted, tokenizer, config, adapt=lambda m, e, c, s: m, route=route, progress=False)
    assert len(results) == 1 and 0 <= results[0].accuracy <= 1
