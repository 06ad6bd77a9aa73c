"""What every task router shares: Poly's weights, the relaxed-Bernoulli sample, task-id checks,
the ``average`` (modules-only, "mu") mode, ``reset`` and ``add_task``.

References are written out: ``sigmoid(z) / sum sigmoid(z)`` element by element, and
``torch.distributions.RelaxedBernoulli`` for the noisy sample (same random draw).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tensoradapt.routing import LinearRouter, MultiHeadRouter, OrderRouter, RankRouter
from tensoradapt.routing.base import normalized_sigmoid_weights, relaxed_bernoulli_rsample

skills = st.integers(1, 6)
tasks = st.integers(1, 5)
seeds = st.integers(0, 2**16)


def plain_poly_weights(row: torch.Tensor) -> torch.Tensor:
    """``sigmoid(z_s) / (sum_s' sigmoid(z_s') + 1e-12)`` with a Python loop over the skills.

    The ``1e-12`` guard is Poly's reference code (and PEFT's); it shows when every sigmoid is tiny.
    """
    sig = [1.0 / (1.0 + math.exp(-float(z))) for z in row]
    total = sum(sig) + 1e-12
    return torch.tensor([v / total for v in sig], dtype=torch.float64)


def random_logits(router, seed: int, scale: float = 3.0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        router.logits.copy_(torch.randn(router.logits.shape, generator=generator, dtype=router.logits.dtype) * scale)
    return router


@given(n_tasks=tasks, n_skills=skills, seed=seeds)
def test_eval_weights_are_normalised_sigmoids(n_tasks: int, n_skills: int, seed: int) -> None:
    router = random_logits(LinearRouter(n_tasks, n_skills, dtype=torch.float64), seed).eval()
    for t in range(n_tasks):
        weights = router.weights(t)
        assert weights.shape == (n_skills,)
        torch.testing.assert_close(weights, plain_poly_weights(router.logits[t].detach()), rtol=1e-9, atol=1e-12)
    batch = torch.tensor([t % n_tasks for t in range(7)])
    stacked = router.weights(batch)
    assert stacked.shape == (7, n_skills)
    for row, t in enumerate(batch.tolist()):
        torch.testing.assert_close(stacked[row], router.weights(t))
    torch.testing.assert_close(router.weights(torch.tensor(n_tasks - 1)), router.weights(n_tasks - 1))


@given(n_tasks=tasks, n_skills=skills, seed=seeds)
def test_noise_none_gives_the_sigmoid_in_training(n_tasks: int, n_skills: int, seed: int) -> None:
    router = random_logits(LinearRouter(n_tasks, n_skills, noise="none", dtype=torch.float64), seed).train()
    for t in range(n_tasks):
        torch.testing.assert_close(router.weights(t), plain_poly_weights(router.logits[t].detach()))


@given(n_tasks=tasks, n_skills=skills, seed=seeds, temperature=st.sampled_from([0.3, 1.0, 2.5]))
def test_training_samples_are_relaxed_bernoulli_in_0_1_and_normalised(n_tasks, n_skills, seed, temperature) -> None:
    router = LinearRouter(n_tasks, n_skills, temperature=temperature, dtype=torch.float64)
    random_logits(router, seed).train()
    ids = torch.arange(n_tasks).repeat(3)
    torch.manual_seed(seed)
    weights = router.weights(ids)
    assert weights.shape == (3 * n_tasks, n_skills)
    assert ((weights > 0) & (weights <= 1)).all()
    # Same draw as torch.distributions: the sample divided by its sum (+ 1e-12, as Poly's reference
    # code and PEFT guard the division).
    torch.manual_seed(seed)
    distribution = torch.distributions.RelaxedBernoulli(
        torch.tensor(temperature, dtype=torch.float64), logits=router.logits.detach()[ids]
    )
    sample = distribution.rsample()
    expected = sample / (sample.sum(-1, keepdim=True) + 1e-12)
    torch.testing.assert_close(weights, expected, rtol=1e-9, atol=1e-12)
    # Normalised wherever the sample is not vanishingly small (then the 1e-12 guard shows).
    visible = sample.sum(-1) > 1e-4  # the guard then moves the sum by < 1e-8
    torch.testing.assert_close(weights.sum(-1)[visible], torch.ones_like(weights.sum(-1)[visible]))


@given(seed=seeds, temperature=st.sampled_from([0.5, 1.0, 3.0]), shape=st.sampled_from([(1,), (4,), (3, 5)]))
def test_relaxed_bernoulli_rsample_equals_torch_distributions(seed, temperature, shape) -> None:
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 4
    torch.manual_seed(seed)
    mine = relaxed_bernoulli_rsample(logits, temperature)
    torch.manual_seed(seed)
    theirs = torch.distributions.RelaxedBernoulli(torch.tensor(temperature), logits=logits).rsample()
    torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    assert ((mine > 0) & (mine < 1)).all()


def test_training_noise_reaches_the_logits_and_varies() -> None:
    router = LinearRouter(2, 4).train()
    first = router.weights(1)
    second = router.weights(1)
    assert not torch.equal(first, second)
    first.pow(2).sum().backward()
    assert router.logits.grad[1].abs().sum() > 0 and router.logits.grad[0].abs().sum() == 0


@pytest.mark.parametrize("training", [False, True])
def test_normalized_weights_of_a_single_skill_are_one(training: bool) -> None:
    logits = torch.randn(5, 1)
    weights = normalized_sigmoid_weights(logits, training=training, noise="relaxed_bernoulli", temperature=1.0)
    torch.testing.assert_close(weights, torch.ones(5, 1))


@pytest.mark.parametrize(
    "router",
    [
        lambda: LinearRouter(3, 5),
        lambda: RankRouter(3, 5),
        lambda: MultiHeadRouter(3, 2, 5, d_in=4, d_out=6),
        lambda: OrderRouter(3, 2, 5),
    ],
)
@pytest.mark.parametrize("training", [False, True])
def test_average_gives_one_over_s_for_every_id_form(router, training: bool) -> None:
    """The modules-only mode ("mu") drops routing: every weight is 1 / S, whatever the ids."""
    router = router().train(training)
    router.average = True
    route_shape = tuple(router.logits.shape[1:])
    expected = torch.full(route_shape, 1.0 / 5)
    for ids in (None, 0, 2, torch.tensor(1)):
        torch.testing.assert_close(router.weights(ids), expected)
    torch.testing.assert_close(router.weights(torch.tensor([0, 2, 1, 1])), expected.expand(4, *route_shape))


@pytest.mark.parametrize(
    "ids",
    [3, -1, 7, torch.tensor([0, 3]), torch.tensor([-1, 0]), torch.tensor(5), torch.tensor(-2)],
)
def test_out_of_range_task_ids_are_value_errors(ids) -> None:
    """Negative ids would silently pick rows from the end; too-large ones are IndexErrors deep in torch."""
    router = LinearRouter(3, 2)
    with pytest.raises(ValueError, match="task_ids"):
        router.weights(ids)


@pytest.mark.parametrize(
    "ids",
    [True, 1.0, "1", torch.tensor([1.0]), torch.tensor([True]), torch.tensor([[0, 1]])],
)
def test_malformed_task_ids_are_value_errors(ids) -> None:
    with pytest.raises(ValueError, match="task_ids"):
        LinearRouter(3, 2).weights(ids)


def test_missing_task_ids_name_the_parameter_unless_one_task() -> None:
    with pytest.raises(ValueError, match="task_ids"):
        LinearRouter(2, 3).weights(None)
    single = LinearRouter(1, 3).eval()
    torch.testing.assert_close(single.weights(None), single.weights(0))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.int16, torch.uint8])
def test_integer_dtypes_of_task_ids_route_alike(dtype: torch.dtype) -> None:
    router = random_logits(LinearRouter(3, 4), 0).eval()
    torch.testing.assert_close(router.weights(torch.tensor([2, 0], dtype=dtype)), router.weights(torch.tensor([2, 0])))


@given(n_tasks=tasks, n_skills=skills, init_range=st.sampled_from([1e-3, 0.5]))
def test_logits_init_is_uniform_in_the_range(n_tasks: int, n_skills: int, init_range: float) -> None:
    router = LinearRouter(n_tasks, n_skills, init_range=init_range)
    assert router.logits.shape == (n_tasks, n_skills)
    assert router.logits.abs().max() <= init_range
    assert router.n_tasks == n_tasks


def test_reset_and_add_task() -> None:
    router = random_logits(MultiHeadRouter(4, 2, 3, d_in=4, d_out=2, init_range=1e-3), 0)
    trained = router.logits.detach().clone()
    new_id = router.add_task("mean")
    assert new_id == 4 and router.n_tasks == 5
    torch.testing.assert_close(router.logits[4], trained.mean(0))
    torch.testing.assert_close(router.logits[:4], trained)
    router.add_task()
    assert router.logits[5].abs().max() <= 1e-3
    with pytest.raises(ValueError, match="init"):
        router.add_task("zeros")
    router.reset(2)
    assert router.logits.shape == (2, 2, 3) and router.logits.abs().max() <= 1e-3
    with pytest.raises(ValueError, match="n_tasks"):
        router.reset(0)
    with pytest.raises(ValueError, match="task_ids"):
        router.weights(2)  # the rows after a reset are the only tasks


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: LinearRouter(0, 3), "n_tasks"),
        (lambda: LinearRouter(2, 0), "n_skills"),
        (lambda: RankRouter(2, 0), "tensor_rank"),
        (lambda: OrderRouter(2, 0, 3), "order"),
        (lambda: OrderRouter(2, 2, 0), "tensor_rank"),
        (lambda: MultiHeadRouter(2, 0, 3, d_in=4, d_out=4), "n_heads"),
        (lambda: MultiHeadRouter(2, -2, 3, d_in=4, d_out=4), "n_heads"),
        (lambda: MultiHeadRouter(2, 2, 0, d_in=4, d_out=4), "n_skills"),
    ],
)
def test_bad_route_shapes_name_the_parameter(build, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        build()


# --- mean normalisation ------------------------------------------------------------------------


@given(n_tasks=tasks, n_skills=skills, seed=seeds, training=st.booleans())
def test_mean_normalised_weights_are_s_times_the_sum_normalised(n_tasks, n_skills, seed, training) -> None:
    """``normalization='mean'``: the same mixture, summing to ``S`` instead of 1."""
    torch.manual_seed(seed)
    logits = torch.randn(n_tasks, n_skills, dtype=torch.float64) * 3
    by_sum = normalized_sigmoid_weights(logits, training=False, noise="none", temperature=1.0)
    by_mean = normalized_sigmoid_weights(logits, training=False, noise="none", temperature=1.0, normalization="mean")
    for t in range(n_tasks):
        torch.testing.assert_close(by_mean[t], n_skills * plain_poly_weights(logits[t]), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(by_mean, n_skills * by_sum, rtol=1e-12, atol=1e-12)
    router = random_logits(RankRouter(n_tasks, n_skills, normalization="mean", dtype=torch.float64), seed)
    router.train(training)
    torch.testing.assert_close(router.weights(0).sum(), torch.tensor(float(n_skills), dtype=torch.float64))


@pytest.mark.parametrize("build", [lambda **kw: RankRouter(3, 5, **kw), lambda **kw: OrderRouter(3, 2, 5, **kw)])
def test_average_under_mean_normalisation_gives_one(build) -> None:
    router = build(normalization="mean")
    router.average = True
    torch.testing.assert_close(router.weights(1), torch.ones(router.logits.shape[1:]))
    assert router.uniform_weight == 1.0 and build().uniform_weight == 1.0 / 5


def test_unknown_normalization_names_the_parameter() -> None:
    with pytest.raises(ValueError, match="normalization"):
        RankRouter(2, 3, normalization="softmax")
    with pytest.raises(ValueError, match="normalization"):
        normalized_sigmoid_weights(torch.zeros(2), training=False, noise="none", temperature=1.0, normalization="l2")
