"""materialize, kron_chain and the planned contraction against a chained torch.kron reference."""

import opt_einsum
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tensoradapt.algebra import kron_chain, leaf_size, materialize, planned_expression, product_equation

PRIMES = [2, 3, 5, 7, 11, 13, 17, 31, 37, 61, 97, 101, 127]
POWERS = [1, 4, 8, 9, 16, 25, 27, 32, 64, 81, 100, 125, 128]
dims = st.one_of(st.sampled_from(PRIMES + POWERS), st.integers(1, 130))
batch_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


def random_leaves(dim: int, rank: int, order: int, batch_shape: tuple[int, ...], *, slack: int = 0,
                  dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    """``(*batch_shape, rank, order, q + slack)`` standard normal leaves, ``q = leaf_size(dim, order)``."""
    generator = torch.Generator().manual_seed(seed)
    q = leaf_size(dim, order) + slack
    return torch.randn(*batch_shape, rank, order, q, generator=generator, dtype=torch.float64).to(dtype)


def test_product_equation_examples():
    assert product_equation(1, keep_rank=False) == "bra->ba"
    assert product_equation(2, keep_rank=False) == "bra,brc->bac"
    assert product_equation(3, keep_rank=True) == "bra,brc,brd->bracd"


@given(order=st.integers(1, 40), keep_rank=st.booleans())
def test_product_equation_has_one_distinct_leaf_axis_per_order(order, keep_rank):
    inputs, output = product_equation(order, keep_rank=keep_rank).split("->")
    operands = inputs.split(",")
    assert len(operands) == order
    assert all(len(op) == 3 and op[:2] == "br" for op in operands)
    leaf_axes = [op[2] for op in operands]
    assert len(set(leaf_axes)) == order and not {"b", "r"} & set(leaf_axes)
    assert output == ("br" if keep_rank else "b") + "".join(leaf_axes)


@given(dim=dims, rank=st.integers(1, 4), order=st.integers(1, 6), batch_shape=batch_shapes,
       slack=st.integers(0, 1), keep_rank=st.booleans(), seed=st.integers(0, 2**16))
def test_materialize_is_the_sum_of_kron_chains_cut_to_dim(kron_reference, dim, rank, order, batch_shape, slack,
                                                          keep_rank, seed):
    leaves = random_leaves(dim, rank, order, batch_shape, slack=slack, seed=seed)
    out = materialize(leaves, dim, keep_rank=keep_rank)
    expected = kron_reference(leaves, dim, keep_rank=keep_rank)
    assert out.shape == expected.shape == (*batch_shape, *((rank,) if keep_rank else ()), dim)
    torch.testing.assert_close(out, expected)


@given(dim=dims, rank=st.integers(1, 4), order=st.integers(1, 5), batch_shape=batch_shapes,
       keep_rank=st.booleans(), per_batch=st.booleans(), seed=st.integers(0, 2**16))
def test_rank_weights_scale_each_simple_tensor(kron_reference, dim, rank, order, batch_shape, keep_rank, per_batch,
                                               seed):
    """``rank_weights`` (shared ``(rank,)`` or per batch entry) scale each rank's term: ``sum_r w_r (x)_n v_rn``."""
    leaves = random_leaves(dim, rank, order, batch_shape, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    weights = torch.randn(*(batch_shape if per_batch else ()), rank, generator=generator, dtype=torch.float64)
    out = materialize(leaves, dim, keep_rank=keep_rank, rank_weights=weights)
    terms = kron_reference(leaves, dim, keep_rank=True)  # (*batch, rank, dim)
    weighted = terms * weights.expand(*batch_shape, rank).unsqueeze(-1)
    torch.testing.assert_close(out, weighted if keep_rank else weighted.sum(-2))


def test_rank_weights_refuse_normalize_outer():
    with pytest.raises(ValueError, match="rank_weights"):
        materialize(random_leaves(8, 2, 2, (3,)), 8, normalize_outer=True, rank_weights=torch.ones(2))


@given(dim=dims, rank=st.integers(1, 3), order=st.integers(1, 5), batch_shape=batch_shapes,
       keep_rank=st.booleans(), seed=st.integers(0, 2**16))
@settings(max_examples=25)
def test_normalize_outer_is_layer_norm_after_every_pairwise_kron(kron_reference, dim, rank, order, batch_shape,
                                                                 keep_rank, seed):
    leaves = random_leaves(dim, rank, order, batch_shape, seed=seed)
    out = materialize(leaves, dim, keep_rank=keep_rank, normalize_outer=True)
    torch.testing.assert_close(out, kron_reference(leaves, dim, keep_rank=keep_rank, normalize=True))


@given(dim=dims, rank=st.integers(1, 4), batch_shape=batch_shapes, seed=st.integers(0, 2**16))
def test_order_one_is_the_dense_vector_summed_over_ranks(dim, rank, batch_shape, seed):
    leaves = random_leaves(dim, rank, 1, batch_shape, seed=seed)
    torch.testing.assert_close(materialize(leaves, dim), leaves[..., :, 0, :dim].sum(-2))


@given(rank=st.integers(1, 3), order=st.integers(1, 5), q=st.integers(1, 5), normalize=st.booleans(),
       seed=st.integers(0, 2**16))
@settings(max_examples=25)
def test_kron_chain_keeps_every_rank_uncut(kron_reference, rank, order, q, normalize, seed):
    leaves = torch.randn(2, rank, order, q, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = kron_chain(leaves, normalize_outer=normalize)
    torch.testing.assert_close(out, kron_reference(leaves, q**order, keep_rank=True, normalize=normalize))


@given(dim=dims, rank=st.integers(1, 3), order=st.integers(1, 5), normalize=st.booleans(), seed=st.integers(0, 2**16))
@settings(max_examples=25)
def test_gradients_match_the_reference(kron_reference, dim, rank, order, normalize, seed):
    leaves = random_leaves(dim, rank, order, (2,), seed=seed).requires_grad_()
    upstream = torch.randn(2, dim, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    (planned,) = torch.autograd.grad((materialize(leaves, dim, normalize_outer=normalize) * upstream).sum(), leaves)
    (plain,) = torch.autograd.grad((kron_reference(leaves, dim, normalize=normalize) * upstream).sum(), leaves)
    torch.testing.assert_close(planned, plain)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12), (torch.bfloat16, 5e-2)])
@given(dim=st.sampled_from([1, 7, 31, 64, 97, 125]), rank=st.integers(1, 3), order=st.integers(1, 4),
       seed=st.integers(0, 2**16))
@settings(max_examples=15)
def test_dtypes_against_a_float64_reference(kron_reference, dtype, tolerance, dim, rank, order, seed):
    leaves = random_leaves(dim, rank, order, (2,), dtype=dtype, seed=seed)
    out = materialize(leaves, dim)
    assert out.dtype == dtype
    expected = kron_reference(leaves.double(), dim)
    scale = expected.abs().max().clamp_min(1e-6)
    assert (out.double() - expected).abs().max() / scale < tolerance


def test_the_plan_is_cached_per_equation_and_shapes():
    planned_expression.cache_clear()
    leaves = torch.randn(3, 5, 3, 4)
    materialize(leaves, 50)
    materialize(leaves * 2, 60)
    info = planned_expression.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    materialize(torch.randn(2, 5, 3, 4), 50)
    materialize(leaves, 50, keep_rank=True)
    assert planned_expression.cache_info().misses == 3


def test_contract_expression_runs_once_for_repeated_calls(monkeypatch):
    built = []
    original = opt_einsum.contract_expression

    def counting(equation, *shapes, **kwargs):
        built.append((equation, shapes))
        return original(equation, *shapes, **kwargs)

    monkeypatch.setattr(opt_einsum, "contract_expression", counting)
    planned_expression.cache_clear()
    leaves = torch.randn(1, 3, 4, 5, requires_grad=True)
    for _ in range(5):
        materialize(leaves, 600).sum().backward()
    materialize(torch.randn(4, 3, 4, 5).reshape(2, 2, 3, 4, 5), 600)
    assert built == [("bra,brc,brd,bre->bacde", ((1, 3, 5),) * 4), ("bra,brc,brd,bre->bacde", ((4, 3, 5),) * 4)]


def test_too_small_leaves_and_bad_shapes_raise():
    with pytest.raises(ValueError, match="fewer than dim=10"):
        materialize(torch.randn(1, 2, 3), 10)
    with pytest.raises(ValueError, match="fewer than dim=126"):
        materialize(torch.randn(4, 2, 3, 5), 126)
    with pytest.raises(ValueError, match="shape"):
        materialize(torch.randn(3, 3), 3)
