"""T-REX's token router on a rank-one bank, against plain dense references (here and in references.py).

Every reference below is spelled out plainly: token logits ``sum_d W[e, d] x[d]``, a softmax as
``exp / sum exp``, the prior mixed as `TokenRouter`'s docstring says, and the delta as a loop over
the pairs ``sum_ij R_ij (a_i . x) b_j`` (or ``torch.outer`` for the per-token matrix). None of it
calls the library's routing code.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from references import factors, kron_chain, plain_softmax, plain_token_weights, randomize
from tensoradapt.config import AdapterConfig
from tensoradapt.experts import RankOneBank
from tensoradapt.layers import AdaptedLinear
from tensoradapt.routing.state import RoutingInputs, RoutingState
from tensoradapt.routing.token import TokenRouter

MIXES = ("weights", "logits")
dims = st.integers(1, 9)
counts = st.integers(1, 4)
seeds = st.integers(0, 2**16)


# --------------------------------------------------------------------------------------------
# Plain references
# --------------------------------------------------------------------------------------------


def plain_vectors(bank: RankOneBank) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``[a_i]``, ``[b_j]`` in float64: the dense rows, or the summed chained krons of the leaves."""
    if not bank.entangled:
        return [a.double() for a in bank.down.detach()], [b.double() for b in bank.up.detach()]

    def vector(leaves: torch.Tensor, dim: int) -> torch.Tensor:  # leaves (rank, order, q)
        return sum(kron_chain(leaves[k].double()) for k in range(leaves.shape[0]))[:dim]

    down = [vector(factors(bank.down)[i], bank.d_in) for i in range(bank.n_down)]
    up = [vector(factors(bank.up)[j], bank.d_out) for j in range(bank.n_up)]
    return down, up


def plain_delta(bank: RankOneBank, weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``sum_ij R_ij (a_i . x) b_j`` by a loop over the pairs, float64, pair ``e = i * r2 + j``."""
    down, up = plain_vectors(bank)
    x = x.double()
    out = torch.zeros(*x.shape[:-1], bank.d_out, dtype=torch.float64)
    for i in range(bank.n_down):
        for j in range(bank.n_up):
            coefficient = weights[..., i * bank.n_up + j].double() * (x * down[i]).sum(-1)
            out += coefficient.unsqueeze(-1) * up[j]
    return out


def plain_top_k(weights: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each token's ``k`` largest weights, renormalised to sum 1 (loop over tokens)."""
    flat = weights.reshape(-1, weights.shape[-1])
    out = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        order = sorted(range(flat.shape[1]), key=lambda e: -float(flat[t, e]))[:k]
        total = sum(float(flat[t, e]) for e in order)
        for e in order:
            out[t, e] = flat[t, e] / total
    return out.reshape(weights.shape)


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def build(d_in, d_out, r1, r2, *, k=3, seed=0, dtype=torch.float64, entangled=False, **router_kwargs):
    bank = RankOneBank(d_in, d_out, r1, r2, entangled=entangled, tensor_rank=2, order=2, dtype=dtype)
    router = TokenRouter(d_in, r1, r2, n_clusters=k, dtype=dtype, **router_kwargs)
    # noise drawn in float64 and rounded, so low-precision banks get the float64 draw's values
    randomize(bank, seed, std=0.7 if entangled else 1.0, dtype=torch.float64)
    randomize(router, seed + 1, dtype=torch.float64)
    return bank, router


def tokens(shape, seed, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def layer_for(bank: RankOneBank, router: TokenRouter, *, lora_alpha: float, state: RoutingState) -> AdaptedLinear:
    """An `AdaptedLinear` whose bank and router are ``bank`` / ``router`` (scaling ``lora_alpha``)."""
    config = AdapterConfig(
        method="trex", trex_down=bank.n_down, trex_up=bank.n_up, trex_n_clusters=router.n_clusters,
        lora_alpha=lora_alpha, trex_prior_mix=router.prior_mix,
    )
    layer = AdaptedLinear(torch.nn.Linear(bank.d_in, bank.d_out, dtype=torch.float64), config, state)
    layer.bank, layer.combiner = bank, router
    return layer


# --------------------------------------------------------------------------------------------
# 1. r1 = r2 = 1 is a rank-one LoRA
# --------------------------------------------------------------------------------------------


@given(
    d_in=dims, d_out=dims, k=st.integers(1, 4), mix=st.sampled_from(MIXES), with_prior=st.booleans(),
    alpha=st.sampled_from([0.5, 1.0, 3.0]), seed=seeds,
)
def test_one_pair_is_a_scaled_rank_one_lora(d_in, d_out, k, mix, with_prior, alpha, seed):
    bank, router = build(d_in, d_out, 1, 1, k=k, seed=seed, prior_mix=mix)
    x = tokens((2, 3, d_in), seed)
    prior = tokens((2, k), seed + 7) if with_prior else None
    state = RoutingState()
    layer = layer_for(bank, router, lora_alpha=alpha, state=state)
    with state.scope(RoutingInputs(semantic_prior=prior)):
        got = layer.delta(x)
    torch.testing.assert_close(router.routing_weights(x, prior), torch.ones(2, 3, 1, dtype=torch.float64))
    a, b = bank.down[0].detach(), bank.up[0].detach()
    expected = alpha * (x @ a).unsqueeze(-1) * b  # scaling * (a . x) b, whatever the router says
    torch.testing.assert_close(got, expected)


# --------------------------------------------------------------------------------------------
# 2. A one-hot router picks one expert b_j a_i^T
# --------------------------------------------------------------------------------------------


@given(
    d_in=st.integers(2, 8), d_out=dims, r1=counts, r2=counts, data=st.data(), mix=st.sampled_from(MIXES),
    via=st.sampled_from(["token", "prior"]), seed=seeds,
)
def test_one_hot_router_is_the_single_expert(d_in, d_out, r1, r2, data, mix, via, seed):
    i = data.draw(st.integers(0, r1 - 1), label="i")
    j = data.draw(st.integers(0, r2 - 1), label="j")
    pair = i * r2 + j
    k = 3
    bank, router = build(d_in, d_out, r1, r2, k=k, seed=seed, prior_mix=mix)
    x = tokens((2, 4, d_in), seed)
    prior = tokens((2, k), seed + 3).abs() + 0.5  # positive similarities
    with torch.no_grad():
        if via == "token":  # feature 0 is a constant 1 and pair (i, j)'s logit is huge on it
            x[..., 0] = 1.0
            router.token_weight.mul_(0.01)
            router.token_weight[pair, 0] = 1e4
            router.gate_logit.fill_(-1e3)  # g = 0: the token router alone
        else:  # the prior projection sends every (positive) prior to pair (i, j)
            router.prior_weight.zero_()
            router.prior_weight[pair] = 1e4
            router.gate_logit.fill_(1e3)  # g = 1: the prior alone
    weights = router.routing_weights(x, prior)
    one_hot = torch.zeros(router.n_pairs, dtype=torch.float64)
    one_hot[pair] = 1.0
    torch.testing.assert_close(weights, one_hot.expand_as(weights))
    expert = torch.outer(bank.down[i].detach(), bank.up[j].detach())  # (b_j a_i^T)^T as (d_in, d_out)
    torch.testing.assert_close(router.token_delta(x, bank, semantic_prior=prior), x @ expert)


def test_monkeypatched_one_hot_mix_is_the_single_expert(monkeypatch):
    bank, router = build(6, 5, 3, 2, seed=4)
    x = tokens((3, 6), 1)
    pair, (i, j) = 4, divmod(4, 2)

    def one_hot(token_logits, prior_logits):
        return torch.nn.functional.one_hot(torch.full(token_logits.shape[:-1], pair), router.n_pairs).double()

    monkeypatch.setattr(router, "mix", one_hot)
    expected = (x @ bank.down[i].detach()).unsqueeze(-1) * bank.up[j].detach()
    torch.testing.assert_close(router.token_delta(x, bank), expected)


# --------------------------------------------------------------------------------------------
# 3. The general soft router
# --------------------------------------------------------------------------------------------


@given(
    d_in=dims, d_out=dims, r1=counts, r2=counts, k=st.integers(1, 5), mix=st.sampled_from(MIXES),
    prior_kind=st.sampled_from(["none", "explicit", "task_int", "task_ids"]),
    gate=st.floats(-4, 4), token_axes=st.sampled_from([(), (3,), (2, 3)]), entangled=st.booleans(), seed=seeds,
)
def test_soft_router_is_the_plain_weighted_sum_of_experts(
    d_in, d_out, r1, r2, k, mix, prior_kind, gate, token_axes, entangled, seed
):
    bank, router = build(d_in, d_out, r1, r2, k=k, seed=seed, prior_mix=mix, entangled=entangled)
    with torch.no_grad():
        router.gate_logit.fill_(gate)
    batch = 2
    x = tokens((batch, *token_axes, d_in), seed)
    table = tokens((3, k), seed + 11)
    semantic_prior, task_ids, rows = None, None, None
    if prior_kind == "explicit":
        semantic_prior = rows = tokens((batch, k), seed + 5)
        router.set_task_prior(table)  # an explicit prior wins over the task table
        task_ids = torch.tensor([2, 0])
    elif prior_kind == "task_int":
        router.set_task_prior(table)
        task_ids, rows = 1, table[1].expand(batch, k)
    elif prior_kind == "task_ids":
        router.set_task_prior(table)
        task_ids = torch.tensor([2, 0])
        rows = table[task_ids]
    expected_weights = plain_token_weights(router, x, rows)
    got_weights = router.routing_weights(x, semantic_prior, task_ids)
    assert got_weights.shape == (batch, *token_axes, r1 * r2)
    torch.testing.assert_close(got_weights, expected_weights.expand_as(got_weights))
    torch.testing.assert_close(got_weights.sum(-1), torch.ones(batch, *token_axes, dtype=torch.float64))
    got = router.token_delta(x, bank, task_ids, semantic_prior)
    torch.testing.assert_close(got, plain_delta(bank, expected_weights, x))


def test_prior_mixes_differ_and_weights_mix_is_after_the_softmax():
    """The two documented mixes are different functions (guards against one silently aliasing the other)."""
    bank, router = build(5, 4, 2, 3, k=3, seed=2, prior_mix="weights")
    with torch.no_grad():
        router.gate_logit.zero_()  # as initialised: g = 1/2
    x, prior = tokens((2, 3, 5), 0), tokens((2, 3), 1)
    by_weights = router.routing_weights(x, prior)
    router.prior_mix = "logits"
    by_logits = router.routing_weights(x, prior)
    assert (by_weights - by_logits).abs().max() > 1e-3
    token = plain_softmax(x @ router.token_weight.detach().T)
    prior_part = plain_softmax(prior @ router.prior_weight.detach().T).unsqueeze(1)
    torch.testing.assert_close(by_weights, 0.5 * token + 0.5 * prior_part)


# --------------------------------------------------------------------------------------------
# 4. Rank of the per-token update
# --------------------------------------------------------------------------------------------


@given(
    d_in=st.integers(1, 10), d_out=st.integers(1, 10), r1=counts, r2=counts, mix=st.sampled_from(MIXES),
    entangled=st.booleans(), seed=seeds,
)
def test_per_token_update_has_rank_at_most_min_r1_r2(d_in, d_out, r1, r2, mix, entangled, seed):
    bank, router = build(d_in, d_out, r1, r2, k=2, seed=seed, prior_mix=mix, entangled=entangled)
    x, prior = tokens((2, 3, d_in), seed), tokens((2, 2), seed + 1)
    weights = plain_token_weights(router, x, prior)
    delta = router.token_delta(x, bank, semantic_prior=prior)
    down, up = plain_vectors(bank)
    for b in range(2):
        for t in range(3):
            matrix = torch.zeros(d_in, d_out, dtype=torch.float64)
            for i in range(r1):
                for j in range(r2):
                    matrix += weights[b, t, i * r2 + j] * torch.outer(down[i], up[j])
            assert int(torch.linalg.matrix_rank(matrix)) <= min(r1, r2)
            torch.testing.assert_close(delta[b, t], x[b, t] @ matrix)


def test_per_token_rank_reaches_min_r1_r2_with_many_experts():
    """r1 * r2 = 12 experts, yet a token's update has rank exactly min(r1, r2) = 3."""
    bank, router = build(16, 14, 3, 4, k=2, seed=9)
    x = tokens((1, 2, 16), 3)
    weights = plain_token_weights(router, x, None)
    down, up = plain_vectors(bank)
    matrix = sum(weights[0, 1, i * 4 + j] * torch.outer(down[i], up[j]) for i in range(3) for j in range(4))
    assert int(torch.linalg.matrix_rank(matrix)) == 3


# --------------------------------------------------------------------------------------------
# 5. The gate: g = 0 is the token router, g = 1 the prior
# --------------------------------------------------------------------------------------------


@given(
    d_in=dims, r1=counts, r2=counts, k=st.integers(1, 5), mix=st.sampled_from(MIXES),
    side=st.sampled_from(["token", "prior"]), seed=seeds,
)
def test_gate_extremes_are_pure_token_or_pure_prior_routing(d_in, r1, r2, k, mix, side, seed):
    bank, router = build(d_in, 3, r1, r2, k=k, seed=seed, prior_mix=mix)
    with torch.no_grad():
        router.gate_logit.fill_(-60.0 if side == "token" else 60.0)
    x, prior = tokens((2, 3, d_in), seed), tokens((2, k), seed + 1)
    got = router.routing_weights(x, prior)
    if side == "token":
        token_logits = torch.stack([(x * w).sum(-1) for w in router.token_weight.detach()], -1)
        expected = plain_softmax(token_logits)
    else:
        prior_logits = torch.stack([(prior * p).sum(-1) for p in router.prior_weight.detach()], -1)
        expected = plain_softmax(prior_logits).unsqueeze(1).expand(2, 3, r1 * r2)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)
    if side == "prior":  # every token of an example routes alike: the router ignores x
        torch.testing.assert_close(got, router.routing_weights(tokens((2, 3, d_in), seed + 99), prior))


def test_without_a_prior_the_gate_is_unused():
    bank, router = build(5, 4, 2, 2, seed=0)
    x = tokens((2, 5), 0)
    before = router.routing_weights(x)
    with torch.no_grad():
        router.gate_logit.fill_(5.0)
    torch.testing.assert_close(router.routing_weights(x), before)
    torch.testing.assert_close(before, plain_token_weights(router, x, None))


# --------------------------------------------------------------------------------------------
# Zero init (the paper: softmax(W_r x) with W_r zero-initialised, gate sigmoid(0))
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mix", MIXES)
def test_fresh_router_starts_uniform_and_gate_at_one_half(mix):
    router = TokenRouter(7, 2, 3, n_clusters=4, prior_mix=mix, dtype=torch.float64)
    assert torch.count_nonzero(router.token_weight) == 0 and float(router.gate_logit.detach()) == 0.0
    assert float(router.gate.detach()) == 0.5
    x, prior = tokens((2, 5, 7), 0), tokens((2, 4), 1)
    torch.testing.assert_close(router.routing_weights(x), torch.full((2, 5, 6), 1 / 6, dtype=torch.float64))
    torch.testing.assert_close(router.routing_weights(x, prior), plain_token_weights(router, x, prior))
    bank = RankOneBank(7, 3, 2, 3, dtype=torch.float64)  # b_j start at zero: so does the delta
    assert torch.count_nonzero(router.token_delta(x, bank, semantic_prior=prior)) == 0


def test_no_balance_loss_by_default():
    bank, router = build(5, 4, 2, 3, seed=0)
    router.train()
    router.token_delta(tokens((2, 3, 5), 0), bank)
    assert router.balance_weight == 0.0 and router.aux_loss is None and router.top_k is None


# --------------------------------------------------------------------------------------------
# 8. dtypes, odd / prime dims, gradients
# --------------------------------------------------------------------------------------------

TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (6e-2, 6e-2), torch.float16: (1e-2, 1e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("entangled", [False, True], ids=["dense", "entangled"])
@pytest.mark.parametrize("d_in, d_out, r1, r2", [(7, 13, 3, 5), (11, 5, 2, 3), (1, 17, 1, 2), (13, 1, 3, 1)])
@pytest.mark.parametrize("mix", MIXES)
def test_dtypes_odd_prime_dims_and_gradients(dtype, entangled, d_in, d_out, r1, r2, mix):
    k = 5
    bank, router = build(d_in, d_out, r1, r2, k=k, seed=d_in + d_out, dtype=dtype, entangled=entangled,
                         prior_mix=mix)
    with torch.no_grad():
        router.token_weight.mul_(0.5)
        router.gate_logit.fill_(0.3)
    x = tokens((2, 3, d_in), 1, dtype).requires_grad_(True)
    prior = tokens((2, k), 2, dtype)
    out = router.token_delta(x, bank, semantic_prior=prior)
    assert out.dtype == dtype and out.shape == (2, 3, d_out)
    # float64 reference from the same (rounded) parameters and inputs
    reference = plain_delta(bank, plain_token_weights(router, x.detach(), prior), x.detach())
    atol, rtol = TOLERANCES[dtype]
    scale = max(1.0, float(reference.abs().max()))
    torch.testing.assert_close(out.double(), reference, atol=atol * scale, rtol=rtol)
    out.float().square().sum().backward()
    parts = {"token_weight": router.token_weight, "prior_weight": router.prior_weight,
             "gate_logit": router.gate_logit, "x": x}
    parts.update({f"bank.{name}": p for name, p in bank.named_parameters()})
    assert set(parts) >= {"bank.down", "bank.up"} or set(parts) >= {"bank.down.leaves", "bank.up.leaves"}
    needs_routing = r1 * r2 > 1  # a single pair has weight 1 whatever the router says
    for name, parameter in parts.items():
        if not needs_routing and name in ("token_weight", "prior_weight", "gate_logit"):
            continue
        assert parameter.grad is not None, name
        assert parameter.grad.dtype == parameter.dtype, name
        assert torch.isfinite(parameter.grad.float()).all(), name
        assert parameter.grad.float().abs().sum() > 0, name


@given(d_in=dims, d_out=dims, r1=counts, r2=counts, seed=seeds)
def test_gradients_match_a_float64_reference(d_in, d_out, r1, r2, seed):
    """Autograd through the fused path equals autograd through the plain loop (all router parts)."""
    bank, router = build(d_in, d_out, r1, r2, k=2, seed=seed, prior_mix="weights")
    x, prior = tokens((2, 2, d_in), seed), tokens((2, 2), seed + 1)
    target = tokens((2, 2, d_out), seed + 2)
    params = [bank.down, bank.up, router.token_weight, router.prior_weight, router.gate_logit]
    got = torch.autograd.grad((router.token_delta(x, bank, semantic_prior=prior) * target).sum(), params)

    # the same function written plainly, differentiable
    token_logits = torch.stack([(x * w).sum(-1) for w in router.token_weight], -1)
    prior_logits = torch.stack([(prior * p).sum(-1) for p in router.prior_weight], -1).unsqueeze(1)
    gate = 1 / (1 + torch.exp(-router.gate_logit))
    weights = (1 - gate) * plain_softmax(token_logits) + gate * plain_softmax(prior_logits)
    out = sum(
        weights[..., i * r2 + j].unsqueeze(-1) * (x * bank.down[i]).sum(-1, keepdim=True) * bank.up[j]
        for i in range(r1) for j in range(r2)
    )
    expected = torch.autograd.grad((out * target).sum(), params)
    for name, g, e in zip(("down", "up", "token_weight", "prior_weight", "gate_logit"), got, expected):
        torch.testing.assert_close(g, e, msg=lambda m, name=name: f"{name}: {m}")


# --------------------------------------------------------------------------------------------
# 10. top-k and the balance loss
# --------------------------------------------------------------------------------------------


@given(
    r1=counts, r2=st.integers(2, 4), data=st.data(), with_prior=st.booleans(), mix=st.sampled_from(MIXES),
    seed=seeds,
)
def test_top_k_keeps_exactly_k_pairs_summing_to_one(r1, r2, data, with_prior, mix, seed):
    n_pairs = r1 * r2
    top_k = data.draw(st.integers(1, n_pairs - 1), label="top_k")
    bank, router = build(5, 4, r1, r2, k=3, seed=seed, top_k=top_k, prior_mix=mix)
    x = tokens((2, 3, 5), seed)
    prior = tokens((2, 3), seed + 1) if with_prior else None
    weights = router.routing_weights(x, prior)
    assert ((weights != 0).sum(-1) == top_k).all()
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, dtype=torch.float64))
    expected = plain_top_k(plain_token_weights(router, x, prior), top_k)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(router.token_delta(x, bank, semantic_prior=prior), plain_delta(bank, expected, x))


def test_top_k_equal_to_all_pairs_is_no_cut():
    router = TokenRouter(4, 2, 3, top_k=6)
    assert router.top_k is None


@pytest.mark.parametrize("top_k", [None, 1, 3])
@pytest.mark.parametrize("with_prior", [False, True])
def test_balance_loss_is_positive_differentiable_and_plain(top_k, with_prior):
    bank, router = build(6, 4, 2, 3, k=3, seed=5, top_k=top_k, balance_weight=0.1)
    router.train()
    x = tokens((3, 4, 6), 0)
    prior = tokens((3, 3), 1) if with_prior else None
    router.token_delta(x, bank, semantic_prior=prior)
    loss = router.aux_loss
    assert loss is not None and loss.dim() == 0 and float(loss.detach()) > 0
    # Switch: E * sum_e f_e P_e; f the share of dispatches (top-k, or arg-max without top-k)
    probs = plain_token_weights(router, x, prior).reshape(-1, 6)
    n_sent = top_k or 1
    counts = torch.zeros(6, dtype=torch.float64)
    for row in probs:
        for e in sorted(range(6), key=lambda e: -float(row[e]))[:n_sent]:
            counts[e] += 1
    expected = 6 * sum(float(counts[e] / counts.sum()) * float(probs[:, e].mean()) for e in range(6))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-9)
    loss.backward()
    for parameter in (router.token_weight,) + ((router.prior_weight, router.gate_logit) if with_prior else ()):
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()
        assert parameter.grad.abs().sum() > 0
    router.eval()
    router.aux_loss = None
    router.token_delta(x, bank, semantic_prior=prior)
    assert router.aux_loss is None  # only while training


def test_balance_loss_is_one_when_perfectly_balanced():
    bank, router = build(4, 4, 1, 2, seed=0, balance_weight=1.0)
    router.train()
    with torch.no_grad():
        router.token_weight.zero_()
        router.token_weight[0, 0], router.token_weight[1, 0] = 5.0, -5.0
    x = torch.zeros(1, 2, 4, dtype=torch.float64)
    x[0, 0, 0], x[0, 1, 0] = 1.0, -1.0  # one token to each pair, symmetric probabilities
    router.token_delta(x, bank)
    assert float(router.aux_loss.detach()) == pytest.approx(1.0, rel=1e-12)


# --------------------------------------------------------------------------------------------
# Task priors, calibration, export matrices, validation
# --------------------------------------------------------------------------------------------


def test_averaged_matrices_are_the_plain_routing_average():
    bank, router = build(6, 5, 2, 3, k=4, seed=3)
    down, up = plain_vectors(bank)

    def averaged(weights):  # sum_ij Rbar_ij a_i b_j^T
        return sum(weights[i * 3 + j] * torch.outer(down[i], up[j]) for i in range(2) for j in range(3))

    a, b = router.averaged_matrices(bank)
    torch.testing.assert_close(a @ b, averaged(torch.full((6,), 1 / 6, dtype=torch.float64)))
    table = tokens((2, 4), 0)
    router.set_task_prior(table)
    zero = torch.zeros(1, 6, dtype=torch.float64)
    a, b = router.averaged_matrices(bank, task=1)
    torch.testing.assert_close(a @ b, averaged(plain_token_weights(router, zero, table[1:2])[0]))
    router.start_calibration()
    xs = [tokens((2, 3, 6), s) for s in range(3)]
    for x in xs:
        router.token_delta(x, bank, task_ids=0)
    router.finish_calibration()
    mean = torch.cat([plain_token_weights(router, x, table[0].expand(2, 4)).reshape(-1, 6) for x in xs]).mean(0)
    a, b = router.averaged_matrices(bank)
    torch.testing.assert_close(a @ b, averaged(mean))
    assert a.shape[1] == b.shape[0] == 2  # rank min(r1, r2)


@given(d_in=dims, d_out=dims, r1=counts, r2=counts, k=st.integers(1, 4), top_k=st.booleans(), seed=seeds)
def test_averaged_matrices_both_branches(d_in, d_out, r1, r2, k, top_k, seed):
    """``A (Rbar B)`` when r1 <= r2, ``(A Rbar) B`` otherwise: always the plain pair sum, rank min(r1, r2)."""
    cut = 1 if top_k and r1 * r2 > 1 else None
    bank, router = build(d_in, d_out, r1, r2, k=k, seed=seed, top_k=cut)
    table = tokens((2, k), seed + 1)
    router.set_task_prior(table)
    weights = plain_token_weights(router, torch.zeros(1, d_in, dtype=torch.float64), table[1:2])[0]
    if cut is not None:
        weights = plain_top_k(weights, cut)
    down, up = plain_vectors(bank)
    expected = torch.zeros(d_in, d_out, dtype=torch.float64)
    for i in range(r1):
        for j in range(r2):
            expected += weights[i * r2 + j] * torch.outer(down[i], up[j])
    a, b = router.averaged_matrices(bank, task=1)
    assert a.shape == (d_in, min(r1, r2)) and b.shape == (min(r1, r2), d_out)
    torch.testing.assert_close(a @ b, expected)


def test_calibration_without_calls_is_refused():
    router = TokenRouter(4, 2, 2)
    with pytest.raises(RuntimeError, match="start_calibration"):
        router.finish_calibration()
    router.start_calibration()
    with pytest.raises(ValueError, match="no token"):
        router.finish_calibration()


def test_adapter_matrices_are_refused():
    bank, router = build(4, 4, 2, 2)
    with pytest.raises(ValueError, match="routes every token"):
        router.adapter_matrices(bank, None)


def test_task_prior_without_task_ids_needs_one_task():
    bank, router = build(4, 4, 2, 2, k=3)
    x = tokens((2, 4), 0)
    router.set_task_prior(tokens((1, 3), 1))
    torch.testing.assert_close(router.routing_weights(x), plain_token_weights(router, x, router.task_prior.expand(2, 3)))
    router.set_task_prior(tokens((2, 3), 1))
    with pytest.raises(ValueError, match="task_ids"):
        router.routing_weights(x)
    router.set_task_prior(None)
    torch.testing.assert_close(router.routing_weights(x), plain_token_weights(router, x, None))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(top_k=0), "top_k"),
        (dict(top_k=5), "top_k"),
        (dict(top_k=True), "top_k"),
        (dict(balance_weight=-1.0), "balance_weight"),
        (dict(balance_weight=float("nan")), "balance_weight"),
        (dict(prior_mix="sum"), "prior_mix"),
        (dict(n_clusters=0), "n_clusters"),
    ],
)
def test_bad_router_arguments_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TokenRouter(4, 2, 2, **kwargs)


def test_bad_priors_are_refused():
    bank, router = build(4, 4, 2, 2, k=3)
    with pytest.raises(ValueError, match="semantic_prior"):
        router.routing_weights(tokens((2, 4), 0), tokens((2, 4), 1))
    with pytest.raises(ValueError, match="task prior"):
        router.set_task_prior(tokens((2, 4), 1))
    with pytest.raises(ValueError, match="batch axis"):
        router.token_delta(tokens((4,), 0), bank, semantic_prior=tokens((1, 3), 1))
