"""LoRABank: shapes, parameter counts, init statistics and bad arguments.

The bank is a plain container (``A_s (d_in, r)``, ``B_s (r, d_out)`` per skill), so the dense
reference is the parameters themselves: every property compares the bank's matrices with the
tensors read entry by entry.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tensoradapt.experts import LoRABank, lora_a_std

# 1, odd and prime sizes are the ones that catch reshape mistakes.
dims = st.sampled_from([1, 2, 3, 5, 7, 8, 11, 13, 16])
ranks = st.integers(1, 4)
skills = st.integers(1, 5)


@given(d_in=dims, d_out=dims, rank=ranks, n_skills=skills)
def test_shapes_and_parameter_count(d_in: int, d_out: int, rank: int, n_skills: int) -> None:
    bank = LoRABank(d_in, d_out, rank, n_skills)
    down, up = bank.skill_matrices()
    assert down.shape == (n_skills, d_in, rank)
    assert up.shape == (n_skills, rank, d_out)
    assert bank.n_skills == n_skills
    assert (bank.d_in, bank.d_out, bank.lora_rank) == (d_in, d_out, rank)
    assert sum(p.numel() for p in bank.parameters()) == n_skills * rank * (d_in + d_out)
    summed_down, summed_up = bank.summed_matrices()
    assert summed_down.shape == (d_in, rank) and summed_up.shape == (rank, d_out)


@given(d_in=dims, d_out=dims, rank=ranks, n_skills=skills, seed=st.integers(0, 2**16))
def test_summed_matrices_are_the_sum_over_skills(d_in: int, d_out: int, rank: int, n_skills: int, seed: int) -> None:
    bank = LoRABank(d_in, d_out, rank, n_skills, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bank.up.copy_(torch.randn(bank.up.shape, generator=generator, dtype=torch.float64))
    down, up = bank.summed_matrices()
    expected_down = torch.zeros(d_in, rank, dtype=torch.float64)
    expected_up = torch.zeros(rank, d_out, dtype=torch.float64)
    for s in range(n_skills):
        for i in range(d_in):
            for c in range(rank):
                expected_down[i, c] += bank.down[s, i, c]
        for c in range(rank):
            for o in range(d_out):
                expected_up[c, o] += bank.up[s, c, o]
    torch.testing.assert_close(down, expected_down, rtol=0, atol=1e-12)
    torch.testing.assert_close(up, expected_up, rtol=0, atol=1e-12)


def test_one_skill_is_plain_lora_without_a_copy() -> None:
    bank = LoRABank(5, 3, 2)
    down, up = bank.summed_matrices()
    assert down.data_ptr() == bank.down.data_ptr() and up.data_ptr() == bank.up.data_ptr()


@pytest.mark.parametrize("d_in", [1, 7, 64, 257])
def test_init_a_is_kaiming_uniform_and_b_is_zero(d_in: int) -> None:
    """A ~ U(+-1/sqrt(d_in)) (nn.Linear's Kaiming-uniform with a = sqrt(5)), B = 0: delta starts at zero."""
    torch.manual_seed(0)
    bank = LoRABank(d_in, 11, 8, 16)
    bound = 1.0 / math.sqrt(d_in)
    assert bank.down.abs().max() <= bound
    assert torch.count_nonzero(bank.up) == 0
    # The std of U(-b, b) is b / sqrt(3); with 16 * d_in * 8 draws it is within a few percent.
    std = bank.down.std().item()
    assert lora_a_std(d_in) == pytest.approx(bound / math.sqrt(3.0))
    assert std == pytest.approx(lora_a_std(d_in), rel=0.15 if d_in == 1 else 0.08)
    # nn.Linear's own init has the same bound: the reference LoRA convention.
    linear = torch.nn.Linear(d_in, 4096)
    assert linear.weight.abs().max() <= bound
    assert linear.weight.std().item() == pytest.approx(lora_a_std(d_in), rel=0.08)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_dtype_is_honoured(dtype: torch.dtype) -> None:
    bank = LoRABank(6, 5, 2, 3, dtype=dtype)
    assert bank.down.dtype == dtype and bank.up.dtype == dtype


@given(d_in=dims, d_out=dims, rank=ranks, n_skills=skills)
def test_gradients_reach_both_sides(d_in: int, d_out: int, rank: int, n_skills: int) -> None:
    """With B = 0, dL/dB = (x A)^T g is non-zero; once B moves, A gets a gradient too."""
    bank = LoRABank(d_in, d_out, rank, n_skills, dtype=torch.float64)
    x = torch.randn(4, d_in, dtype=torch.float64)
    target = torch.randn(4, d_out, dtype=torch.float64)
    down, up = bank.skill_matrices()
    loss = ((torch.einsum("bi,sir,sro->bo", x, down, up) - target) ** 2).sum()
    loss.backward()
    for s in range(n_skills):
        assert bank.up.grad[s].abs().sum() > 0
    assert torch.count_nonzero(bank.down.grad) == 0  # LoRA's zero-output start
    with torch.no_grad():
        bank.up -= 0.1 * bank.up.grad
    bank.zero_grad()
    down, up = bank.skill_matrices()
    ((torch.einsum("bi,sir,sro->bo", x, down, up) - target) ** 2).sum().backward()
    for s in range(n_skills):
        assert bank.down.grad[s].abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(d_in=0, d_out=3, lora_rank=1), "d_in"),
        (dict(d_in=3, d_out=0, lora_rank=1), "d_out"),
        (dict(d_in=3, d_out=3, lora_rank=0), "lora_rank"),
        (dict(d_in=3, d_out=3, lora_rank=-2), "lora_rank"),
        (dict(d_in=3, d_out=3, lora_rank=1, n_skills=0), "n_skills"),
        (dict(d_in=3, d_out=3, lora_rank=True), "lora_rank"),
        (dict(d_in=3.0, d_out=3, lora_rank=1), "d_in"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        LoRABank(**kwargs)
