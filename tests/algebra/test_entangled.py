"""EntangledTensor: forward, full, parameter counts and argument checks against plain references."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tensoradapt.algebra import EntangledTensor

PRIMES = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 61, 97, 101]
POWERS = [1, 4, 8, 9, 16, 25, 27, 32, 49, 64, 81, 100, 125, 128, 256]
dims = st.one_of(st.sampled_from(PRIMES + POWERS), st.integers(1, 130))
batch_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


@given(dim=dims, rank=st.integers(1, 4), order=st.integers(1, 6), batch_shape=batch_shapes, keep_rank=st.booleans())
def test_forward_is_the_sum_of_kron_chains_cut_to_dim(kron_reference, dim, rank, order, batch_shape, keep_rank):
    tensor = EntangledTensor(dim, rank, order, batch_shape=batch_shape, dtype=torch.float64)
    assert tensor.leaves.shape == (*batch_shape, rank, order, tensor.leaf_size)
    out = tensor(keep_rank=keep_rank)
    expected = kron_reference(tensor.leaves.detach(), dim, keep_rank=keep_rank)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected)


@given(dim=dims, rank=st.integers(1, 3), order=st.integers(2, 4), batch_shape=batch_shapes)
@settings(max_examples=20)
def test_normalize_outer_module_matches_the_layer_norm_reference(kron_reference, dim, rank, order, batch_shape):
    tensor = EntangledTensor(dim, rank, order, batch_shape=batch_shape, normalize_outer=True, dtype=torch.float64)
    torch.testing.assert_close(tensor(), kron_reference(tensor.leaves.detach(), dim, normalize=True))


@given(dim=dims, rank=st.integers(1, 4), batch_shape=batch_shapes)
def test_order_one_is_the_dense_vector(dim, rank, batch_shape):
    tensor = EntangledTensor(dim, rank, 1, batch_shape=batch_shape, dtype=torch.float64)
    assert tensor.leaf_size == dim
    torch.testing.assert_close(tensor(), tensor.leaves.detach()[..., 0, :].sum(-2))


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12), (torch.bfloat16, 5e-2)])
@given(dim=st.sampled_from([1, 7, 31, 64, 97]), rank=st.integers(1, 3), order=st.integers(1, 4))
@settings(max_examples=10)
def test_dtypes_match_a_float64_reference(kron_reference, dtype, tolerance, dim, rank, order):
    tensor = EntangledTensor(dim, rank, order, dtype=dtype)
    assert tensor.leaves.dtype == dtype
    out = tensor()
    assert out.dtype == dtype
    expected = kron_reference(tensor.leaves.detach().double(), dim)
    scale = expected.abs().max().clamp_min(1e-6)
    assert (out.double() - expected).abs().max() / scale < tolerance


@given(dim=dims, rank=st.integers(1, 3), order=st.integers(1, 4), batch_shape=batch_shapes)
@settings(max_examples=20)
def test_full_is_the_uncut_tensor(kron_reference, dim, rank, order, batch_shape):
    tensor = EntangledTensor(dim, rank, order, batch_shape=batch_shape, dtype=torch.float64)
    q = tensor.leaf_size
    full = tensor.full()
    assert full.shape == (*batch_shape, *(q,) * order)
    torch.testing.assert_close(full.reshape(*batch_shape, -1), kron_reference(tensor.leaves.detach(), q**order))
    torch.testing.assert_close(full.reshape(*batch_shape, -1)[..., :dim], tensor())


@pytest.mark.parametrize(
    "dim,rank,order,batch_shape,expected",
    [(512, 8, 2, (), 8 * 2 * 23), (2048, 1, 2, (16,), 16 * 2 * 46), (5120, 8, 4, (16,), 16 * 8 * 4 * 9),
     (97, 3, 1, (2, 5), 10 * 3 * 97), (1, 4, 6, (), 4 * 6)],
)
def test_parameter_counts(dim, rank, order, batch_shape, expected):
    tensor = EntangledTensor(dim, rank, order, batch_shape=batch_shape)
    assert tensor.num_parameters == expected == sum(p.numel() for p in tensor.parameters())


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(dim=0, rank=1, order=1), "dim"),
        (dict(dim=-2, rank=1, order=1), "dim"),
        (dict(dim=4.0, rank=1, order=1), "dim"),
        (dict(dim=True, rank=1, order=1), "dim"),
        (dict(dim=4, rank=0, order=1), "rank"),
        (dict(dim=4, rank=True, order=1), "rank"),
        (dict(dim=4, rank=2.0, order=1), "rank"),
        (dict(dim=4, rank=1, order=0), "order"),
        (dict(dim=4, rank=1, order=False), "order"),
        (dict(dim=4, rank=1, order=1, batch_shape=(2, 0)), "batch_shape"),
        (dict(dim=4, rank=1, order=1, init="xavier"), "init"),
        (dict(dim=4, rank=1, order=1, dtype=torch.int64), "dtype"),
        (dict(dim=4, rank=1, order=1, dtype=torch.bool), "dtype"),
    ],
)
def test_bad_arguments_raise_naming_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EntangledTensor(**kwargs)


def test_leaves_are_the_only_trainable_parameter_and_are_on_the_requested_device():
    tensor = EntangledTensor(30, 2, 3, batch_shape=(4,), device="cpu")
    assert [name for name, _ in tensor.named_parameters()] == ["leaves"]
    assert tensor.leaves.device.type == "cpu" and tensor.leaves.requires_grad
    assert "leaf_size=4" in repr(tensor)
