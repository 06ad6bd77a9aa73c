"""Rows from the Hugging Face hub through ``datasets.load_dataset``: held-out tasks and P3.

Two sources:

* the raw held-out datasets (`t0_recipes.data.tasks` names the id, config and splits), rendered
  afterwards with the project's templates (`t0_recipes.data.render_examples`);
* the T0 training mixture, pre-rendered in ``bigscience/P3``: one configuration per
  (dataset, promptsource template) with ``inputs_pretokenized``, ``targets_pretokenized`` and,
  for classification templates, ``answer_choices``. T0 capped every dataset at 500,000
  examples, shared out evenly over its templates: ``500000 // n_templates`` per template.

Nothing here runs in the tests. Every entry point first calls `require_hub`, which fails at
once, naming the local alternative, when ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` is set
or the hub host does not answer within a few seconds; connection errors raised later by
``datasets`` are turned into the same `HubUnavailableError`.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from t0_recipes.data.rows import Example, TaskIndex
from t0_recipes.data.tasks import Task, get_task

__all__ = [
    "P3_ID",
    "P3_PER_DATASET_CAP",
    "T0_TRAIN_DATASETS",
    "HubUnavailableError",
    "hub_is_offline",
    "hub_reachable",
    "load_hub_rows",
    "load_p3_mixture",
    "p3_example",
    "p3_prefix",
    "p3_template_configs",
    "require_hub",
]

logger = logging.getLogger(__name__)

P3_ID = "bigscience/P3"
#: T0's cap on examples per training dataset, split evenly over the dataset's templates.
P3_PER_DATASET_CAP = 500_000

#: The 38 (dataset, subset) pairs of T0's training mixture (Sanh et al., 2021, figure 2):
#: multiple-choice QA, extractive QA, closed-book QA, structure-to-text, sentiment,
#: summarisation, topic classification and paraphrase identification. Their promptsource
#: templates (313 in all) are the T0 training tasks.
T0_TRAIN_DATASETS: tuple[tuple[str, str | None], ...] = (
    # multiple-choice QA
    ("commonsense_qa", None), ("dream", None), ("quail", None), ("quartz", None), ("social_i_qa", None),
    ("wiqa", None), ("cosmos_qa", None), ("qasc", None), ("quarel", None), ("sciq", None),
    ("wiki_hop", "original"),
    # extractive QA
    ("adversarial_qa", "dbidaf"), ("adversarial_qa", "dbert"), ("adversarial_qa", "droberta"),
    ("quoref", None), ("ropes", None), ("duorc", "SelfRC"), ("duorc", "ParaphraseRC"),
    # closed-book QA
    ("kilt_tasks", "hotpotqa"), ("wiki_qa", None),
    # structure to text
    ("common_gen", None), ("wiki_bio", None),
    # sentiment
    ("amazon_polarity", None), ("app_reviews", None), ("imdb", None), ("rotten_tomatoes", None),
    ("yelp_review_full", None),
    # summarisation
    ("cnn_dailymail", "3.0.0"), ("gigaword", None), ("multi_news", None), ("samsum", None), ("xsum", None),
    # topic classification
    ("ag_news", None), ("dbpedia_14", None), ("trec", None),
    # paraphrase identification
    ("glue", "mrpc"), ("glue", "qqp"), ("paws", "labeled_final"),
)

_OFFLINE_VALUES = {"1", "on", "yes", "true"}


class HubUnavailableError(RuntimeError):
    """The hub cannot be reached (offline mode or no network); the message says what to do instead."""


def hub_is_offline() -> bool:
    """``True`` when ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` asks for offline mode."""
    return any(
        os.environ.get(name, "").strip().lower() in _OFFLINE_VALUES for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub host (``$HF_ENDPOINT`` or huggingface.co) opens in ``timeout`` s."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_hub(what: str, *, local_hint: str = "use the local --data-dir layout instead", timeout: float = 3.0) -> None:
    """Raise `HubUnavailableError` at once when ``what`` cannot be fetched from the hub."""
    if hub_is_offline():
        raise HubUnavailableError(f"cannot load {what}: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set; {local_hint}")
    if not hub_reachable(timeout):
        raise HubUnavailableError(f"cannot load {what}: the hub does not answer (no network?); {local_hint}")


@contextmanager
def _hub_errors(what: str, local_hint: str) -> Iterator[None]:
    """Turn ``datasets`` / ``huggingface_hub`` connection failures into `HubUnavailableError`."""
    try:
        yield
    except (ConnectionError, TimeoutError, socket.timeout) as error:
        raise HubUnavailableError(f"cannot load {what}: {error}; {local_hint}") from error
    except OSError as error:  # requests' ConnectionError is an OSError subclass
        if "connect" in str(error).lower() or "offline" in str(error).lower():
            raise HubUnavailableError(f"cannot load {what}: {error}; {local_hint}") from error
        raise


def load_hub_rows(task: str | Task, split: str | None = None, **load_kwargs: Any) -> list[dict[str, Any]]:
    """Raw rows of a registry task from the hub (field format as the templates expect).

    Args:
        task: registry name (or `Task`).
        split: hub split; defaults to the task's ``eval_split``.
        **load_kwargs: passed to ``datasets.load_dataset`` (``data_dir=`` for Story Cloze,
            ``cache_dir=``, ``revision=``).
    """
    task = task if isinstance(task, Task) else get_task(task)
    split = split or task.eval_split
    what = f"{task.hub_id}/{task.hub_config or ''} [{split}]"
    hint = "use the local --data-dir layout (t0_fewshot/, t0_validation/) instead"
    require_hub(what, local_hint=hint)
    import datasets

    with _hub_errors(what, hint):
        dataset = datasets.load_dataset(task.hub_id, task.hub_config, split=split, **load_kwargs)
    return [dict(row) for row in dataset]


def p3_prefix(dataset: str, subset: str | None) -> str:
    """The start of every P3 configuration name of a dataset: ``"glue_mrpc_"``, ``"dream_"``."""
    return f"{dataset}_{subset}_" if subset else f"{dataset}_"


def p3_template_configs(
    datasets_: Sequence[tuple[str, str | None]] = T0_TRAIN_DATASETS, *, config_names: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """P3 configuration names of each training dataset, keyed by its prefix.

    Evaluation-only variants (``*_score_eval``) are dropped. A prefix that is a strict prefix
    of another dataset's (none in T0's list) would over-match; the longest prefix wins.

    Args:
        datasets_: (dataset, subset) pairs.
        config_names: P3's configuration names; fetched from the hub when ``None``.
    """
    if config_names is None:
        require_hub(P3_ID, local_hint="P3 has no local copy in this project; pre-train with --preset tiny")
        import datasets

        with _hub_errors(P3_ID, "pre-train with --preset tiny"):
            config_names = datasets.get_dataset_config_names(P3_ID)
    prefixes = sorted((p3_prefix(d, s) for d, s in datasets_), key=len, reverse=True)
    grouped: dict[str, list[str]] = {prefix: [] for prefix in prefixes}
    for name in sorted(config_names):
        if name.endswith("_score_eval"):
            continue
        for prefix in prefixes:
            if name.startswith(prefix):
                grouped[prefix].append(name)
                break
    for prefix, names in grouped.items():
        if not names:
            logger.warning("P3 has no configuration starting with %r", prefix)
    return grouped


def p3_example(row: dict[str, Any], *, task_id: int, task: str, template: str) -> Example:
    """One P3 row as an `Example`: its answer choices when it has them, else the target alone."""
    target = row["targets_pretokenized"].strip()
    choices = [choice.strip() for choice in (row.get("answer_choices") or [])]
    if target in choices:
        return Example(task_id, row["inputs_pretokenized"].strip(), tuple(choices), choices.index(target), task, template)
    return Example(task_id, row["inputs_pretokenized"].strip(), (target,), 0, task, template)


def load_p3_mixture(
    index: TaskIndex,
    *,
    datasets_: Sequence[tuple[str, str | None]] = T0_TRAIN_DATASETS,
    split: str = "train",
    per_dataset_cap: int = P3_PER_DATASET_CAP,
    config_names: Sequence[str] | None = None,
    shuffle_seed: int | None = 0,
    **load_kwargs: Any,
) -> list[Example]:
    """The T0 training mixture from P3, each template capped at ``per_dataset_cap // n_templates``.

    Args:
        index: assigns task ids; templates-as-tasks keys are P3 configuration names,
            datasets-as-tasks keys the dataset prefix without its trailing ``_``.
        datasets_: (dataset, subset) pairs (default: T0's 38).
        split: P3 split.
        per_dataset_cap: examples per dataset before the split over templates.
        config_names: P3 configuration names, to skip listing them on the hub.
        shuffle_seed: a template over its cap keeps a random subset drawn with this seed;
            ``None`` keeps its first rows.
        **load_kwargs: passed to ``datasets.load_dataset``.
    """
    configs = p3_template_configs(datasets_, config_names=config_names)
    n_templates = sum(len(names) for names in configs.values())
    logger.info("P3 mixture: %d datasets, %d templates", len(configs), n_templates)
    import datasets

    examples: list[Example] = []
    for prefix, names in configs.items():
        if not names:
            continue
        cap = per_dataset_cap // len(names)
        dataset_name = prefix.rstrip("_")
        for name in names:
            with _hub_errors(f"{P3_ID}/{name}", "pre-train with --preset tiny"):
                rows = datasets.load_dataset(P3_ID, name, split=split, **load_kwargs)
            if len(rows) > cap:
                if shuffle_seed is not None:
                    rows = rows.shuffle(seed=shuffle_seed)
                rows = rows.select(range(cap))
            task_id = index.add(name if index.mode == "templates" else dataset_name)
            examples.extend(p3_example(dict(row), task_id=task_id, task=dataset_name, template=name) for row in rows)
    return examples

