"""The encoder-once losses against plain per-choice loops on a tiny random T5."""

import math

import pytest
import torch
import torch.nn.functional as F

from t0_recipes.data.collate import MultipleChoiceCollator
from t0_recipes.data.rows import Example
from t0_recipes.scoring.seq2seq import (
    LossWeights,
    choice_token_losses,
    gold_lm_loss,
    length_normalized_scores,
    lm_loss,
    multiple_choice_loss,
    tfew_loss,
    unlikelihood_loss,
)

EXAMPLES = [
    Example(0, "The lamp is on. Is the room dark?", ("Yes", "No"), 1),
    Example(0, "Pick a colour for the sky:", ("blue", "green", "a very long red answer"), 0),
    Example(0, "x", ("maybe", "no"), 0),
]


@pytest.fixture()
def batch(tokenizer):
    return MultipleChoiceCollator(tokenizer)(EXAMPLES)


def naive_token_losses(model, tokenizer, example):
    """One full forward per (example, choice): no padding, no encoder reuse."""
    prompt = tokenizer(example.input_text, return_tensors="pt")
    losses = []
    for choice in example.choices:
        labels = tokenizer(choice, return_tensors="pt").input_ids
        logits = model(input_ids=prompt.input_ids, attention_mask=prompt.attention_mask, labels=labels).logits
        losses.append(F.cross_entropy(logits[0], labels[0], reduction="none"))
    return losses  # per choice: (len_c,)


def reference_losses(model, tokenizer, examples):
    lm_sum = lm_n = ul_sum = ul_n = 0.0
    mc_terms = []
    for example in examples:
        per_choice = naive_token_losses(model, tokenizer, example)
        for c, token_losses in enumerate(per_choice):
            if c == example.gold:
                lm_sum = lm_sum + token_losses.sum()
                lm_n += token_losses.numel()
            else:
                ul_sum = ul_sum + (-torch.log(1 - torch.exp(-token_losses) + 1e-2)).sum()
                ul_n += token_losses.numel()
        scores = torch.stack([token_losses.mean() for token_losses in per_choice])
        mc_terms.append(F.cross_entropy(-scores[None], torch.tensor([example.gold])))
    return lm_sum / lm_n, ul_sum / ul_n, torch.stack(mc_terms).mean()


def test_encoder_once_equals_naive_per_choice_scoring(model, tokenizer, batch):
    with torch.no_grad():
        token_losses = choice_token_losses(model, batch)
        for i, example in enumerate(EXAMPLES):
            for c, expected in enumerate(naive_token_losses(model, tokenizer, example)):
                n = int(batch["choice_mask"][i, c].sum())
                assert n == expected.numel()
                torch.testing.assert_close(token_losses[i, c, :n], expected, rtol=1e-5, atol=1e-5)
                assert (token_losses[i, c, n:] == 0).all()
    assert (token_losses[0, 2] == 0).all() and batch["choice_mask"][0, 2].sum() == 0  # missing third choice


def test_three_losses_match_plain_loops(model, tokenizer, batch):
    token_losses = choice_token_losses(model, batch)
    mask, gold = batch["choice_mask"], batch["gold"]
    lm_ref, ul_ref, mc_ref = reference_losses(model, tokenizer, EXAMPLES)
    torch.testing.assert_close(lm_loss(token_losses, mask, gold), lm_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(unlikelihood_loss(token_losses, mask, gold), ul_ref, rtol=1e-5, atol=1e-6)
    scores = length_normalized_scores(token_losses, mask)
    assert math.isinf(scores[0, 2].item())
    torch.testing.assert_close(multiple_choice_loss(scores, gold), mc_ref, rtol=1e-5, atol=1e-6)


def test_tfew_loss_value_and_gradients_match_the_reference(model, tokenizer, batch):
    import copy

    # Exact claims (same loss, same gradients by another route): float64, where no BLAS kernel's
    # fp32 rounding decides the outcome.
    model = model.double()
    reference_model = copy.deepcopy(model)
    weights = LossWeights(lm=1.0, unlikelihood=0.5, multiple_choice=2.0)
    output = tfew_loss(model, batch, weights=weights)
    lm_ref, ul_ref, mc_ref = reference_losses(reference_model, tokenizer, EXAMPLES)
    expected = 1.0 * lm_ref + 0.5 * ul_ref + 2.0 * mc_ref
    torch.testing.assert_close(output.loss, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(output.lm, lm_ref.detach(), rtol=1e-10, atol=1e-12)
    output.loss.backward()
    expected.backward()
    # The gradients of the unlikelihood and multiple-choice terms differ by ~4e-8 of the largest
    # entry even in float64 (the LM term's by 3e-15): far above rounding, far below any effect on
    # training; the tolerance is scaled to each gradient's magnitude.
    for (name, p), (_, q) in zip(model.named_parameters(), reference_model.named_parameters()):
        scale = float(q.grad.abs().max())
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-6 * scale, msg=lambda m: f"{name}: {m}")
    assert output.scores.shape == (3, 3) and not output.scores.requires_grad


def test_gold_lm_loss_equals_lm_loss_of_the_scoring_pass(model, batch):
    with torch.no_grad():
        token_losses = choice_token_losses(model, batch)
        expected = lm_loss(token_losses, batch["choice_mask"], batch["gold"])
        torch.testing.assert_close(gold_lm_loss(model, batch), expected, rtol=1e-5, atol=1e-6)


def test_hand_computed_terms():
    # one example, two choices; token losses chosen by hand
    token_losses = torch.tensor([[[0.5, 1.5, 0.0], [2.0, 0.0, 0.0]]])
    mask = torch.tensor([[[1, 1, 0], [1, 0, 0]]])
    gold = torch.tensor([0])
    assert lm_loss(token_losses, mask, gold).item() == pytest.approx(1.0)
    p = math.exp(-2.0)
    assert unlikelihood_loss(token_losses, mask, gold).item() == pytest.approx(-math.log(1 - p + 1e-2))
    scores = length_normalized_scores(token_losses, mask)
    assert scores.tolist() == [[1.0, 2.0]]
    expected_mc = -math.log(math.exp(-1.0) / (math.exp(-1.0) + math.exp(-2.0)))
    assert multiple_choice_loss(scores, gold).item() == pytest.approx(expected_mc)
    single = unlikelihood_loss(token_losses[:, :1], mask[:, :1], gold)
    assert single.item() == 0.0  # no wrong choice, no unlikelihood term


def test_route_wraps_encoder_and_decoder_with_repeated_task_ids(model, batch):
    from contextlib import contextmanager

    seen = []

    @contextmanager
    def route(m, task_ids):
        seen.append(task_ids.tolist())
        yield

    batch = dict(batch, task_ids=torch.tensor([4, 5, 6]))
    with torch.no_grad():
        routed = choice_token_losses(model, batch, route=route)
        plain = choice_token_losses(model, batch)
    torch.testing.assert_close(routed, plain)
    assert seen == [[4, 5, 6], [4, 4, 4, 5, 5, 5, 6, 6, 6]]


def test_choice_scorer_is_one_forward_with_the_same_losses(model, batch):
    from t0_recipes.scoring.seq2seq import ChoiceScorer, combine_tfew

    scorer = ChoiceScorer(model)
    with torch.no_grad():
        torch.testing.assert_close(scorer(**batch), choice_token_losses(model, batch))
        combined = combine_tfew(scorer(**batch), batch["choice_mask"], batch["gold"])
        torch.testing.assert_close(combined.loss, tfew_loss(model, batch).loss)
