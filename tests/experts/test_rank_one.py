"""RankOneBank: shapes, counts, init, and every expert against a dense outer-product reference."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from references import factors, kron_chain, randomize
from tensoradapt.algebra import leaf_size
from tensoradapt.experts import RankOneBank

dims = st.integers(1, 12)
counts = st.integers(1, 4)


@given(d_in=dims, d_out=dims, r1=counts, r2=counts, seed=st.integers(0, 2**16))
def test_experts_are_the_outer_products_of_the_pairs(d_in, d_out, r1, r2, seed):
    bank = randomize(RankOneBank(d_in, d_out, r1, r2, dtype=torch.float64), seed)
    down, up = bank.vectors()
    assert down.shape == (d_in, r1) and up.shape == (r2, d_out)
    experts_down, experts_up = bank.skill_matrices()
    assert experts_down.shape == (r1 * r2, d_in, 1) and experts_up.shape == (r1 * r2, 1, d_out)
    for i in range(r1):
        for j in range(r2):
            expected = torch.outer(bank.down[i], bank.up[j])  # b_j a_i^T as (d_in, d_out)
            got = experts_down[i * r2 + j] @ experts_up[i * r2 + j]
            torch.testing.assert_close(got, expected)
    summed_down, summed_up = bank.summed_matrices()
    torch.testing.assert_close(summed_down @ summed_up, (experts_down @ experts_up).sum(0))


@given(d_in=dims, d_out=dims, r1=counts, r2=counts)
def test_dense_parameter_count_is_r1_plus_r2_vectors(d_in, d_out, r1, r2):
    bank = RankOneBank(d_in, d_out, r1, r2)
    assert sum(p.numel() for p in bank.parameters()) == r1 * d_in + r2 * d_out
    assert bank.n_skills == r1 * r2 and bank.lora_rank == 1


@given(
    d_in=st.integers(2, 40),
    d_out=st.integers(2, 40),
    r1=counts,
    r2=counts,
    rank=st.integers(1, 3),
    order=st.integers(1, 3),
)
def test_entangled_parameter_count(d_in, d_out, r1, r2, rank, order):
    bank = RankOneBank(d_in, d_out, r1, r2, entangled=True, tensor_rank=rank, order=order)
    expected = r1 * rank * order * leaf_size(d_in, order) + r2 * rank * order * leaf_size(d_out, order)
    assert sum(p.numel() for p in bank.parameters()) == expected


@given(d_in=st.integers(2, 30), d_out=st.integers(2, 30), r1=counts, r2=counts, order=st.integers(1, 3))
def test_entangled_vectors_are_the_materialised_leaves(d_in, d_out, r1, r2, order):
    bank = randomize(RankOneBank(d_in, d_out, r1, r2, entangled=True, tensor_rank=2, order=order,
                                 dtype=torch.float64))
    down, up = bank.vectors()
    q_in, q_out = leaf_size(d_in, order), leaf_size(d_out, order)
    for i in range(r1):  # plain chained kron of the leaves, summed over ranks, cut to d
        reference = sum(kron_chain(factors(bank.down)[i, k]) for k in range(2))[:d_in]
        torch.testing.assert_close(down[:, i], reference)
    for j in range(r2):
        reference = sum(kron_chain(factors(bank.up)[j, k]) for k in range(2))[:d_out]
        torch.testing.assert_close(up[j], reference)
    assert bank.down.leaves.shape[-1] == q_in and bank.up.leaves.shape[-1] == q_out


def test_dense_init_is_lora_for_every_init_name():
    for init in ("matched", "reference", "lora"):
        bank = RankOneBank(64, 48, 4, 8, init=init)
        down, up = bank.vectors()
        assert torch.count_nonzero(up) == 0
        assert down.abs().max() <= 1 / math.sqrt(64)
        assert float(down.detach().std()) == pytest.approx(1 / math.sqrt(3 * 64), rel=0.25)


def test_entangled_lora_init_starts_at_zero_with_live_leaves():
    bank = RankOneBank(64, 48, 4, 8, entangled=True, tensor_rank=2, order=2, init="lora")
    down, up = bank.vectors()
    assert up.abs().max() < 1e-5 and down.abs().max() > 0
    assert torch.count_nonzero(bank.up.leaves) == bank.up.leaves.numel()


@pytest.mark.parametrize("tensor_rank", [1, 2])
def test_entangled_matched_init_starts_at_zero_for_any_tensor_rank(tensor_rank: int):
    torch.manual_seed(0)
    bank = RankOneBank(384, 48, 64, 8, entangled=True, tensor_rank=tensor_rank, order=2)
    down, up = bank.vectors()
    assert torch.count_nonzero(up) == 0
    assert float(down.detach().std()) == pytest.approx(1 / math.sqrt(3 * 384), rel=0.2)


def test_entangled_reference_init_has_nonzero_b():
    bank = RankOneBank(64, 48, 4, 8, entangled=True, tensor_rank=1, order=2, init="reference")
    bound = math.sqrt(2.0 / 6.0) / math.sqrt(64)
    assert bank.up.leaves.abs().max() <= bound and bank.vectors()[1].abs().max() > 0


def test_entangled_lora_init_with_one_tensor_rank_is_refused():
    with pytest.raises(ValueError, match="tensor_rank >= 2"):
        RankOneBank(16, 16, 2, 2, entangled=True, tensor_rank=1, order=2, init="lora")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(d_in=0, d_out=4, n_down=1, n_up=1), "d_in"),
        (dict(d_in=4, d_out=4, n_down=0, n_up=1), "n_down"),
        (dict(d_in=4, d_out=4, n_down=1, n_up=True), "n_up"),
        (dict(d_in=4, d_out=4, n_down=1, n_up=1, init="kaiming"), "init"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RankOneBank(**kwargs)
