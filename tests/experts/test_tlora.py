"""TLoRABank against a plain reference: every column of A and row of B is a chained ``torch.kron``.

Column ``c`` of ``A`` is ``sum_k kron(a[c,k,0], a[c,k,1], ...)[:d_in]``; the test rebuilds it with
Python loops and ``torch.kron`` (and, for ``normalize_outer``, a LayerNorm written out after
every product over the ``r`` columns' products of one rank component together), then checks counts, order 1 == plain LoRA, init and that gradients reach every
leaf entry the cut keeps.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from references import factors, kron_rows, plain_layer_norm, randomize
from tensoradapt.experts import TLoRABank
from tensoradapt.experts.base import matched_init

dims = st.sampled_from([1, 2, 3, 5, 7, 8, 9, 11, 13, 17])
lora_ranks = st.integers(1, 3)
tensor_ranks = st.integers(1, 3)
orders = st.integers(1, 4)
seeds = st.integers(0, 2**16)


def plain_leaf_size(dim: int, order: int) -> int:
    """Smallest ``q`` with ``q ** order >= dim``, by counting up."""
    q = 1
    while q**order < dim:
        q += 1
    return q


def kron_columns(leaves: torch.Tensor, dim: int, *, normalize: bool = False) -> torch.Tensor:
    """``(r, dim)``: row ``c`` is ``sum_k kron(leaves[c, k, 0], ..., leaves[c, k, N-1])[:dim]``."""
    return sum(kron_rows(leaves[:, k], dim, normalize=normalize) for k in range(leaves.shape[1]))


def reference_matrices(bank: TLoRABank, *, normalize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense ``A (d_in, r)`` and ``B (r, d_out)`` from the leaves, one rank component at a time."""
    down = kron_columns(factors(bank.down), bank.d_in, normalize=normalize)
    up = kron_columns(factors(bank.up), bank.d_out, normalize=normalize)
    return down.T, up


def used_entries(dim: int, order: int, q: int) -> torch.Tensor:
    """``(N, q)`` mask: entry ``j`` of leaf ``n`` reaches one of the first ``dim`` flat entries."""
    mask = torch.zeros(order, q, dtype=torch.bool)
    for flat in range(dim):
        digits = []
        for _ in range(order):
            digits.append(flat % q)
            flat //= q
        for n, digit in enumerate(reversed(digits)):  # leaf 0 is the most significant digit
            mask[n, digit] = True
    return mask


@given(d_in=dims, d_out=dims, rank=lora_ranks, tensor_rank=tensor_ranks, order=orders, seed=seeds)
def test_columns_and_rows_are_chained_krons(d_in, d_out, rank, tensor_rank, order, seed) -> None:
    bank = randomize(TLoRABank(d_in, d_out, rank, tensor_rank, order, dtype=torch.float64), seed)
    down, up = bank.summed_matrices()
    expected_down, expected_up = reference_matrices(bank)
    assert down.shape == (d_in, rank) and up.shape == (rank, d_out)
    torch.testing.assert_close(down, expected_down, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(up, expected_up, rtol=1e-10, atol=1e-10)


@given(d_in=dims, d_out=dims, rank=lora_ranks, tensor_rank=tensor_ranks, order=orders, seed=seeds)
def test_skills_are_the_simple_tensors_of_each_rank(d_in, d_out, rank, tensor_rank, order, seed) -> None:
    bank = randomize(TLoRABank(d_in, d_out, rank, tensor_rank, order, dtype=torch.float64), seed)
    down, up = bank.skill_matrices()
    assert down.shape == (tensor_rank, d_in, rank) and up.shape == (tensor_rank, rank, d_out)
    assert bank.n_skills == tensor_rank
    for k in range(tensor_rank):
        torch.testing.assert_close(down[k], kron_rows(factors(bank.down)[:, k], d_in).T)
        torch.testing.assert_close(up[k], kron_rows(factors(bank.up)[:, k], d_out))


@given(d_in=dims, d_out=dims, rank=lora_ranks, tensor_rank=tensor_ranks, order=orders, seed=seeds)
def test_normalize_outer_layer_norms_every_pairwise_product(d_in, d_out, rank, tensor_rank, order, seed) -> None:
    bank = TLoRABank(d_in, d_out, rank, tensor_rank, order, normalize_outer=True, dtype=torch.float64)
    randomize(bank, seed)
    assert bank.normalize_outer
    expected_down, expected_up = reference_matrices(bank, normalize=True)
    down, up = bank.summed_matrices()
    torch.testing.assert_close(down, expected_down, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(up, expected_up, rtol=1e-8, atol=1e-8)
    skill_down, skill_up = bank.skill_matrices()
    torch.testing.assert_close(skill_down.sum(0), expected_down, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(skill_up.sum(0), expected_up, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("order", [2, 3])
def test_normalize_outer_normalizes_the_r_columns_together(order: int) -> None:
    """The reference's LayerNorm over ``[r, q * q]``: one block per rank component, not one per column.

    ``d_in = q ** order`` keeps the whole last product, so each rank's ``(d_in, r)`` slice of the
    skill matrices is the normalised block itself.
    """
    q, rank, tensor_rank = 3, 4, 2
    d_in = q**order
    bank = randomize(TLoRABank(d_in, 5, rank, tensor_rank, order, normalize_outer=True, dtype=torch.float64), 7)
    down = bank.skill_matrices()[0].detach()  # (R, d_in, r)
    for k in range(tensor_rank):
        block = down[k]
        centred = block - block.mean()
        assert abs(float(block.mean())) < 1e-10
        assert abs(float((centred**2).mean()) - 1.0) < 1e-3
        column_means = block.mean(dim=0)
        assert float(column_means.abs().max()) > 1e-3  # columns are not centred one by one
        leaves = factors(bank.down)[:, k]  # (r, N, q)
        per_column = []
        for c in range(rank):
            product = leaves[c, 0]
            for n in range(1, order):
                product = plain_layer_norm(torch.kron(product, leaves[c, n]))
            per_column.append(product)
        assert not torch.allclose(block, torch.stack(per_column, dim=1), atol=1e-3)


@given(d_in=dims, d_out=dims, rank=lora_ranks, tensor_rank=tensor_ranks, order=orders)
def test_parameter_count(d_in, d_out, rank, tensor_rank, order) -> None:
    bank = TLoRABank(d_in, d_out, rank, tensor_rank, order)
    q_in, q_out = plain_leaf_size(d_in, order), plain_leaf_size(d_out, order)
    assert bank.down.leaves.shape == (rank, tensor_rank, order, q_in)
    assert bank.up.leaves.shape == (rank, tensor_rank, order, q_out)
    assert sum(p.numel() for p in bank.parameters()) == tensor_rank * order * rank * (q_in + q_out)


def test_paper_count_for_a_t0_attention_linear() -> None:
    """PAPER_FACTS: q(2048, 2) = 46, so R=1, N=2, r=16 holds 16 * 2 * (46 + 46) per 2048 -> 2048 linear."""
    bank = TLoRABank(2048, 2048, 16, 1, 2)
    assert sum(p.numel() for p in bank.parameters()) == 16 * 2 * (46 + 46)


@given(d_in=dims, d_out=dims, rank=lora_ranks, seed=seeds)
def test_order_one_rank_one_is_plain_lora(d_in, d_out, rank, seed) -> None:
    generator = torch.Generator().manual_seed(seed)
    lora_down = torch.randn(d_in, rank, generator=generator, dtype=torch.float64)
    lora_up = torch.randn(rank, d_out, generator=generator, dtype=torch.float64)
    bank = TLoRABank(d_in, d_out, rank, 1, 1, dtype=torch.float64)
    assert bank.down.leaves.shape == (rank, 1, 1, d_in)
    with torch.no_grad():
        bank.down.leaves[:, 0, 0, :] = lora_down.T
        bank.up.leaves[:, 0, 0, :] = lora_up
    down, up = bank.summed_matrices()
    assert torch.equal(down, lora_down) and torch.equal(up, lora_up)
    assert sum(p.numel() for p in bank.parameters()) == rank * (d_in + d_out)  # LoRA's count


@given(d_in=dims, d_out=dims, rank=lora_ranks, tensor_rank=tensor_ranks, seed=seeds)
def test_order_one_sums_the_ranks_as_dense_vectors(d_in, d_out, rank, tensor_rank, seed) -> None:
    bank = randomize(TLoRABank(d_in, d_out, rank, tensor_rank, 1, dtype=torch.float64), seed)
    down, up = bank.summed_matrices()
    torch.testing.assert_close(down, factors(bank.down)[:, :, 0, :].sum(1).T)
    torch.testing.assert_close(up, factors(bank.up)[:, :, 0, :].sum(1))


def _loss(bank: TLoRABank, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    down, up = bank.summed_matrices()
    return ((x @ down @ up - target) ** 2).sum()


def _assert_gradient_reaches_used_entries(tensor, *, dim: int) -> None:
    grad = tensor.leaves.grad
    assert grad is not None
    mask = used_entries(dim, tensor.order, tensor.leaf_size)
    columns, rank = grad.shape[:2]
    for c in range(columns):
        for k in range(rank):
            assert (grad[c, k][mask] != 0).all(), f"leaf entries of column {c} rank {k} get no gradient"
            assert (grad[c, k][~mask] == 0).all()  # entries cut away never matter


@given(d_in=dims, d_out=dims, rank=lora_ranks, tensor_rank=tensor_ranks, order=orders, seed=seeds)
def test_reference_init_gives_every_leaf_a_gradient(d_in, d_out, rank, tensor_rank, order, seed) -> None:
    torch.manual_seed(seed)
    bank = TLoRABank(d_in, d_out, rank, tensor_rank, order, init="reference", dtype=torch.float64)
    x = torch.randn(3, d_in, dtype=torch.float64)
    _loss(bank, x, torch.randn(3, d_out, dtype=torch.float64)).backward()
    _assert_gradient_reaches_used_entries(bank.down, dim=d_in)
    _assert_gradient_reaches_used_entries(bank.up, dim=d_out)


@given(
    d_in=dims, d_out=dims, rank=lora_ranks, tensor_rank=st.integers(2, 3), order=orders, seed=seeds
)
def test_lora_init_starts_at_zero_and_no_leaf_is_stuck(d_in, d_out, rank, tensor_rank, order, seed) -> None:
    """B's materialised rows are zero but every B leaf has a gradient; A's follow after one step."""
    torch.manual_seed(seed)
    bank = TLoRABank(d_in, d_out, rank, tensor_rank, order, init="lora", dtype=torch.float64)
    _, up = bank.summed_matrices()
    torch.testing.assert_close(up, torch.zeros_like(up), rtol=0, atol=1e-12)
    x = torch.randn(3, d_in, dtype=torch.float64)
    target = torch.randn(3, d_out, dtype=torch.float64)
    _loss(bank, x, target).backward()
    _assert_gradient_reaches_used_entries(bank.up, dim=d_out)
    with torch.no_grad():
        bank.up.leaves -= 0.1 * bank.up.leaves.grad
    bank.zero_grad()
    _loss(bank, x, target).backward()
    _assert_gradient_reaches_used_entries(bank.down, dim=d_in)


@pytest.mark.parametrize("order", [2, 3])
def test_lora_init_with_one_tensor_rank_is_refused(order: int) -> None:
    with pytest.raises(ValueError, match="tensor_rank"):
        TLoRABank(8, 8, 2, 1, order, init="lora")


@pytest.mark.parametrize("d_in", [5, 64])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_reference_init_bounds_every_leaf_of_a_and_b(d_in: int, order: int) -> None:
    """Leaves of A *and* B are U(+-gain / sqrt(d_in)), gain = calculate_gain('leaky_relu', sqrt(5))."""
    torch.manual_seed(0)
    bank = TLoRABank(d_in, 30, 8, 4, order, init="reference")
    bound = torch.nn.init.calculate_gain("leaky_relu", math.sqrt(5)) / math.sqrt(d_in)
    assert bound == pytest.approx(math.sqrt(2.0 / 6.0) / math.sqrt(d_in))
    for leaves in (bank.down.leaves, bank.up.leaves):
        assert leaves.abs().max() <= bound
        assert leaves.abs().max() > 0.8 * bound  # spread over the interval, B not zero
        assert leaves.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=0.15)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_lora_init_a_has_kaiming_std(order: int) -> None:
    torch.manual_seed(0)
    d_in = 64
    bank = TLoRABank(d_in, 16, 64, 2, order, init="lora")
    down, _ = bank.summed_matrices()
    assert down.std().item() == pytest.approx(1.0 / math.sqrt(3.0 * d_in), rel=0.15)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("tensor_rank", [1, 8])
def test_matched_init_a_has_kaiming_std_and_b_is_zero_for_any_rank(order: int, tensor_rank: int) -> None:
    """The default init: A as LoRA's (std 1 / sqrt(3 d_in)), B exactly zero, also at R = 1."""
    torch.manual_seed(0)
    d_in = 384
    bank = TLoRABank(d_in, 300, 64, tensor_rank, order, dtype=torch.float64)
    down, up = bank.summed_matrices()
    assert down.std().item() == pytest.approx(1.0 / math.sqrt(3.0 * d_in), rel=0.2)
    assert torch.count_nonzero(up) == 0


@pytest.mark.parametrize("order", [2, 3, 4])
@pytest.mark.parametrize("tensor_rank", [1, 8])
def test_matched_init_of_mixed_leaves_gives_a_kaiming_std_once_mixed(order: int, tensor_rank: int) -> None:
    """``mixing='leaves'`` (TensorPoly-II): the product of the summed leaves has LoRA's std."""
    torch.manual_seed(0)
    d_in = 384
    bank = TLoRABank(d_in, 300, 64, tensor_rank, order, mixing="leaves", dtype=torch.float64)
    down, up = bank.order_mixed_matrices(torch.ones(order, tensor_rank, dtype=torch.float64))
    assert down.std().item() == pytest.approx(1.0 / math.sqrt(3.0 * d_in), rel=0.25)
    assert torch.count_nonzero(up) == 0


def _first_adam_step_of_b(bank: TLoRABank, combine, seed: int = 0) -> float:
    """``||B' - B||`` after one Adam step (``lr * sign(grad)``), over LoRA's ``lr * sqrt(r d_out)``."""
    generator = torch.Generator().manual_seed(seed)
    lr = 1e-3
    x = torch.randn(64, bank.d_in, generator=generator, dtype=torch.float64)
    target = torch.randn(64, bank.d_out, generator=generator, dtype=torch.float64)
    down, up = combine(bank)
    ((x @ down @ up - target) ** 2).mean().backward()
    with torch.no_grad():
        before = combine(bank)[1]
        for parameter in bank.parameters():
            parameter -= lr * torch.sign(parameter.grad)
        after = combine(bank)[1]
    return float((after - before).norm() / (lr * math.sqrt(bank.lora_rank * bank.d_out)))


@pytest.mark.parametrize("order", [2, 3, 4])
@pytest.mark.parametrize("tensor_rank", [1, 8])
def test_matched_init_moves_b_at_loras_pace_and_reference_does_not(order: int, tensor_rank: int) -> None:
    """Adam's first step moves LoRA's zero B by ``lr`` per entry; the matched leaves move B as far.

    The reference init's leaves move it 40x (N = 2) to 10^5x (N = 4) less: the cause of the
    stuck TLoRA-based methods (docs: training dynamics).
    """
    summed = lambda bank: bank.summed_matrices()  # noqa: E731
    mixed = lambda bank: bank.order_mixed_matrices(torch.ones(order, tensor_rank, dtype=torch.float64))  # noqa: E731
    torch.manual_seed(0)
    matched = TLoRABank(384, 384, 8, tensor_rank, order, dtype=torch.float64)
    assert 0.5 < _first_adam_step_of_b(matched, summed) < 2.0
    leaves = TLoRABank(384, 384, 8, tensor_rank, order, mixing="leaves", dtype=torch.float64)
    assert 0.5 < _first_adam_step_of_b(leaves, mixed) < 2.0
    reference = TLoRABank(384, 384, 8, tensor_rank, order, init="reference", dtype=torch.float64)
    assert _first_adam_step_of_b(reference, summed) < 0.1


@pytest.mark.parametrize("mixing", ["ranks", "leaves"])
@pytest.mark.parametrize("expert_weight", [1.0, 1 / 8])
@pytest.mark.parametrize("order", [2, 3, 4])
def test_matched_init_solves_its_equations(mixing: str, expert_weight: float, order: int) -> None:
    """Stored leaves of std s, scale g: A's std is LoRA's, B's first step LoRA's (the docstring's equations)."""
    sigma, rank, u = 1.0 / math.sqrt(3.0 * 384), 8, expert_weight
    init = matched_init(384, rank, order, mixing=mixing, expert_weight=u)
    s = init.down_bound / math.sqrt(3.0)
    assert init.up_bound == init.down_bound
    # stored at sqrt(N) sigma; mixed leaves R ** (1/4) larger (their R leaves move in lockstep)
    assert s == pytest.approx(math.sqrt(order) * (rank**0.25 if mixing == "leaves" else 1.0) * sigma)
    g_a, g_b = init.down_scale, init.up_scale
    if mixing == "ranks":
        assert u * math.sqrt(rank) * (g_a * s) ** order == pytest.approx(sigma)
        assert u * math.sqrt(rank) * (g_b * s) ** (order - 1) * g_b == pytest.approx(1.0)
    else:
        assert (u * math.sqrt(rank) * g_a * s) ** order == pytest.approx(sigma)
        assert (u * math.sqrt(rank) * g_b * s) ** (order - 1) * u * rank * g_b == pytest.approx(1.0)


def test_matched_init_is_loras_at_order_one_and_rank_one() -> None:
    init = matched_init(384, 1, 1)
    assert init.down_scale == pytest.approx(1.0) and init.up_scale == pytest.approx(1.0)
    assert init.down_bound == pytest.approx(1.0 / math.sqrt(384))  # nn.Linear's Kaiming-uniform bound
    with pytest.raises(ValueError, match="mixing"):
        matched_init(384, 8, 2, mixing="orders")
    with pytest.raises(ValueError, match="expert_weight"):
        matched_init(384, 8, 2, expert_weight=0.0)


@pytest.mark.parametrize(
    "dtype, tol",
    [(torch.float32, 1e-5), (torch.bfloat16, 3e-2), (torch.float16, 3e-3)],
)
@given(d_in=dims, d_out=dims, order=orders, seed=seeds)
def test_low_precision_matches_float64(dtype, tol, d_in, d_out, order, seed) -> None:
    bank = TLoRABank(d_in, d_out, 2, 2, order, dtype=dtype)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        for parameter in bank.parameters():
            parameter.copy_(torch.rand(parameter.shape, generator=generator) * 2 - 1)
    down, up = bank.summed_matrices()
    assert down.dtype == dtype and up.dtype == dtype
    reference = TLoRABank(d_in, d_out, 2, 2, order, dtype=torch.float64)
    with torch.no_grad():
        for mine, theirs in zip(reference.parameters(), bank.parameters()):
            mine.copy_(theirs.double())
    expected_down, expected_up = reference_matrices(reference)
    scale = 2**order  # products of up to 2 ranks of N entries of magnitude <= 1
    torch.testing.assert_close(down.double(), expected_down, rtol=tol, atol=tol * scale)
    torch.testing.assert_close(up.double(), expected_up, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(d_in=0), "d_in"),
        (dict(d_out=0), "d_out"),
        (dict(lora_rank=0), "lora_rank"),
        (dict(tensor_rank=0), "tensor_rank"),
        (dict(tensor_rank=-1), "tensor_rank"),
        (dict(order=0), "order"),
        (dict(order=2.0), "order"),
        (dict(init="kaiming"), "init"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs: dict, name: str) -> None:
    arguments = dict(d_in=4, d_out=4, lora_rank=2, tensor_rank=2, order=2) | kwargs
    with pytest.raises(ValueError, match=name):
        TLoRABank(**arguments)
