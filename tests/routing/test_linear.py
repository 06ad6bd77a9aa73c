"""Poly (`LinearRouter` over a `LoRABank`) and TensorPoly-I (`RankRouter` over a `TLoRABank`).

Poly mixes then multiplies: ``A_t = sum_s w[t,s] A_s``, ``B_t = sum_s w[t,s] B_s``.
TensorPoly-I mixes after the tensor product: ``A_t[:, c] = sum_k w[t,k] kron_n(a[c,k,n])[:d_in]``.
Both references are loops over skills / ranks / columns with ``torch.kron`` in the test.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from references import assert_batch_rows_alone, factors, kron_rows, plain_weights, randomize
from tensoradapt.experts import LoRABank, TLoRABank
from tensoradapt.routing import LinearRouter, RankRouter

dims = st.sampled_from([1, 2, 3, 5, 7, 8, 11, 13])
ranks = st.integers(1, 3)
skills = st.integers(1, 5)
tasks = st.integers(1, 4)
orders = st.integers(1, 4)
seeds = st.integers(0, 2**16)


def poly_reference(bank: LoRABank, weights: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    down = torch.zeros(bank.d_in, bank.lora_rank, dtype=torch.float64)
    up = torch.zeros(bank.lora_rank, bank.d_out, dtype=torch.float64)
    for s, w in enumerate(weights):
        down = down + w * bank.down[s].detach()
        up = up + w * bank.up[s].detach()
    return down, up


def rank_mixed_reference(bank: TLoRABank, weights: list[float], normalize: bool = False):
    """``A (d_in, r)``, ``B (r, d_out)``: ``sum_k w_k`` times rank ``k``'s simple tensors."""
    down = torch.zeros(bank.lora_rank, bank.d_in, dtype=torch.float64)
    up = torch.zeros(bank.lora_rank, bank.d_out, dtype=torch.float64)
    for k, w in enumerate(weights):
        down = down + w * kron_rows(factors(bank.down)[:, k], bank.d_in, normalize=normalize)
        up = up + w * kron_rows(factors(bank.up)[:, k], bank.d_out, normalize=normalize)
    return down.T, up


# --- Poly -----------------------------------------------------------------------------------


@given(d_in=dims, d_out=dims, rank=ranks, n_skills=skills, n_tasks=tasks, seed=seeds)
def test_poly_mixes_a_and_b_separately(d_in, d_out, rank, n_skills, n_tasks, seed) -> None:
    bank = randomize(LoRABank(d_in, d_out, rank, n_skills, dtype=torch.float64), seed)
    router = randomize(LinearRouter(n_tasks, n_skills, dtype=torch.float64), seed + 1).eval()
    for t in range(n_tasks):
        down, up = router.adapter_matrices(bank, t)
        expected_down, expected_up = poly_reference(bank, plain_weights(router.logits[t]))
        assert down.shape == (d_in, rank) and up.shape == (rank, d_out)
        torch.testing.assert_close(down, expected_down)
        torch.testing.assert_close(up, expected_up)
        # Mix, then multiply: the delta is (sum_s w A_s)(sum_s w B_s), not sum_s w A_s B_s.
        torch.testing.assert_close(down @ up, expected_down @ expected_up)


@given(d_in=dims, d_out=dims, rank=ranks, n_skills=skills, n_tasks=tasks, seed=seeds)
def test_poly_mixed_batch_equals_each_task_alone(d_in, d_out, rank, n_skills, n_tasks, seed) -> None:
    bank = randomize(LoRABank(d_in, d_out, rank, n_skills, dtype=torch.float64), seed)
    router = randomize(LinearRouter(n_tasks, n_skills, dtype=torch.float64), seed + 1).eval()
    ids = torch.tensor([(seed + 3 * i) % n_tasks for i in range(5)])
    assert_batch_rows_alone(router, bank, ids, d_in=d_in, d_out=d_out, rank=rank)


@given(d_in=dims, d_out=dims, rank=ranks, n_tasks=tasks, seed=seeds, training=st.booleans())
def test_poly_with_one_skill_is_plain_lora(d_in, d_out, rank, n_tasks, seed, training) -> None:
    bank = randomize(LoRABank(d_in, d_out, rank, 1, dtype=torch.float64), seed)
    router = LinearRouter(n_tasks, 1, dtype=torch.float64).train(training)
    torch.manual_seed(seed)
    for t in range(n_tasks):
        down, up = router.adapter_matrices(bank, t)
        # A lone weight is s / (s + 1e-12) (the guarded division): 1 up to 1e-12 / s.
        torch.testing.assert_close(down, bank.down[0], rtol=1e-5, atol=0)
        torch.testing.assert_close(up, bank.up[0], rtol=1e-5, atol=0)


@given(d_in=dims, d_out=dims, rank=ranks, n_skills=skills, seed=seeds)
def test_poly_average_is_the_mean_of_the_skills(d_in, d_out, rank, n_skills, seed) -> None:
    bank = randomize(LoRABank(d_in, d_out, rank, n_skills, dtype=torch.float64), seed)
    router = randomize(LinearRouter(3, n_skills, dtype=torch.float64), seed + 1).train()
    router.average = True
    expected_down, expected_up = poly_reference(bank, [1.0 / n_skills] * n_skills)
    for ids in (0, 2, None):
        down, up = router.adapter_matrices(bank, ids)
        torch.testing.assert_close(down, expected_down)
        torch.testing.assert_close(up, expected_up)
    down, up = router.adapter_matrices(bank, torch.tensor([1, 0]))
    torch.testing.assert_close(down, expected_down.expand(2, -1, -1))


def test_poly_gradients_reach_logits_and_every_skill() -> None:
    bank = randomize(LoRABank(5, 7, 2, 4), 0)
    router = LinearRouter(3, 4).train()
    down, up = router.adapter_matrices(bank, torch.tensor([0, 2]))
    (down @ up).pow(2).sum().backward()
    assert (bank.down.grad.flatten(1).abs().sum(1) > 0).all()
    assert (bank.up.grad.flatten(1).abs().sum(1) > 0).all()
    assert router.logits.grad[[0, 2]].abs().min() > 0
    assert router.logits.grad[1].abs().sum() == 0


# --- TensorPoly-I ---------------------------------------------------------------------------


@given(
    d_in=dims, d_out=dims, rank=ranks, tensor_rank=st.integers(1, 4), order=orders, n_tasks=tasks,
    seed=seeds, normalize=st.booleans(),
)
def test_tensorpoly_i_mixes_after_the_tensor_product(d_in, d_out, rank, tensor_rank, order, n_tasks, seed, normalize):
    """Fast folded path (``rank_mixed_matrices``) and the ``normalize_outer`` fallback alike."""
    bank = TLoRABank(d_in, d_out, rank, tensor_rank, order, normalize_outer=normalize, dtype=torch.float64)
    randomize(bank, seed)
    router = randomize(RankRouter(n_tasks, tensor_rank, dtype=torch.float64), seed + 1).eval()
    for t in range(n_tasks):
        down, up = router.adapter_matrices(bank, t)
        expected_down, expected_up = rank_mixed_reference(bank, plain_weights(router.logits[t]), normalize)
        assert down.shape == (d_in, rank) and up.shape == (rank, d_out)
        torch.testing.assert_close(down, expected_down, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(up, expected_up, rtol=1e-8, atol=1e-10)


@given(d_in=dims, d_out=dims, rank=ranks, tensor_rank=st.integers(1, 4), order=orders, seed=seeds)
def test_tensorpoly_i_folded_path_equals_mixing_the_simple_tensors(d_in, d_out, rank, tensor_rank, order, seed):
    bank = randomize(TLoRABank(d_in, d_out, rank, tensor_rank, order, dtype=torch.float64), seed)
    weights = torch.rand(3, tensor_rank, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    down, up = bank.rank_mixed_matrices(weights)
    assert down.shape == (3, d_in, rank) and up.shape == (3, rank, d_out)
    for b in range(3):
        expected_down, expected_up = rank_mixed_reference(bank, weights[b].tolist())
        torch.testing.assert_close(down[b], expected_down, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(up[b], expected_up, rtol=1e-8, atol=1e-10)


def test_rank_mixed_matrices_refuses_normalize_outer() -> None:
    bank = TLoRABank(4, 4, 1, 2, 2, normalize_outer=True)
    with pytest.raises(ValueError, match="normalize_outer"):
        bank.rank_mixed_matrices(torch.ones(2))


@given(
    d_in=dims, d_out=dims, rank=ranks, tensor_rank=st.integers(1, 4), order=orders, n_tasks=tasks,
    seed=seeds, normalize=st.booleans(),
)
def test_tensorpoly_i_mixed_batch_equals_each_task_alone(d_in, d_out, rank, tensor_rank, order, n_tasks, seed, normalize):
    bank = TLoRABank(d_in, d_out, rank, tensor_rank, order, normalize_outer=normalize, dtype=torch.float64)
    randomize(bank, seed)
    router = randomize(RankRouter(n_tasks, tensor_rank, dtype=torch.float64), seed + 1).eval()
    ids = torch.tensor([(seed + 2 * i) % n_tasks for i in range(4)])
    assert_batch_rows_alone(router, bank, ids, d_in=d_in, d_out=d_out, rank=rank)


@given(d_in=dims, d_out=dims, rank=ranks, order=orders, n_tasks=tasks, seed=seeds, normalize=st.booleans())
def test_tensorpoly_i_with_one_tensor_rank_is_tlora(d_in, d_out, rank, order, n_tasks, seed, normalize) -> None:
    bank = TLoRABank(d_in, d_out, rank, 1, order, normalize_outer=normalize, dtype=torch.float64)
    randomize(bank, seed)
    router = RankRouter(n_tasks, 1, dtype=torch.float64).train()
    expected_down, expected_up = rank_mixed_reference(bank, [1.0], normalize)
    torch.manual_seed(seed)
    for t in range(n_tasks):
        down, up = router.adapter_matrices(bank, t)
        # The lone weight is s / (s + 1e-12) for a relaxed-Bernoulli sample s: 1 up to 1e-12 / s.
        torch.testing.assert_close(down, expected_down, rtol=1e-5, atol=1e-10)
        torch.testing.assert_close(up, expected_up, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_tensorpoly_i_gradients_reach_logits_and_every_leaf(normalize: bool, order: int) -> None:
    # init='reference' (B not zero): at a zero B, as LoRA's, A's leaves and the logits wait a step
    torch.manual_seed(0)
    bank = TLoRABank(9, 5, 2, 3, order, init="reference", normalize_outer=normalize, dtype=torch.float64)
    router = RankRouter(2, 3, dtype=torch.float64).train()
    down, up = router.adapter_matrices(bank, torch.tensor([1, 1, 0]))
    (down @ up * torch.randn(3, 9, 5, dtype=torch.float64)).sum().backward()
    for leaves in (bank.down.leaves, bank.up.leaves):
        assert (leaves.grad.flatten(2).abs().sum(-1) > 0).all()  # every (column, rank, order) leaf
    assert (router.logits.grad.abs() > 0).all()


@given(d_in=dims, d_out=dims, rank=ranks, tensor_rank=st.integers(1, 4), order=orders, seed=seeds)
def test_uniform_mean_normalised_tensorpoly_i_is_tlora(d_in, d_out, rank, tensor_rank, order, seed) -> None:
    """The library's default for TensorPoly-I: equal logits give every rank weight 1, i.e. TLoRA."""
    bank = randomize(TLoRABank(d_in, d_out, rank, tensor_rank, order, dtype=torch.float64), seed)
    router = RankRouter(2, tensor_rank, normalization="mean", dtype=torch.float64).eval()
    with torch.no_grad():
        router.logits.fill_(0.37)
    down, up = router.adapter_matrices(bank, 1)
    expected_down, expected_up = rank_mixed_reference(bank, [1.0] * tensor_rank)
    torch.testing.assert_close(down, expected_down, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(up, expected_up, rtol=1e-10, atol=1e-12)
    tlora_down, tlora_up = bank.summed_matrices()
    torch.testing.assert_close(down, tlora_down, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(up, tlora_up, rtol=1e-10, atol=1e-12)
