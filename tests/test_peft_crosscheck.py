"""Our Poly and MHR against PEFT's own ``PolyConfig`` implementation, number for number.

PEFT's layouts (peft/tuners/poly/layer.py, router.py):
``poly_lora_A (n_splits, n_skills, d_in // n_splits, r)``,
``poly_lora_B (n_splits, n_skills, r, d_out // n_splits)``,
``poly_router.module_logits (n_tasks, n_splits * n_skills)`` viewed ``(n_tasks, n_splits, n_skills)``;
weights ``sigmoid`` (eval) or relaxed-Bernoulli samples (training, temperature 1) divided by their
sum (+1e-12); delta ``x A_t B_t / r``. Head ``h`` owns rows ``h * d_in / H ...`` of ``A`` and
columns ``h * d_out / H ...`` of ``B``. Ours: ``down (S, d_in, r)``, ``up (S, r, d_out)``, logits
``(n_tasks, S)`` (Poly) or ``(n_tasks, H, S)`` (MHR), scaling ``1 / r``.
"""

import pytest
import torch

from tensoradapt import AdapterConfig, adapted_layers, inject
from tensoradapt.targets import DEFAULT_TARGETS
from tensoradapt.testing import tiny_batch, tiny_model

peft = pytest.importorskip("peft")
from peft import PolyConfig, get_peft_model  # noqa: E402

N_TASKS, N_SKILLS, RANK = 3, 4, 2


def _pair(n_heads: int, target_modules: str):
    """(PEFT Poly model, our model) on the same tiny T5, ours holding PEFT's (randomised) weights."""
    peft_config = PolyConfig(r=RANK, n_tasks=N_TASKS, n_skills=N_SKILLS, n_splits=n_heads,
                             target_modules=target_modules, init_weights=False)
    theirs = get_peft_model(tiny_model("t5"), peft_config)
    method = "poly" if n_heads == 1 else "mhr"
    ours = inject(tiny_model("t5"), AdapterConfig(method=method, lora_rank=RANK, n_tasks=N_TASKS, n_skills=N_SKILLS,
                                                  n_heads=n_heads, target_modules=target_modules))
    generator = torch.Generator().manual_seed(0)
    peft_layers = {name.removeprefix("base_model.model."): module for name, module in theirs.named_modules()
                   if isinstance(module, peft.tuners.poly.layer.Linear)}
    ours_layers = adapted_layers(ours)
    assert set(peft_layers) == set(ours_layers) and ours_layers
    with torch.no_grad():
        for name, layer in ours_layers.items():
            source = peft_layers[name]
            lora_a, lora_b = source.poly_lora_A["default"], source.poly_lora_B["default"]
            logits = source.poly_router["default"].module_logits
            # Non-zero B and clearly non-uniform routing, so every term of the math shows.
            lora_b.normal_(0.0, 0.5, generator=generator)
            logits.normal_(0.0, 3.0, generator=generator)
            splits, skills, d_in_head, r = lora_a.shape
            d_out_head = lora_b.shape[-1]
            # (H, S, i/H, r) -> (S, H, i/H, r) -> (S, i, r); (H, S, r, o/H) -> (S, r, H, o/H) -> (S, r, o).
            layer.bank.down.copy_(lora_a.permute(1, 0, 2, 3).reshape(skills, splits * d_in_head, r))
            layer.bank.up.copy_(lora_b.permute(1, 2, 0, 3).reshape(skills, r, splits * d_out_head))
            view = logits.view(N_TASKS, splits, skills)
            layer.combiner.logits.copy_(view[:, 0] if n_heads == 1 else view)
    return theirs, ours


T5_PATTERN = DEFAULT_TARGETS["t5"]


@pytest.mark.parametrize("n_heads", [1, 2, 4])
@pytest.mark.parametrize("target_modules", [T5_PATTERN, r".*(SelfAttention|EncDecAttention)\.(q|v)"],
                         ids=["default_targets", "attention_q_v"])
def test_poly_and_mhr_match_peft_in_eval_mode(n_heads, target_modules):
    theirs, ours = _pair(n_heads, target_modules)
    theirs.eval()
    ours.eval()
    batch = tiny_batch(ours, batch=3)
    with torch.no_grad():
        base = tiny_model("t5")(**batch).logits
        for task_ids in (torch.tensor([0, 0, 0]), torch.tensor([2, 2, 2]), torch.tensor([2, 0, 1])):
            expected = theirs.base_model(**batch, task_ids=task_ids).logits
            assert not torch.allclose(expected, base, atol=1e-3), "the Poly adapters must matter"
            torch.testing.assert_close(ours(**batch, task_ids=task_ids).logits, expected, atol=1e-5, rtol=1e-5)
        # A single int id for the batch is the same as repeating it.
        torch.testing.assert_close(ours(**batch, task_ids=1).logits,
                                   theirs.base_model(**batch, task_ids=torch.ones(3, dtype=torch.long)).logits,
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_heads", [1, 2])
def test_poly_and_mhr_match_peft_in_training_mode_with_the_same_noise(n_heads):
    """Same seed, same per-example relaxed-Bernoulli draws in the same layer order: same logits
    and the same gradients for every skill and routing logit."""
    theirs, ours = _pair(n_heads, T5_PATTERN)
    theirs.train()
    ours.train()
    batch = tiny_batch(ours, batch=3)
    ids = torch.tensor([1, 0, 2])
    torch.manual_seed(123)
    expected = theirs.base_model(**batch, task_ids=ids).logits
    torch.manual_seed(123)
    got = ours(**batch, task_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.manual_seed(7)
    eval_like = ours(**batch, task_ids=ids).logits
    assert not torch.allclose(eval_like, got, atol=1e-4), "training-mode routing must be noisy"

    expected.square().mean().backward()
    got.square().mean().backward()
    peft_layers = {name.removeprefix("base_model.model."): module for name, module in theirs.named_modules()
                   if isinstance(module, peft.tuners.poly.layer.Linear)}
    for name, layer in adapted_layers(ours).items():
        source = peft_layers[name]
        grad_a, grad_b = source.poly_lora_A["default"].grad, source.poly_lora_B["default"].grad
        splits, skills, d_in_head, r = grad_a.shape
        torch.testing.assert_close(layer.bank.down.grad,
                                   grad_a.permute(1, 0, 2, 3).reshape(skills, -1, r), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(layer.bank.up.grad,
                                   grad_b.permute(1, 2, 0, 3).reshape(skills, r, -1), atol=1e-5, rtol=1e-4)
        grad_logits = source.poly_router["default"].module_logits.grad.view(N_TASKS, splits, skills)
        torch.testing.assert_close(layer.combiner.logits.grad, grad_logits[:, 0] if n_heads == 1 else grad_logits,
                                   atol=1e-5, rtol=1e-4)


def test_poly_generate_matches_peft_greedy():
    theirs, ours = _pair(2, T5_PATTERN)
    theirs.eval()
    ours.eval()
    input_ids = tiny_batch(ours, batch=2, length=4)["input_ids"]
    ids = torch.tensor([2, 1])
    settings = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, num_beams=1)
    expected = theirs.base_model.generate(input_ids=input_ids, task_ids=ids, **settings)
    assert torch.equal(ours.generate(input_ids=input_ids, task_ids=ids, **settings), expected)
