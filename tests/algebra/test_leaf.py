"""leaf_size: the smallest q with q**order >= dim, integer-exact."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tensoradapt.algebra import integer_root_ceil, leaf_size

PRIMES = [2, 3, 5, 7, 11, 13, 97, 101, 2039, 5119, 65537, 2**31 - 1, 2**61 - 1]


@given(dim=st.integers(1, 10**15), order=st.integers(1, 12))
def test_leaf_size_is_the_smallest_sufficient_integer(dim, order):
    q = leaf_size(dim, order)
    assert q**order >= dim
    assert q == 1 or (q - 1) ** order < dim


@pytest.mark.parametrize(
    "dim,order,expected",
    [(125, 3, 5), (2**40, 8, 32), (10**12, 3, 10**4), (10**12 + 1, 3, 10**4 + 1), (10**12 - 1, 3, 10**4),
     (1, 5, 1), (2, 9, 2), (2048, 2, 46), (5120, 2, 72), (2048, 4, 7), (5120, 4, 9), (512, 2, 23), (97, 1, 97),
     (343, 3, 7)],
)
def test_known_values_including_perfect_powers(dim, order, expected):
    assert leaf_size(dim, order) == expected


def test_huge_integers_beyond_float_range_are_exact():
    # A float root would overflow (10**400) or start too far off for a unit-step search (3**130).
    assert leaf_size(3**130, 2) == 3**65
    assert leaf_size(3**130 + 1, 2) == 3**65 + 1
    assert leaf_size(10**400, 4) == 10**100


@given(base=st.integers(1, 10**30), order=st.integers(1, 8))
def test_perfect_powers_and_their_neighbours_are_exact(base, order):
    assert leaf_size(base**order, order) == base
    assert leaf_size(base**order + 1, order) == base + 1
    if base > 1 and order > 1:
        assert leaf_size(base**order - 1, order) == base


@pytest.mark.parametrize("prime", PRIMES)
@pytest.mark.parametrize("order", [1, 2, 3, 4, 8])
def test_primes(prime, order):
    q = leaf_size(prime, order)
    assert q**order >= prime > (q - 1) ** order


@given(order=st.integers(1, 50))
def test_dim_one_needs_leaves_of_size_one(order):
    assert leaf_size(1, order) == 1


@pytest.mark.parametrize(
    "dim,order,name",
    [(0, 1, "dim"), (-3, 2, "dim"), (2.5, 1, "dim"), (True, 2, "dim"), ("8", 2, "dim"),
     (5, 0, "order"), (5, -1, "order"), (5, 2.0, "order"), (5, True, "order")],
)
def test_bad_arguments_raise_naming_the_parameter(dim, order, name):
    with pytest.raises(ValueError, match=name):
        leaf_size(dim, order)


def test_integer_root_ceil_rejects_bad_values():
    with pytest.raises(ValueError, match="value"):
        integer_root_ceil(0, 2)
    with pytest.raises(ValueError, match="order"):
        integer_root_ceil(4, 0)
