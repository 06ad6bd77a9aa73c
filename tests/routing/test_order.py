"""TensorPoly-II (`OrderRouter` over a `TLoRABank`): mix every order's leaves, then take the product.

``A_t[:, c] = kron_n(sum_k w[t,n,k] a[c,k,n])[:d_in]`` with ``w[t,n,:]`` order ``n``'s own
normalised sigmoid weights; the reference loops over columns, orders and ranks and chains
``torch.kron`` (with a written-out LayerNorm over the ``r`` columns' products together for
``normalize_outer``).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from references import assert_batch_rows_alone, factors, kron_rows, plain_weights, randomize
from tensoradapt.experts import LoRABank, TLoRABank
from tensoradapt.routing import LinearRouter, OrderRouter, RankRouter

dims = st.sampled_from([1, 2, 3, 5, 7, 8, 11, 13])
ranks = st.integers(1, 3)
tensor_ranks = st.integers(1, 4)
orders = st.integers(1, 4)
tasks = st.integers(1, 4)
seeds = st.integers(0, 2**16)


def order_mixed_columns(leaves: torch.Tensor, weights: list[list[float]], dim: int, normalize: bool) -> torch.Tensor:
    """Leaves ``(r, R, N, q)``, weights ``[n][k]`` -> ``(r, dim)``: ``kron_n(sum_k w[n][k] leaves[c, k, n])[:dim]``.

    With ``normalize`` the ``r`` columns' products are stacked after every ``kron`` and the ``(r, P)``
    block is LayerNormed as a whole (the reference's ``[r, q * q]``).
    """
    columns, rank, order, _ = leaves.shape
    mixed = []  # mixed[c][n]
    for c in range(columns):
        per_order = []
        for n in range(order):
            leaf = torch.zeros_like(leaves[c, 0, n])
            for k in range(rank):
                leaf = leaf + weights[n][k] * leaves[c, k, n]
            per_order.append(leaf)
        mixed.append(torch.stack(per_order))
    return kron_rows(torch.stack(mixed), dim, normalize=normalize)


def order_reference(bank: TLoRABank, logits: torch.Tensor, normalize: bool = False):
    """``logits (N, R)`` of one task -> ``A (d_in, r)``, ``B (r, d_out)``."""
    weights = [plain_weights(logits[n]) for n in range(logits.shape[0])]
    down = order_mixed_columns(factors(bank.down), weights, bank.d_in, normalize)
    up = order_mixed_columns(factors(bank.up), weights, bank.d_out, normalize)
    return down.T, up


def build(d_in, d_out, rank, tensor_rank, order, n_tasks, seed, normalize=False):
    bank = TLoRABank(d_in, d_out, rank, tensor_rank, order, normalize_outer=normalize, dtype=torch.float64)
    router = OrderRouter(n_tasks, order, tensor_rank, dtype=torch.float64)
    return randomize(bank, seed), randomize(router, seed + 1).eval()


@given(
    d_in=dims, d_out=dims, rank=ranks, tensor_rank=tensor_ranks, order=orders, n_tasks=tasks, seed=seeds,
    normalize=st.booleans(),
)
def test_each_order_mixes_its_leaves_then_the_product(d_in, d_out, rank, tensor_rank, order, n_tasks, seed, normalize):
    bank, router = build(d_in, d_out, rank, tensor_rank, order, n_tasks, seed, normalize)
    assert router.logits.shape == (n_tasks, order, tensor_rank)
    for t in range(n_tasks):
        down, up = router.adapter_matrices(bank, t)
        expected_down, expected_up = order_reference(bank, router.logits[t], normalize)
        assert down.shape == (d_in, rank) and up.shape == (rank, d_out)
        torch.testing.assert_close(down, expected_down, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(up, expected_up, rtol=1e-8, atol=1e-10)


@given(
    d_in=dims, d_out=dims, rank=ranks, tensor_rank=tensor_ranks, order=orders, n_tasks=tasks, seed=seeds,
    normalize=st.booleans(),
)
def test_mixed_batch_equals_each_task_alone(d_in, d_out, rank, tensor_rank, order, n_tasks, seed, normalize):
    bank, router = build(d_in, d_out, rank, tensor_rank, order, n_tasks, seed, normalize)
    ids = torch.tensor([(seed + 3 * i) % n_tasks for i in range(4)])
    assert_batch_rows_alone(router, bank, ids, d_in=d_in, d_out=d_out, rank=rank)


@given(d_in=dims, d_out=dims, rank=ranks, tensor_rank=tensor_ranks, n_tasks=tasks, seed=seeds)
def test_order_one_is_poly_over_the_rank_components(d_in, d_out, rank, tensor_rank, n_tasks, seed) -> None:
    bank, router = build(d_in, d_out, rank, tensor_rank, 1, n_tasks, seed)
    poly = LinearRouter(n_tasks, tensor_rank, dtype=torch.float64).eval()
    rank_router = RankRouter(n_tasks, tensor_rank, dtype=torch.float64).eval()
    with torch.no_grad():
        poly.logits.copy_(router.logits[:, 0, :])
        rank_router.logits.copy_(router.logits[:, 0, :])
    for t in range(n_tasks):
        down, up = router.adapter_matrices(bank, t)
        # Poly over the R order-1 components, written out: sum_k w_k a[c, k, 0].
        weights = plain_weights(poly.logits[t])
        expected_down = sum(w * factors(bank.down)[:, k, 0, :].T for k, w in enumerate(weights))
        expected_up = sum(w * factors(bank.up)[:, k, 0, :] for k, w in enumerate(weights))
        torch.testing.assert_close(down, expected_down)
        torch.testing.assert_close(up, expected_up)
        for other in (poly, rank_router):
            other_down, other_up = other.adapter_matrices(bank, t)
            torch.testing.assert_close(down, other_down)
            torch.testing.assert_close(up, other_up)


@given(d_in=dims, d_out=dims, rank=ranks, order=orders, n_tasks=tasks, seed=seeds, training=st.booleans())
def test_one_tensor_rank_is_tlora(d_in, d_out, rank, order, n_tasks, seed, training) -> None:
    bank, router = build(d_in, d_out, rank, 1, order, n_tasks, seed)
    router.train(training)
    expected_down, expected_up = bank.summed_matrices()
    torch.manual_seed(seed)
    for t in range(n_tasks):
        down, up = router.adapter_matrices(bank, t)
        torch.testing.assert_close(down, expected_down, rtol=1e-4, atol=1e-10)  # weights s / (s + 1e-12)
        torch.testing.assert_close(up, expected_up, rtol=1e-4, atol=1e-10)


@given(d_in=dims, d_out=dims, rank=ranks, tensor_rank=tensor_ranks, order=orders, seed=seeds)
def test_average_takes_the_product_of_the_mean_leaves(d_in, d_out, rank, tensor_rank, order, seed) -> None:
    bank, router = build(d_in, d_out, rank, tensor_rank, order, 3, seed)
    router.average = True
    uniform = torch.zeros(order, tensor_rank, dtype=torch.float64)  # sigmoid(0) everywhere: weights 1 / R
    expected_down, expected_up = order_reference(bank, uniform)
    down, up = router.adapter_matrices(bank, 2)
    torch.testing.assert_close(down, expected_down, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(up, expected_up, rtol=1e-8, atol=1e-10)


def test_routing_parameter_count_is_tasks_orders_ranks() -> None:
    """PAPER_FACTS: TensorPoly-II R=20, N=2, one task -> 40 logits per linear (17,280 / 432)."""
    router = OrderRouter(1, 2, 20)
    assert sum(p.numel() for p in router.parameters()) == 40 == 17_280 // 432


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_gradients_reach_logits_and_every_leaf(normalize: bool, order: int) -> None:
    # init='reference' (B not zero): at a zero B, as LoRA's, A's leaves and the logits wait a step
    torch.manual_seed(0)
    bank = TLoRABank(8, 5, 2, 3, order, init="reference", normalize_outer=normalize, dtype=torch.float64)
    router = OrderRouter(2, order, 3, dtype=torch.float64).train()
    down, up = router.adapter_matrices(bank, torch.tensor([0, 1, 1]))
    (down @ up * torch.randn(3, 8, 5, dtype=torch.float64)).sum().backward()
    for leaves in (bank.down.leaves, bank.up.leaves):
        assert (leaves.grad.flatten(2).abs().sum(-1) > 0).all()
    assert (router.logits.grad.abs() > 0).all()


def test_a_lora_bank_is_refused() -> None:
    with pytest.raises(TypeError, match="TLoRABank"):
        OrderRouter(1, 2, 2).adapter_matrices(LoRABank(4, 4, 1, 2), 0)
