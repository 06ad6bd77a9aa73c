"""How well did a router recover the planted task-skill allocation?

Learned skills are unlabeled: learned skill 3 may be planted skill 5. So the score matches
columns first. For a planted allocation ``P (T, K)`` and learned routing weights ``W (T, S)``
over the same ``T`` training tasks:

1. ``C[k, s]`` = Pearson correlation, across tasks, of planted column ``k`` and learned column
   ``s`` (0 where a column is constant);
2. a one-to-one matching of planted to learned columns maximising the summed correlation:
   the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) when scipy is installed,
   otherwise a greedy match (repeatedly take the largest remaining ``C[k, s]``; it can only score
   lower than the optimum);
3. score = the matched correlations summed and divided by ``K`` (planted skills left unmatched
   when ``S < K`` count 0). 1 means the learned weights are the planted ones up to a permutation
   of the skills and a scale per skill.

A router's weights are ``(T, *route_shape)`` with the experts on the last axis (Poly ``(T, S)``,
MHR ``(T, H, S)``, TensorPoly-II ``(T, N, R)``); every slice over the other axes is scored and
the scores are averaged.

Chance level: the same score after shuffling which task owns which learned row (the routing
weights a random task assignment would give, same distribution of values); the mean over many
shuffles is the random-routing baseline.
"""

from __future__ import annotations

import torch

try:  # optional: exact matching
    from scipy.optimize import linear_sum_assignment
except ImportError:  # pragma: no cover - scipy ships with the dev extras
    linear_sum_assignment = None

__all__ = [
    "MATCHER",
    "correlation_matrix",
    "match_columns",
    "recovery_score",
    "routing_slices",
    "shuffled_scores",
]

MATCHER = "hungarian (scipy.optimize.linear_sum_assignment)" if linear_sum_assignment else "greedy"


def correlation_matrix(planted: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
    """``(K, S)`` Pearson correlations across tasks of ``planted (T, K)`` and ``learned (T, S)``."""
    planted = planted.double() - planted.double().mean(0)
    learned = learned.double() - learned.double().mean(0)
    planted_norm, learned_norm = planted.norm(dim=0), learned.norm(dim=0)
    scale = planted_norm[:, None] * learned_norm[None, :]
    products = planted.T @ learned
    return torch.where(scale > 1e-12, products / scale.clamp_min(1e-300), torch.zeros_like(products))


def match_columns(correlations: torch.Tensor, *, greedy: bool = False) -> list[tuple[int, int]]:
    """One-to-one ``(planted k, learned s)`` pairs maximising the summed correlation."""
    if linear_sum_assignment is not None and not greedy:
        rows, cols = linear_sum_assignment(correlations.numpy(), maximize=True)
        return sorted(zip(rows.tolist(), cols.tolist()))
    remaining = correlations.clone()
    pairs = []
    for _ in range(min(remaining.shape)):
        flat = int(remaining.argmax())
        k, s = divmod(flat, remaining.shape[1])
        pairs.append((k, s))
        remaining[k, :] = -float("inf")
        remaining[:, s] = -float("inf")
    return sorted(pairs)


def recovery_score(planted: torch.Tensor, learned: torch.Tensor, *, greedy: bool = False) -> tuple[float, list]:
    """``(score, pairs)`` for one slice ``learned (T, S)`` against ``planted (T, K)`` (module docstring)."""
    correlations = correlation_matrix(planted, learned)
    pairs = match_columns(correlations, greedy=greedy)
    score = sum(float(correlations[k, s]) for k, s in pairs) / planted.shape[1]
    return score, pairs


def routing_slices(weights: torch.Tensor) -> list[torch.Tensor]:
    """``(T, *shape, E) -> [(T, E), ...]``: one slice per index of the middle axes."""
    flat = weights.reshape(weights.shape[0], -1, weights.shape[-1])
    return [flat[:, i] for i in range(flat.shape[1])]


def shuffled_scores(
    planted: torch.Tensor, learned: torch.Tensor, *, n: int, generator: torch.Generator
) -> torch.Tensor:
    """``(n,)`` scores of ``learned`` with its task rows randomly permuted (the chance level)."""
    scores = []
    for _ in range(n):
        order = torch.randperm(learned.shape[0], generator=generator)
        scores.append(recovery_score(planted, learned[order])[0])
    return torch.tensor(scores)
