"""tensorly interop: to_cp round trip and from_dense fitting."""

import pytest
import tensorly
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tensoradapt.algebra import EntangledTensor, leaf_size


@given(dim=st.integers(1, 80), rank=st.integers(1, 4), order=st.integers(1, 4))
@settings(max_examples=25)
def test_to_cp_round_trips_through_tensorly(dim, rank, order):
    tensor = EntangledTensor(dim, rank, order, dtype=torch.float64)
    with tensorly.backend_context("pytorch"):
        rebuilt = tensorly.cp_to_tensor(tensor.to_cp())
    torch.testing.assert_close(rebuilt, tensor.full().detach())
    torch.testing.assert_close(rebuilt.reshape(-1)[:dim], tensor().detach())


def test_to_cp_refuses_batches_and_normalized_products():
    with pytest.raises(ValueError, match="unbatched"):
        EntangledTensor(8, 1, 2, batch_shape=(2,)).to_cp()
    with pytest.raises(ValueError, match="normalize_outer"):
        EntangledTensor(8, 1, 2, normalize_outer=True).to_cp()


@given(dim=st.integers(1, 60), rank=st.integers(1, 3))
@settings(max_examples=15)
def test_from_dense_order_one_is_exact(dim, rank):
    vectors = torch.randn(3, dim, dtype=torch.float64)
    module, error = EntangledTensor.from_dense(vectors, rank, 1)
    assert error < 1e-12
    torch.testing.assert_close(module().detach(), vectors)


@given(dim=st.integers(2, 120), extra=st.integers(0, 3))
@settings(max_examples=15)
def test_from_dense_order_two_with_rank_at_least_q_is_exact(dim, extra):
    vectors = torch.randn(2, dim, dtype=torch.float64)
    rank = leaf_size(dim, 2) + extra
    module, error = EntangledTensor.from_dense(vectors, rank, 2)
    assert error < 1e-10
    torch.testing.assert_close(module().detach(), vectors)


def test_from_dense_higher_order_error_is_reported_and_falls_with_rank():
    torch.manual_seed(0)
    vectors = torch.randn(1, 64, dtype=torch.float64)
    errors = []
    for rank in (1, 4, 16):
        module, error = EntangledTensor.from_dense(vectors, rank, 3)
        measured = (torch.linalg.vector_norm(module().detach() - vectors) / torch.linalg.vector_norm(vectors)).item()
        assert abs(measured - error) < 1e-9
        errors.append(error)
    assert 0 < errors[-1] < errors[0] <= 1.0 + 1e-9


def test_from_dense_keeps_dtype_and_recovers_a_low_rank_vector():
    tensor = EntangledTensor(27, 2, 3, dtype=torch.float64)
    target = tensor().detach()
    module, error = EntangledTensor.from_dense(target.float(), 2, 3)
    assert module.leaves.dtype == torch.float32
    assert error < 1e-4


def test_from_dense_validates_arguments():
    with pytest.raises(ValueError, match="rank"):
        EntangledTensor.from_dense(torch.randn(4, 8), 0, 2)
    with pytest.raises(ValueError, match="floating"):
        EntangledTensor.from_dense(torch.ones(4, 8, dtype=torch.int64), 1, 2)
