"""Plain dense references shared by the test files, the seeded parameter filler they build with, and the
routers' shared batch check.

Every reference here is written plainly -- Python loops, ``torch.kron``, ``exp / sum exp``, a
LayerNorm spelled out -- and never calls tensoradapt's own algebra, routing or expert code, so a
test that compares the library against one of them compares against an independent computation.
The batch check (``assert_batch_rows_alone``) compares a router with itself, one task at a time.
Helpers used by one file only stay in that file.

Imported as ``from references import ...`` (``pythonpath = ["tests"]`` in pyproject.toml).
"""

from __future__ import annotations

import math

import torch


def randomize(module: torch.nn.Module, seed: int = 0, *, std: float = 1.0, dtype: torch.dtype | None = None):
    """Fill every parameter of ``module`` with seeded ``randn * std``, in place; returns ``module``.

    The noise is drawn in ``dtype`` (default: each parameter's own dtype) and then rounded to the
    parameter's dtype, so ``dtype=torch.float64`` gives low-precision modules the rounded float64 draw.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=dtype or parameter.dtype) * std
            parameter.copy_(noise.to(parameter.dtype))
    return module


def plain_weights(row: torch.Tensor) -> list[float]:
    """Poly's eval-mode weights of one logit row: ``sigmoid(z_s) / sum_s' sigmoid(z_s')``, in Python floats."""
    sig = [1.0 / (1.0 + math.exp(-float(z))) for z in row.detach()]
    return [v / sum(sig) for v in sig]


def plain_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis as ``exp / sum exp`` (shifted by the max)."""
    shifted = logits - logits.max(-1, keepdim=True).values
    return shifted.exp() / shifted.exp().sum(-1, keepdim=True)


def plain_token_weights(router, x: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
    """T-REX routing weights ``R (b, ..., r1*r2)`` in float64 from a `TokenRouter`'s parameters.

    Token logits ``sum_d W[e, d] x[d]``; ``prior`` is the ``(b, k)`` rows (or ``None``), prior
    logits ``P s``, the gate ``g = 1 / (1 + exp(-gate_logit))``, mixed as ``router.prior_mix``
    says: ``(1 - g) softmax(W x) + g softmax(P s)`` ("weights") or ``softmax((1 - g) W x + g P s)``
    ("logits").
    """
    x = x.double()
    weight = router.token_weight.detach().double()  # (e, d)
    token_logits = torch.zeros(*x.shape[:-1], router.n_pairs, dtype=torch.float64)
    for e in range(router.n_pairs):
        token_logits[..., e] = (x * weight[e]).sum(-1)
    if prior is None:
        return plain_softmax(token_logits)
    projection = router.prior_weight.detach().double()  # (e, k)
    prior = prior.double()
    prior_logits = torch.zeros(prior.shape[0], router.n_pairs, dtype=torch.float64)
    for e in range(router.n_pairs):
        prior_logits[:, e] = (prior * projection[e]).sum(-1)
    prior_logits = prior_logits.reshape(prior.shape[0], *([1] * (x.dim() - 2)), router.n_pairs)
    gate = 1.0 / (1.0 + math.exp(-float(router.gate_logit.detach())))
    if router.prior_mix == "weights":
        return (1 - gate) * plain_softmax(token_logits) + gate * plain_softmax(prior_logits)
    return plain_softmax((1 - gate) * token_logits + gate * prior_logits)


def plain_layer_norm(block: torch.Tensor) -> torch.Tensor:
    """Parameter-free LayerNorm over every entry of ``block`` together (eps 1e-5, biased variance)."""
    centred = block - block.mean()
    return centred / torch.sqrt((centred**2).mean() + 1e-5)


def kron_chain(leaves: torch.Tensor) -> torch.Tensor:
    """``kron(leaves[0], leaves[1], ..., leaves[N-1])`` for leaves ``(N, q)``, uncut (``q ** N`` entries)."""
    out = leaves[0]
    for leaf in leaves[1:]:
        out = torch.kron(out, leaf)
    return out


def kron_rows(leaves: torch.Tensor, dim: int, *, normalize: bool = False) -> torch.Tensor:
    """``(r, dim)``: row ``c`` is ``kron(leaves[c, 0], ..., leaves[c, N-1])[:dim]``, leaves ``(r, N, q)``.

    With ``normalize`` the ``r`` products are stacked after every ``kron`` and the ``(r, P)`` block is
    LayerNormed as a whole (the reference's ``[r, q * q]``).
    """
    products = [leaves[c, 0] for c in range(leaves.shape[0])]
    for n in range(1, leaves.shape[1]):
        products = [torch.kron(product, leaves[c, n]) for c, product in enumerate(products)]
        if normalize:
            products = list(plain_layer_norm(torch.stack(products)))
    return torch.stack([product[:dim] for product in products])


def factors(tensor) -> torch.Tensor:
    """The factors an `EntangledTensor` multiplies: its stored leaves times its constant ``leaf_scale``.

    ``leaf_scale`` is 1 unless the leaves come from ``init='matched'`` (a learning-rate multiplier
    of the leaves under Adam); every dense reference is built from these, detached.
    """
    return tensor.leaves.detach() * tensor.leaf_scale


def assert_batch_rows_alone(router, bank, ids: torch.Tensor, *, d_in: int, d_out: int, rank: int):
    """``router.adapter_matrices(bank, ids)`` of a batch of task ids: ``(b, d_in, rank)`` and ``(b, rank, d_out)``
    whose row ``i`` equals the task ``ids[i]``'s matrices alone; returns the batch's ``(down, up)``."""
    down, up = router.adapter_matrices(bank, ids)
    assert down.shape == (len(ids), d_in, rank) and up.shape == (len(ids), rank, d_out)
    for row, t in enumerate(ids.tolist()):
        alone_down, alone_up = router.adapter_matrices(bank, t)
        torch.testing.assert_close(down[row], alone_down)
        torch.testing.assert_close(up[row], alone_up)
    return down, up
