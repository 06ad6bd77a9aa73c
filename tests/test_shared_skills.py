"""`fit_shared_skills`: one layer's LoRAs in fewer shared Poly skills, against dense matrices."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tensoradapt.shared_skills import fit_shared_skills


def dense_relative_error(fitted, pairs) -> float:
    """``sqrt(sum_t ||A_t' B_t' - A_t B_t||^2 / sum_t ||A_t B_t||^2)`` with every matrix built densely."""
    difference = target = 0.0
    for task, pair in enumerate(pairs):
        mixed = (torch.einsum("s,sir->ir", fitted.weights[task], fitted.down)
                 @ torch.einsum("s,sro->ro", fitted.weights[task], fitted.up))
        true = torch.zeros_like(mixed) if pair is None else pair[0] @ pair[1]
        difference += float((mixed - true).square().sum())
        target += float(true.square().sum())
    return (difference / target) ** 0.5


def random_pairs(generator, n_tasks, d_in, d_out, ranks, missing=()):
    return [None if task in missing else (torch.randn(d_in, rank, generator=generator, dtype=torch.float64),
                                          torch.randn(rank, d_out, generator=generator, dtype=torch.float64))
            for task, rank in zip(range(n_tasks), ranks)]


@settings(max_examples=15, deadline=None)
@given(n_tasks=st.integers(2, 6), data=st.data(), d_in=st.sampled_from([3, 7, 13]), d_out=st.sampled_from([5, 11]),
       rank=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_a_library_of_mixtures_of_s_skills_is_recovered_exactly(n_tasks, data, d_in, d_out, rank, seed):
    """Tasks that are mixtures of ``S`` skills (any real weights, odd and prime dims) are held by ``S`` skills."""
    n_skills = data.draw(st.integers(1, n_tasks))
    generator = torch.Generator().manual_seed(seed)
    down = torch.randn(n_skills, d_in, rank, generator=generator, dtype=torch.float64)
    up = torch.randn(n_skills, rank, d_out, generator=generator, dtype=torch.float64)
    weights = torch.randn(n_tasks, n_skills, generator=generator, dtype=torch.float64)
    pairs = [(torch.einsum("s,sir->ir", w, down), torch.einsum("s,sro->ro", w, up)) for w in weights]
    fitted = fit_shared_skills(pairs, n_skills, d_in=d_in, d_out=d_out, rank=rank, steps=0)
    assert fitted.weights.shape == (n_tasks, n_skills) and fitted.down.shape == (n_skills, d_in, rank)
    assert dense_relative_error(fitted, pairs) < 1e-10
    assert fitted.error < 1e-6  # from Gram matrices: exact to about sqrt(float64 eps)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), n_skills=st.integers(1, 2))
def test_the_reported_error_is_the_dense_one_and_the_refinement_only_lowers_it(seed, n_skills):
    """Three unrelated LoRAs and one that leaves the layer alone, in fewer skills than the three."""
    generator = torch.Generator().manual_seed(seed)
    pairs = random_pairs(generator, 4, 7, 5, ranks=[1, 2, 2, 1], missing={2})
    start = fit_shared_skills(pairs, n_skills, d_in=7, d_out=5, rank=2, steps=0)
    fitted = fit_shared_skills(pairs, n_skills, d_in=7, d_out=5, rank=2, steps=60)
    for result in (start, fitted):
        assert result.error == pytest.approx(dense_relative_error(result, pairs), rel=1e-6, abs=1e-7)
    assert fitted.error <= start.error + 1e-12 and 0 < fitted.error < 1


def test_one_skill_per_task_is_exact_and_an_unadapted_layer_is_zero():
    generator = torch.Generator().manual_seed(0)
    pairs = random_pairs(generator, 3, 6, 4, ranks=[2, 1, 2])
    assert fit_shared_skills(pairs, 3, d_in=6, d_out=4, rank=2, steps=0).error < 1e-6
    empty = fit_shared_skills([None, None], 1, d_in=6, d_out=4, rank=2)
    assert empty.error == 0 and not empty.down.any() and not empty.up.any()
    with pytest.raises(ValueError, match="n_skills must be an integer >= 1, got 0"):
        fit_shared_skills(pairs, 0, d_in=6, d_out=4, rank=2)
    with pytest.raises(ValueError, match="steps must be >= 0, got -1"):
        fit_shared_skills(pairs, 1, d_in=6, d_out=4, rank=2, steps=-1)
