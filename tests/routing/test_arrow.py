"""Arrow (`tensoradapt.routing.arrow`) against plain references written in this file.

* prototypes: the top left singular vector of the dense ``A_e B_e`` (``torch.linalg.svd`` of the
  materialised update), compared up to sign, and the singular value it attains;
* weights: per token, ``|x . v_e| / T``, the ``k`` largest by a sort, ``exp / sum exp`` over them;
* delta: ``sum_e w_e (x A_e) B_e`` by a loop over tokens and experts.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from references import randomize
from tensoradapt.experts import LoRABank, TLoRABank
from tensoradapt.routing import ArrowRouter, arrow_prototypes, arrow_weights

dims = st.integers(1, 9)
seeds = st.integers(0, 2**16)


def random_skills(n_skills: int, d_in: int, rank: int, d_out: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    down = torch.randn(n_skills, d_in, rank, generator=generator, dtype=torch.float64)
    up = torch.randn(n_skills, rank, d_out, generator=generator, dtype=torch.float64)
    return down, up


@given(n_skills=st.integers(1, 4), d_in=dims, rank=st.integers(1, 4), d_out=dims, seed=seeds)
def test_prototypes_are_the_top_singular_directions_of_the_dense_updates(n_skills, d_in, rank, d_out, seed):
    down, up = random_skills(n_skills, d_in, rank, d_out, seed)
    prototypes = arrow_prototypes(down, up)
    assert prototypes.shape == (n_skills, d_in)
    for e in range(n_skills):
        dense = down[e] @ up[e]  # (d_in, d_out): x -> x dW
        left, singular, _ = torch.linalg.svd(dense)
        v = prototypes[e]
        assert abs(float(v.norm()) - 1.0) < 1e-12
        # the direction whose image is largest: ||v dW|| = sigma_1
        assert float((v @ dense).norm()) == pytest.approx(float(singular[0]), rel=1e-9)
        if len(singular) == 1 or singular[0] - singular[1] > 1e-6 * singular[0]:  # unique up to sign
            assert abs(float(v @ left[:, 0])) == pytest.approx(1.0, abs=1e-8)
        assert float(v[v.abs().argmax()]) > 0  # the sign convention


def test_a_zero_expert_gets_the_zero_prototype():
    down, up = random_skills(2, 5, 2, 3, seed=0)
    up[1] = 0
    prototypes = arrow_prototypes(down, up)
    assert torch.equal(prototypes[1], torch.zeros(5, dtype=torch.float64)) and prototypes[0].norm() > 0


def weights_reference(x: torch.Tensor, prototypes: torch.Tensor, top_k, temperature: float) -> torch.Tensor:
    tokens = x.reshape(-1, x.shape[-1])
    n = prototypes.shape[0]
    k = n if top_k is None else min(top_k, n)
    rows = []
    for token in tokens:
        logits = [abs(float(sum(token[i] * p[i] for i in range(len(p))))) / temperature for p in prototypes]
        # sorted by logit (random prototypes: no ties, which torch.topk would break its own way)
        kept = sorted(range(n), key=lambda e: -logits[e])[:k]
        total = sum(math.exp(logits[e]) for e in kept)
        rows.append([math.exp(logits[e]) / total if e in kept else 0.0 for e in range(n)])
    return torch.tensor(rows, dtype=torch.float64).reshape(*x.shape[:-1], n)


@given(
    n_skills=st.integers(1, 5), d_in=dims, top_k=st.one_of(st.none(), st.integers(1, 6)),
    temperature=st.sampled_from([0.5, 1.0, 3.0]), seq=st.sampled_from([None, 1, 3]), seed=seeds,
)
def test_weights_match_the_reference(n_skills, d_in, top_k, temperature, seq, seed):
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(n_skills, d_in, generator=generator, dtype=torch.float64)
    shape = (2, d_in) if seq is None else (2, seq, d_in)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    weights = arrow_weights(x, prototypes, top_k=top_k, temperature=temperature)
    torch.testing.assert_close(weights, weights_reference(x, prototypes, top_k, temperature), rtol=1e-12, atol=1e-12)
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:-1], dtype=torch.float64))
    kept = min(top_k or n_skills, n_skills)
    assert ((weights > 0).sum(-1) <= kept).all()


def test_the_sign_of_a_prototype_does_not_matter():
    generator = torch.Generator().manual_seed(0)
    prototypes = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    x = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    flipped = prototypes * torch.tensor([[1.0], [-1.0], [1.0]], dtype=torch.float64)
    assert torch.equal(arrow_weights(x, prototypes, top_k=2), arrow_weights(x, flipped, top_k=2))


def delta_reference(x, down, up, weights):
    tokens = x.reshape(-1, x.shape[-1])
    flat = weights.reshape(-1, weights.shape[-1])
    out = torch.zeros(tokens.shape[0], up.shape[-1], dtype=torch.float64)
    for t, token in enumerate(tokens):
        for e in range(down.shape[0]):
            out[t] += flat[t, e] * ((token @ down[e]) @ up[e])
    return out.reshape(*x.shape[:-1], up.shape[-1])


@given(
    # d_in >= 2: at d_in = 1 every prototype is +-1, so every logit ties
    kind=st.sampled_from(["lora", "tlora"]), n_skills=st.integers(1, 4), d_in=st.integers(2, 9), d_out=dims,
    rank=st.integers(1, 3), top_k=st.one_of(st.none(), st.integers(1, 4)), seq=st.sampled_from([None, 2]),
    seed=seeds,
)
def test_the_router_mixes_the_skills_outputs(kind, n_skills, d_in, d_out, rank, top_k, seq, seed):
    if kind == "lora":
        bank = LoRABank(d_in, d_out, rank, n_skills, dtype=torch.float64)
    else:
        bank = TLoRABank(d_in, d_out, rank, tensor_rank=n_skills, order=2, dtype=torch.float64)
    randomize(bank, seed)
    down, up = (m.detach() for m in bank.skill_matrices())
    router = ArrowRouter(arrow_prototypes(down, up), top_k=top_k, temperature=1.0)
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn((3, d_in) if seq is None else (3, seq, d_in), generator=generator, dtype=torch.float64)
    with torch.no_grad():
        delta = router.token_delta(x, bank)
    expected = delta_reference(x, down, up, weights_reference(x, router.prototypes, top_k, 1.0))
    torch.testing.assert_close(delta, expected, rtol=1e-10, atol=1e-10)
    # the router reads routing_input, the experts project x (the layer's dropout case)
    noisy = x * 0.5
    with torch.no_grad():
        split = router.token_delta(noisy, bank, routing_input=x)
    torch.testing.assert_close(split, delta_reference(noisy, down, up, router.weights(x)), rtol=1e-10, atol=1e-10)


def test_router_arguments_are_checked():
    prototypes = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="top_k"):
        ArrowRouter(prototypes, top_k=0)
    with pytest.raises(ValueError, match="temperature"):
        ArrowRouter(prototypes, temperature=0.0)
    with pytest.raises(ValueError, match="down must be"):
        arrow_prototypes(torch.zeros(2, 3, 1), torch.zeros(3, 1, 4))
    bank = LoRABank(3, 4, 1, n_skills=3)
    with pytest.raises(ValueError, match="3 skills but the router 2 prototypes"):
        ArrowRouter(prototypes).token_delta(torch.zeros(1, 3), bank)
    with pytest.raises(ValueError, match="no per-task adapter matrices"):
        ArrowRouter(prototypes).adapter_matrices(bank, 0)
