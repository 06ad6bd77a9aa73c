"""MHR (`MultiHeadRouter` over a `LoRABank`): every head routes its own block of the dims.

``d_in`` is cut into ``H`` contiguous row blocks of ``A`` and ``d_out`` into ``H`` contiguous
column blocks of ``B``; block ``h`` is ``sum_s w[t,h,s]`` times skill ``s``'s block ``h``. The
reference builds it head by head with slices and loops.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from references import assert_batch_rows_alone, plain_weights, randomize
from tensoradapt.experts import LoRABank
from tensoradapt.routing import LinearRouter, MultiHeadRouter
from tensoradapt.routing.multihead import check_heads_divide

heads = st.integers(1, 4)
block = st.sampled_from([1, 2, 3, 5])
ranks = st.integers(1, 3)
skills = st.integers(1, 4)
tasks = st.integers(1, 4)
seeds = st.integers(0, 2**16)


def mhr_reference(bank: LoRABank, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits (H, S)`` of one task -> ``A (d_in, r)``, ``B (r, d_out)`` head by head."""
    n_heads = logits.shape[0]
    step_in, step_out = bank.d_in // n_heads, bank.d_out // n_heads
    down = torch.zeros(bank.d_in, bank.lora_rank, dtype=torch.float64)
    up = torch.zeros(bank.lora_rank, bank.d_out, dtype=torch.float64)
    for h in range(n_heads):
        rows = slice(h * step_in, (h + 1) * step_in)
        cols = slice(h * step_out, (h + 1) * step_out)
        for s, w in enumerate(plain_weights(logits[h])):
            down[rows] += w * bank.down[s, rows].detach()
            up[:, cols] += w * bank.up[s, :, cols].detach()
    return down, up


@given(n_heads=heads, block_in=block, block_out=block, rank=ranks, n_skills=skills, n_tasks=tasks, seed=seeds)
def test_every_head_mixes_its_own_block(n_heads, block_in, block_out, rank, n_skills, n_tasks, seed) -> None:
    d_in, d_out = n_heads * block_in, n_heads * block_out
    bank = randomize(LoRABank(d_in, d_out, rank, n_skills, dtype=torch.float64), seed)
    router = MultiHeadRouter(n_tasks, n_heads, n_skills, d_in=d_in, d_out=d_out, dtype=torch.float64)
    randomize(router, seed + 1).eval()
    assert router.logits.shape == (n_tasks, n_heads, n_skills)
    for t in range(n_tasks):
        down, up = router.adapter_matrices(bank, t)
        expected_down, expected_up = mhr_reference(bank, router.logits[t])
        assert down.shape == (d_in, rank) and up.shape == (rank, d_out)
        torch.testing.assert_close(down, expected_down)
        torch.testing.assert_close(up, expected_up)


@given(n_heads=heads, block_in=block, block_out=block, rank=ranks, n_skills=skills, n_tasks=tasks, seed=seeds)
def test_mixed_batch_equals_each_task_alone(n_heads, block_in, block_out, rank, n_skills, n_tasks, seed) -> None:
    d_in, d_out = n_heads * block_in, n_heads * block_out
    bank = randomize(LoRABank(d_in, d_out, rank, n_skills, dtype=torch.float64), seed)
    router = MultiHeadRouter(n_tasks, n_heads, n_skills, d_in=d_in, d_out=d_out, dtype=torch.float64)
    randomize(router, seed + 1).eval()
    ids = torch.tensor([(seed + i) % n_tasks for i in range(5)])
    down, _ = assert_batch_rows_alone(router, bank, ids, d_in=d_in, d_out=d_out, rank=rank)
    single_down, _ = router.adapter_matrices(bank, torch.tensor(ids[0].item()))
    torch.testing.assert_close(single_down, down[0])


@given(
    d_in=st.sampled_from([1, 2, 5, 7, 12]), d_out=st.sampled_from([1, 3, 7, 13]), rank=ranks, n_skills=skills,
    n_tasks=tasks, seed=seeds, training=st.booleans(),
)
def test_one_head_is_poly(d_in, d_out, rank, n_skills, n_tasks, seed, training) -> None:
    """Same logits, same random draw in training: MHR with H = 1 gives Poly's matrices."""
    bank = randomize(LoRABank(d_in, d_out, rank, n_skills, dtype=torch.float64), seed)
    mhr = MultiHeadRouter(n_tasks, 1, n_skills, d_in=d_in, d_out=d_out, dtype=torch.float64)
    randomize(mhr, seed + 1).train(training)
    poly = LinearRouter(n_tasks, n_skills, dtype=torch.float64).train(training)
    with torch.no_grad():
        poly.logits.copy_(mhr.logits[:, 0, :])
    ids = torch.tensor([(seed + i) % n_tasks for i in range(3)])
    for task in (0, n_tasks - 1, ids):
        torch.manual_seed(seed)
        got = mhr.adapter_matrices(bank, task)
        torch.manual_seed(seed)
        expected = poly.adapter_matrices(bank, task)
        torch.testing.assert_close(got[0], expected[0])
        torch.testing.assert_close(got[1], expected[1])


@given(n_heads=heads, block_in=block, block_out=block, rank=ranks, n_skills=skills, seed=seeds)
def test_heads_with_equal_logits_are_poly(n_heads, block_in, block_out, rank, n_skills, seed) -> None:
    d_in, d_out = n_heads * block_in, n_heads * block_out
    bank = randomize(LoRABank(d_in, d_out, rank, n_skills, dtype=torch.float64), seed)
    mhr = MultiHeadRouter(2, n_heads, n_skills, d_in=d_in, d_out=d_out, dtype=torch.float64).eval()
    poly = randomize(LinearRouter(2, n_skills, dtype=torch.float64), seed + 1).eval()
    with torch.no_grad():
        mhr.logits.copy_(poly.logits[:, None, :].expand(-1, n_heads, -1))
    for t in range(2):
        got, expected = mhr.adapter_matrices(bank, t), poly.adapter_matrices(bank, t)
        torch.testing.assert_close(got[0], expected[0])
        torch.testing.assert_close(got[1], expected[1])


@given(n_heads=heads, block_in=block, block_out=block, n_skills=skills)
def test_average_gives_the_mean_of_the_skills(n_heads, block_in, block_out, n_skills) -> None:
    d_in, d_out = n_heads * block_in, n_heads * block_out
    bank = randomize(LoRABank(d_in, d_out, 2, n_skills, dtype=torch.float64), 0)
    router = MultiHeadRouter(3, n_heads, n_skills, d_in=d_in, d_out=d_out, dtype=torch.float64)
    randomize(router, 1).train()
    router.average = True
    down, up = router.adapter_matrices(bank, 1)
    torch.testing.assert_close(down, bank.down.detach().mean(0))
    torch.testing.assert_close(up, bank.up.detach().mean(0))


def test_routing_parameter_count_is_tasks_heads_skills() -> None:
    """PAPER_FACTS: 8 skills x 64 heads per linear, one task -> 512 routing logits per linear."""
    router = MultiHeadRouter(1, 64, 8, d_in=2048, d_out=5120)
    assert sum(p.numel() for p in router.parameters()) == 64 * 8


def test_gradients_reach_every_head_and_skill() -> None:
    bank = randomize(LoRABank(6, 9, 2, 3), 0)
    router = MultiHeadRouter(2, 3, 3, d_in=6, d_out=9).train()
    down, up = router.adapter_matrices(bank, torch.tensor([0, 1]))
    (down @ up * torch.randn(2, 6, 9)).sum().backward()
    assert (router.logits.grad.abs() > 0).all()
    assert (bank.down.grad.flatten(1).abs().sum(1) > 0).all() and (bank.up.grad.flatten(1).abs().sum(1) > 0).all()


@pytest.mark.parametrize("n_heads, d_in, d_out", [(2, 3, 4), (2, 4, 3), (3, 9, 8), (4, 2, 4), (5, 7, 7)])
def test_heads_that_do_not_divide_are_a_value_error_naming_n_heads(n_heads: int, d_in: int, d_out: int) -> None:
    with pytest.raises(ValueError, match="n_heads") as error:
        MultiHeadRouter(2, n_heads, 3, d_in=d_in, d_out=d_out)
    message = str(error.value)
    assert f"n_heads={n_heads}" in message and ("d_in" in message or "d_out" in message)
    with pytest.raises(ValueError, match="n_heads"):
        check_heads_divide(n_heads, d_in, d_out)


@pytest.mark.parametrize("n_heads, d_in, d_out", [(1, 7, 13), (7, 7, 14), (3, 3, 3), (2, 2048, 5120)])
def test_heads_that_divide_are_accepted(n_heads: int, d_in: int, d_out: int) -> None:
    check_heads_divide(n_heads, d_in, d_out)
    assert MultiHeadRouter(1, n_heads, 2, d_in=d_in, d_out=d_out).n_heads == n_heads
