"""tensorly interop: to_cp round trip and from_dense fitting."""

import math

import pytest
import tensorly
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tensoradapt.algebra import EntangledTensor, fit_leaves, leaf_size, relative_error


@given(dim=st.integers(1, 80), rank=st.integers(1, 4), order=st.integers(1, 5))
@settings(max_examples=25)
def test_to_cp_round_trips_through_tensorly(kron_reference, dim, rank, order):
    tensor = EntangledTensor(dim, rank, order, dtype=torch.float64)
    cp = tensor.to_cp()
    assert cp.rank == rank and [f.shape for f in cp.factors] == [(tensor.leaf_size, rank)] * order
    with tensorly.backend_context("pytorch"):
        rebuilt = tensorly.cp_to_tensor(cp)
    torch.testing.assert_close(rebuilt, tensor.full().detach())
    torch.testing.assert_close(rebuilt.reshape(-1)[:dim], kron_reference(tensor.leaves.detach(), dim))


def test_to_cp_refuses_batches_and_normalized_products():
    with pytest.raises(ValueError, match="unbatched"):
        EntangledTensor(8, 1, 2, batch_shape=(2,)).to_cp()
    with pytest.raises(ValueError, match="normalize_outer"):
        EntangledTensor(8, 1, 2, normalize_outer=True).to_cp()


@given(dim=st.integers(1, 60), rank=st.integers(1, 3), batch_shape=st.sampled_from([(), (3,), (2, 2)]))
@settings(max_examples=15)
def test_from_dense_order_one_is_exact(dim, rank, batch_shape):
    vectors = torch.randn(*batch_shape, dim, dtype=torch.float64)
    module, error = EntangledTensor.from_dense(vectors, rank, 1)
    assert module.batch_shape == batch_shape and module.leaf_size == dim
    assert error < 1e-12
    torch.testing.assert_close(module().detach(), vectors)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@given(dim=st.integers(2, 120), extra=st.integers(0, 3))
@settings(max_examples=15)
def test_from_dense_order_two_with_rank_at_least_q_is_exact(dtype, dim, extra):
    vectors = torch.randn(2, dim, dtype=dtype)
    rank = leaf_size(dim, 2) + extra
    module, error = EntangledTensor.from_dense(vectors, rank, 2)
    assert module.leaves.dtype == dtype
    assert error < 1e-6
    torch.testing.assert_close(module().detach(), vectors)


@given(dim=st.integers(4, 120))
@settings(max_examples=15)
def test_from_dense_order_two_error_falls_with_rank(dim):
    vectors = torch.randn(dim, dtype=torch.float64)
    errors = [EntangledTensor.from_dense(vectors, rank, 2)[1] for rank in range(1, leaf_size(dim, 2) + 1)]
    assert all(later <= earlier + 1e-12 for earlier, later in zip(errors, errors[1:]))
    assert errors[-1] < 1e-10


@pytest.mark.filterwarnings("ignore:Trying to compute SVD with n_eigenvecs")  # rank 9 > q: tensorly pads its SVD init
@pytest.mark.parametrize("order,dim", [(3, 64), (4, 81)])
def test_from_dense_higher_orders_report_a_finite_error_that_falls_with_rank(order, dim):
    vectors = torch.randn(2, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = []
    for rank in (1, 3, 9):
        module, error = EntangledTensor.from_dense(vectors, rank, order, n_iter_max=200)
        assert math.isfinite(error) and 0 < error < 1.0
        measured = relative_error(module().detach(), vectors)
        assert math.isclose(measured, error, rel_tol=1e-9, abs_tol=1e-12)
        errors.append(error)
    assert errors[0] >= errors[1] >= errors[2]
    assert errors[2] < errors[0]


def test_from_dense_keeps_dtype_and_recovers_a_low_rank_vector():
    tensor = EntangledTensor(27, 2, 3, dtype=torch.float64)
    target = tensor().detach()
    module, error = EntangledTensor.from_dense(target.float(), 2, 3)
    assert module.leaves.dtype == torch.float32
    assert error < 1e-4


def test_fit_leaves_returns_leaves_in_the_materialize_layout():
    vectors = torch.randn(2, 3, 10, dtype=torch.float64)
    leaves, error = fit_leaves(vectors, 4, 2)
    assert leaves.shape == (2, 3, 4, 2, leaf_size(10, 2))
    assert error < 1e-10


def test_relative_error():
    target = torch.tensor([3.0, 4.0])
    assert relative_error(target, target) == 0
    assert math.isclose(relative_error(torch.zeros(2), target), 1.0)
    assert math.isclose(relative_error(torch.tensor([3.0, 5.0]), target), 0.2)
    assert relative_error(torch.zeros(2), torch.zeros(2)) == 0


@pytest.mark.parametrize(
    "vectors,rank,order,name",
    [(torch.randn(4, 8), 0, 2, "rank"), (torch.randn(4, 8), True, 2, "rank"), (torch.randn(4, 8), 2, 0, "order"),
     (torch.ones(4, 8, dtype=torch.int64), 1, 2, "floating"), (torch.randn(4, 0), 1, 2, "dim")],
)
def test_from_dense_validates_arguments(vectors, rank, order, name):
    with pytest.raises(ValueError, match=name):
        EntangledTensor.from_dense(vectors, rank, order)
