"""`fit_shared_skills`: one layer's LoRAs in fewer shared Poly skills, against dense matrices."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tensoradapt.shared_skills import fit_shared_skills


def dense_task_errors(fitted, pairs) -> tuple[float, list[float]]:
    """The relative error over the library, ``sqrt(sum_t ||A_t' B_t' - A_t B_t||^2 / sum_t ||A_t B_t||^2)``,
    and each task's (absolute where its update is zero), with every matrix built densely."""
    difference = target = 0.0
    per_task = []
    for task, pair in enumerate(pairs):
        mixed = (torch.einsum("s,sir->ir", fitted.weights[task], fitted.down)
                 @ torch.einsum("s,sro->ro", fitted.weights[task], fitted.up))
        true = torch.zeros_like(mixed) if pair is None else pair[0] @ pair[1]
        squared, norm = float((mixed - true).square().sum()), float(true.square().sum())
        difference += squared
        target += norm
        per_task.append((squared / (norm if norm > 0 else 1.0)) ** 0.5)
    return (difference / target) ** 0.5, per_task


def dense_relative_error(fitted, pairs) -> float:
    return dense_task_errors(fitted, pairs)[0]


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
        error, per_task = dense_task_errors(result, pairs)
        assert result.error == pytest.approx(error, rel=1e-6, abs=1e-7)
        assert result.task_errors.tolist() == pytest.approx(per_task, rel=1e-6, abs=1e-6)
    # The fit's objective is the mean of the tasks' squared relative errors (the unadapted task: absolute).
    assert fitted.task_errors.square().mean() <= start.task_errors.square().mean() + 1e-12
    assert 0 < fitted.error < 1


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), small=st.sampled_from([1e-2, 1e-4]))
def test_every_lora_counts_the_same_whatever_the_norm_of_its_update(seed, small):
    """Scaling one LoRA's update by ``small`` (its factors by ``sqrt(small)``) changes no task's relative
    error: the fit is of the normalised library. Seen failing with the unweighted sum of squared errors,
    which spends the skills on the large updates (a tiny-BERT LoRA's error reached 35, worse than no
    adapter's 1)."""
    generator = torch.Generator().manual_seed(seed)
    pairs = random_pairs(generator, 4, 7, 5, ranks=[2, 2, 2, 2])
    shrunk = [*pairs[:3], (pairs[3][0] * small**0.5, pairs[3][1] * small**0.5)]
    starts = [fit_shared_skills(library, 2, d_in=7, d_out=5, rank=2, steps=0) for library in (pairs, shrunk)]
    assert starts[1].task_errors.tolist() == pytest.approx(starts[0].task_errors.tolist(), rel=1e-7, abs=1e-9)
    fits = [fit_shared_skills(library, 2, d_in=7, d_out=5, rank=2, steps=100) for library in (pairs, shrunk)]
    # Refined, the two runs differ only by L-BFGS's path through rounding.
    assert fits[1].task_errors.tolist() == pytest.approx(fits[0].task_errors.tolist(), abs=1e-3)
    assert fits[1].task_errors.tolist() == pytest.approx(dense_task_errors(fits[1], shrunk)[1], rel=1e-6, abs=1e-6)
