"""T-REX in a task-id pipeline: one semantic-prior row per task, from its examples' sentence embeddings.

T-REX routes every token; its semantic prior is an example's cosine similarity to ``k``
centroids of sentence embeddings (`tensoradapt.routing.semantic_prior.SemanticPrior`). The
recipes work with task ids, so every task gets the prior of its examples taken together
(``mean_i cos(e_i, C)``, `SemanticPrior.task_prior`): a table ``(n_tasks, k)`` during
pre-training, and one row ``(1, k)`` for a held-out task, computed from its few-shot training
inputs only (never from evaluation rows). The centroids are fitted once, on the pre-training
mixture's inputs.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import torch
from torch import nn

from t0_recipes.data.rows import Example

__all__ = ["fit_prior", "set_single_task_prior", "task_prior_table"]

logger = logging.getLogger(__name__)

#: Texts per task (and in all, for the k-means) beyond which a seeded sample is embedded.
MAX_TEXTS_PER_TASK = 256
MAX_FIT_TEXTS = 4096


def _sample(texts: Sequence[str], limit: int, seed: int = 0) -> list[str]:
    texts = list(texts)
    return texts if len(texts) <= limit else random.Random(seed).sample(texts, limit)


def fit_prior(examples: Sequence[Example], n_clusters: int, *, seed: int = 0):
    """A `SemanticPrior` whose ``k = n_clusters`` centroids cluster the examples' inputs.

    Raises:
        ValueError: fewer distinct inputs than ``n_clusters`` (pass a larger mixture or a smaller k).
    """
    from tensoradapt.routing.semantic_prior import SemanticPrior

    texts = _sample(sorted({example.input_text for example in examples}), MAX_FIT_TEXTS, seed)
    if len(texts) < n_clusters:
        raise ValueError(
            f"T-REX needs at least trex_n_clusters={n_clusters} distinct pre-training inputs to fit its "
            f"centroids, got {len(texts)}: add pre-training tasks to --data-dir"
        )
    logger.info("T-REX prior: %d centroids from %d inputs", n_clusters, len(texts))
    return SemanticPrior.fit(texts, n_clusters=n_clusters, seed=seed)


def task_prior_table(prior, examples: Sequence[Example], n_tasks: int) -> torch.Tensor:
    """``(n_tasks, k)``: row ``t`` is the mean centroid similarity of task ``t``'s inputs.

    Raises:
        ValueError: a task id in ``0 .. n_tasks - 1`` has no example.
    """
    groups: list[list[str]] = [[] for _ in range(n_tasks)]
    for example in examples:
        groups[example.task_id].append(example.input_text)
    empty = [task for task, texts in enumerate(groups) if not texts]
    if empty:
        raise ValueError(f"task ids {empty} have no example to compute their T-REX prior from")
    return prior.task_prior([_sample(texts, MAX_TEXTS_PER_TASK) for texts in groups])


def set_single_task_prior(model: nn.Module, prior, examples: Sequence[Example]) -> None:
    """Make ``model`` a one-task T-REX model whose task 0 has the prior of ``examples``' inputs.

    The few-shot counterpart of `tensoradapt.reset_routing` for T-REX (which has no routing
    matrix to reset): the task count drops to 1 and the prior table becomes ``(1, k)``.
    """
    from tensoradapt.trex import set_task_prior

    row = prior.task_prior([_sample([example.input_text for example in examples], MAX_TEXTS_PER_TASK)])
    set_task_prior(model, row, new_tasks=True)
