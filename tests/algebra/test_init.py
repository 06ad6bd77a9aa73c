"""Init schemes: target std, zero output, and gradients reaching every leaf."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tensoradapt.algebra import INIT_SCHEMES, EntangledTensor, init_leaves_, leaf_std_for

SCHEMES = [
    dict(init="normal", std=0.5),
    dict(init="uniform", std=0.5),
    dict(init="leaf_uniform", bound=0.3),
    dict(init="zero_output", std=0.5),
    dict(init="zero_last", bound=0.3),
]
#: Schemes whose every leaf has a gradient at init; zero_last's other leaves wait one step (as LoRA's A).
LIVE_SCHEMES = [scheme for scheme in SCHEMES if scheme["init"] != "zero_last"]
batch_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


def leaf_rows_with_gradient(tensor: EntangledTensor, seed: int = 0) -> torch.Tensor:
    """Backward a random upstream gradient; True per ``(*batch, rank, order)`` leaf whose grad row is non-zero."""
    generator = torch.Generator().manual_seed(seed)
    upstream = torch.randn(tensor.batch_shape + (tensor.dim,), generator=generator, dtype=tensor.leaves.dtype)
    (tensor() * upstream).sum().backward()
    return tensor.leaves.grad.abs().sum(-1) > 0


def test_the_schemes_under_test_are_all_the_schemes():
    assert {scheme["init"] for scheme in SCHEMES} == set(INIT_SCHEMES)


@pytest.mark.parametrize("scheme", LIVE_SCHEMES, ids=lambda s: s["init"])
@given(dim=st.sampled_from([1, 5, 23, 64, 101]), order=st.integers(1, 4), batch_shape=batch_shapes, data=st.data())
@settings(max_examples=15)
def test_every_leaf_receives_gradient(scheme, dim, order, batch_shape, data):
    rank = data.draw(st.integers(2 if scheme["init"] == "zero_output" else 1, 5), label="rank")
    tensor = EntangledTensor(dim, rank, order, batch_shape=batch_shape, dtype=torch.float64, **scheme)
    assert leaf_rows_with_gradient(tensor, seed=data.draw(st.integers(0, 2**16))).all()


@given(dim=st.sampled_from([9, 30, 64]), rank=st.integers(1, 3), order=st.integers(2, 4))
@settings(max_examples=10)
def test_all_zero_leaves_get_no_gradient_which_is_why_zero_output_exists(dim, rank, order):
    # d/d leaf[r, n] of a product of order >= 2 is the product of the other leaves: all zero.
    tensor = EntangledTensor(dim, rank, order, dtype=torch.float64)
    with torch.no_grad():
        tensor.leaves.zero_()
    assert not leaf_rows_with_gradient(tensor).any()


@pytest.mark.parametrize("dtype,relative", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@given(dim=st.sampled_from([1, 7, 40, 81, 97]), rank=st.integers(2, 8), order=st.integers(1, 5),
       std=st.sampled_from([1e-3, 0.02, 1.0, 30.0]), batch_shape=batch_shapes)
@settings(max_examples=20)
def test_zero_output_materialises_zero(dtype, relative, dim, rank, order, std, batch_shape):
    tensor = EntangledTensor(dim, rank, order, init="zero_output", std=std, batch_shape=batch_shape, dtype=dtype)
    assert tensor().abs().max() <= relative * std
    if order >= 2:
        assert tensor.leaves.abs().amax(-1).min() > 0, "no leaf of zero_output is all zero"


def test_zero_output_leaves_the_origin_after_one_step():
    torch.manual_seed(0)
    tensor = EntangledTensor(50, 3, 3, init="zero_output", std=0.1, dtype=torch.float64)
    target = torch.randn(50, dtype=torch.float64)
    optimizer = torch.optim.SGD(tensor.parameters(), lr=0.1)
    loss_before = ((tensor() - target) ** 2).sum()
    loss_before.backward()
    optimizer.step()
    assert ((tensor() - target) ** 2).sum() < loss_before


@pytest.mark.parametrize("order", [2, 3, 6])
def test_zero_output_with_rank_one_is_refused(order):
    with pytest.raises(ValueError, match="rank >= 2"):
        EntangledTensor(16, 1, order, init="zero_output")


def test_zero_output_of_order_one_is_plain_zeros():
    tensor = EntangledTensor(16, 1, 1, init="zero_output")
    assert tensor.leaves.abs().max() == 0
    assert leaf_rows_with_gradient(tensor).all()


@pytest.mark.parametrize("init", ["normal", "uniform"])
@pytest.mark.parametrize("rank,order", [(1, 1), (1, 2), (4, 2), (8, 3), (2, 4)])
def test_materialised_entries_have_the_target_std(init, rank, order):
    torch.manual_seed(0)
    tensor = EntangledTensor(4096, rank, order, init=init, std=0.2, batch_shape=(64,), dtype=torch.float64)
    measured = tensor().std().item()
    assert math.isclose(measured, 0.2, rel_tol=0.2)


@given(std=st.floats(1e-4, 1e2), rank=st.integers(1, 64), order=st.integers(1, 8))
def test_leaf_std_solves_the_variance_equation(std, rank, order):
    leaf_std = leaf_std_for(std, rank, order)
    assert math.isclose(rank * leaf_std ** (2 * order), std**2, rel_tol=1e-9)


@given(dim=st.sampled_from([1, 5, 23, 64, 101]), rank=st.integers(1, 5), order=st.integers(1, 4),
       batch_shape=batch_shapes, seed=st.integers(0, 2**16))
@settings(max_examples=20)
def test_zero_last_is_zero_for_any_rank_and_every_leaf_learns_within_two_steps(dim, rank, order, batch_shape, seed):
    """The last leaves get a gradient at once; the others as soon as the last leaves have moved."""
    tensor = EntangledTensor(dim, rank, order, init="zero_last", bound=0.3, batch_shape=batch_shape, dtype=torch.float64)
    assert tensor().abs().max() == 0
    assert (tensor.leaves[..., : order - 1, :].abs().amax(-1) > 0).all()
    live = leaf_rows_with_gradient(tensor, seed=seed)
    assert live[..., order - 1].all()
    if order >= 2:
        assert not live[..., : order - 1].any()
    with torch.no_grad():
        tensor.leaves -= 0.1 * tensor.leaves.grad
    tensor.leaves.grad = None
    assert leaf_rows_with_gradient(tensor, seed=seed + 1).all()


def test_zero_last_needs_a_bound():
    with pytest.raises(ValueError, match="bound"):
        EntangledTensor(16, 1, 2, init="zero_last")


def test_leaf_uniform_needs_a_bound_and_respects_it():
    with pytest.raises(ValueError, match="bound"):
        EntangledTensor(16, 2, 2, init="leaf_uniform")
    tensor = EntangledTensor(16, 2, 2, init="leaf_uniform", bound=0.01)
    assert 0 < tensor.leaves.abs().max() <= 0.01


def test_init_leaves_is_in_place_seeded_and_checks_the_scheme():
    leaves = torch.empty(3, 2, 4)
    first = init_leaves_(leaves, "normal", generator=torch.Generator().manual_seed(7))
    assert first is leaves
    again = init_leaves_(torch.empty(3, 2, 4), "normal", generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(first, again)
    with pytest.raises(ValueError, match="xavier"):
        init_leaves_(leaves, "xavier")
