"""EntangledTensor and materialize against a plain chained-kron reference."""

from functools import reduce

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tensoradapt.algebra import EntangledTensor, leaf_size, materialize, planned_expression

PRIMES = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 61, 97, 101]
POWERS = [1, 4, 8, 9, 16, 25, 27, 32, 49, 64, 81, 100, 125, 128, 256]


def reference(leaves: torch.Tensor, dim: int, *, keep_rank: bool = False, normalize: bool = False) -> torch.Tensor:
    """Per batch entry and rank: chained torch.kron of the leaves, then summed over ranks, cut."""
    *batch, rank, order, _ = leaves.shape
    flat = leaves.reshape(-1, rank, order, leaves.shape[-1])
    rows = []
    for entry in flat:
        products = []
        for r in range(rank):
            product = entry[r, 0]
            for n in range(1, order):
                product = torch.kron(product, entry[r, n])
                if normalize:
                    product = F.layer_norm(product, product.shape)
            products.append(product[:dim])
        stacked = torch.stack(products)
        rows.append(stacked if keep_rank else stacked.sum(0))
    return torch.stack(rows).reshape(*batch, *((rank,) if keep_rank else ()), dim)


dims = st.one_of(st.sampled_from(PRIMES + POWERS), st.integers(1, 130))
batch_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


@given(dim=dims, rank=st.integers(1, 4), order=st.integers(1, 6), batch_shape=batch_shapes, data=st.data())
def test_forward_is_sum_of_kron_chains_cut_to_dim(dim, rank, order, batch_shape, data):
    if leaf_size(dim, order) ** order > 5000:
        order = 2
    tensor = EntangledTensor(dim, rank, order, batch_shape=batch_shape, dtype=torch.float64)
    keep_rank = data.draw(st.booleans())
    out = tensor(keep_rank=keep_rank)
    expected = reference(tensor.leaves.detach(), dim, keep_rank=keep_rank)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected)


@given(dim=dims, rank=st.integers(1, 3), order=st.integers(2, 4))
@settings(max_examples=20)
def test_normalize_outer_matches_layer_norm_after_every_pairwise_product(dim, rank, order):
    tensor = EntangledTensor(dim, rank, order, normalize_outer=True, dtype=torch.float64)
    expected = reference(tensor.leaves.detach(), dim, normalize=True)
    torch.testing.assert_close(tensor(), expected)


@given(dim=dims, rank=st.integers(1, 4))
def test_order_one_is_the_dense_vector(dim, rank):
    tensor = EntangledTensor(dim, rank, 1, dtype=torch.float64)
    assert tensor.leaf_size == dim
    torch.testing.assert_close(tensor(), tensor.leaves.detach()[:, 0, :].sum(0))


def test_parameter_count_of_the_readme_example():
    tensor = EntangledTensor(dim=512, rank=8, order=2)
    assert sum(p.numel() for p in tensor.parameters()) == 8 * 2 * 23 == tensor.num_parameters


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12), (torch.bfloat16, 5e-2)])
@given(dim=st.sampled_from([7, 31, 64, 97]), rank=st.integers(1, 3), order=st.integers(1, 3))
@settings(max_examples=10)
def test_dtypes_match_a_float64_reference(dtype, tolerance, dim, rank, order):
    tensor = EntangledTensor(dim, rank, order, dtype=dtype)
    out = tensor()
    assert out.dtype == dtype
    expected = reference(tensor.leaves.detach().double(), dim)
    scale = expected.abs().max().clamp_min(1e-6)
    assert ((out.double() - expected).abs().max() / scale) < tolerance


def test_planned_contraction_is_built_once_per_shape():
    planned_expression.cache_clear()
    leaves = torch.randn(3, 5, 3, 4)
    materialize(leaves, 50)
    materialize(leaves * 2, 50)
    info = planned_expression.cache_info()
    assert info.misses == 1 and info.hits == 1
    materialize(torch.randn(2, 5, 3, 4), 50)
    assert planned_expression.cache_info().misses == 2


def test_full_is_the_uncut_tensor():
    tensor = EntangledTensor(20, 2, 3, dtype=torch.float64)
    q = tensor.leaf_size
    full = tensor.full()
    assert full.shape == (q, q, q)
    torch.testing.assert_close(full.reshape(-1)[:20], tensor())


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(dim=0, rank=1, order=1), "dim"),
        (dict(dim=4, rank=0, order=1), "rank"),
        (dict(dim=4, rank=1, order=0), "order"),
        (dict(dim=4, rank=True, order=1), "rank"),
        (dict(dim=4.0, rank=1, order=1), "dim"),
    ],
)
def test_bad_sizes_raise_naming_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EntangledTensor(**kwargs)


def test_non_float_dtype_and_small_leaves_raise():
    with pytest.raises(ValueError, match="dtype"):
        EntangledTensor(8, 1, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match="fewer than dim"):
        materialize(torch.randn(1, 2, 3), 10)
    with pytest.raises(ValueError, match="shape"):
        materialize(torch.randn(3, 3), 3)


def test_unknown_init_raises():
    with pytest.raises(ValueError, match="init"):
        EntangledTensor(8, 1, 2, init="xavier")


def test_chained_kron_reference_agrees_with_functools_reduce():
    leaves = torch.randn(1, 3, 5, dtype=torch.float64)
    expected = reduce(torch.kron, list(leaves[0]))[:100]
    torch.testing.assert_close(reference(leaves, 100), expected)
