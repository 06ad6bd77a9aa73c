"""Init schemes: target std, zero output, and gradients reaching every leaf."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tensoradapt.algebra import EntangledTensor

SCHEMES = [
    dict(init="normal", std=0.5),
    dict(init="uniform", std=0.5),
    dict(init="leaf_uniform", bound=0.3),
    dict(init="zero_output", std=0.5),
]


def leaf_rows_with_gradient(tensor: EntangledTensor) -> torch.Tensor:
    """Backward a random upstream gradient; True per (rank, order) leaf whose grad is non-zero."""
    upstream = torch.randn(tensor.batch_shape + (tensor.dim,), dtype=tensor.leaves.dtype)
    (tensor() * upstream).sum().backward()
    return tensor.leaves.grad.abs().sum(-1) > 0


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s["init"])
@given(dim=st.sampled_from([5, 23, 64, 101]), rank=st.integers(2, 5), order=st.integers(1, 4))
@settings(max_examples=15)
def test_every_leaf_receives_gradient(scheme, dim, rank, order):
    tensor = EntangledTensor(dim, rank, order, dtype=torch.float64, **scheme)
    assert leaf_rows_with_gradient(tensor).all()


@given(dim=st.sampled_from([9, 30, 64]), rank=st.integers(1, 3), order=st.integers(2, 4))
@settings(max_examples=10)
def test_all_zero_leaves_get_no_gradient_which_is_why_zero_output_exists(dim, rank, order):
    tensor = EntangledTensor(dim, rank, order, dtype=torch.float64)
    with torch.no_grad():
        tensor.leaves.zero_()
    assert not leaf_rows_with_gradient(tensor).any()


@given(dim=st.sampled_from([7, 40, 81, 97]), rank=st.integers(2, 8), order=st.integers(1, 4))
@settings(max_examples=20)
def test_zero_output_materialises_zero(dim, rank, order):
    tensor = EntangledTensor(dim, rank, order, init="zero_output", std=1.0, dtype=torch.float64)
    assert tensor().abs().max() < 1e-12


def test_zero_output_with_rank_one_is_refused():
    with pytest.raises(ValueError, match="rank >= 2"):
        EntangledTensor(16, 1, 2, init="zero_output")
    assert EntangledTensor(16, 1, 1, init="zero_output")().abs().max() == 0


@pytest.mark.parametrize("init", ["normal", "uniform"])
@pytest.mark.parametrize("rank,order", [(1, 2), (4, 2), (8, 3), (2, 4)])
def test_materialised_entries_have_the_target_std(init, rank, order):
    torch.manual_seed(0)
    tensor = EntangledTensor(4096, rank, order, init=init, std=0.2, batch_shape=(64,), dtype=torch.float64)
    measured = tensor().std().item()
    assert math.isclose(measured, 0.2, rel_tol=0.2)


def test_leaf_uniform_needs_a_bound_and_respects_it():
    with pytest.raises(ValueError, match="bound"):
        EntangledTensor(16, 2, 2, init="leaf_uniform")
    tensor = EntangledTensor(16, 2, 2, init="leaf_uniform", bound=0.01)
    assert tensor.leaves.abs().max() <= 0.01
