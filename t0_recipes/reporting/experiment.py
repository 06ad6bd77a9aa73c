"""One experiment, every method: run records -> medians, paired-bootstrap intervals, JSON + Markdown + PNG.

An experiment runs every adapter method through one protocol in three variants:

* ``fewshot``: multi-task pre-training, then few-shot adaptation on each held-out task;
* ``zeroshot``: multi-task pre-training, no few-shot training (uniform / average routing);
* ``no_pretrain``: few-shot adaptation of a fresh adapter;
* ``zeroshot_arrow``, ``zeroshot_arrow_task`` (routed methods with skills): multi-task
  pre-training, the new task routed without training by Arrow per token, or by a routing row set
  from its unlabeled shots (`t0_recipes.training.zero_shot_routing`); compared per method with
  ``zeroshot`` (uniform averaging) and ``fewshot`` by the same paired bootstrap (``routing``).

Each (method, variant) run writes one *run record* (``<anything>.run.json``)::

    {"method": "tensorpoly_i", "variant": "fewshot", "mode": "full",
     "results": [{"task": "rte", "seed": 42, "accuracy": 0.61, "n": 277, "correct": [1, 0, ...]}, ...],
     "wall_time_s": 312.5, "config": {...}}

``correct`` is the 0/1 outcome of every evaluation example, in one fixed order per task (the
protocol evaluates the same rows for every seed and every method), so examples pair across
methods, variants and seeds. Every number of the report is computed from ``correct``.

Statistics, with :math:`a_{m,t,s}` the accuracy of method :math:`m` on task :math:`t`, seed :math:`s`:

* per task: :math:`\\tilde a_{m,t} = \\operatorname{median}_s a_{m,t,s}` with the seeds' min, max,
  quartiles and standard deviation;
* per method: :math:`A_m = \\frac{1}{|T|} \\sum_t \\tilde a_{m,t}` (the paper's ``ACC``), over all
  tasks and, apart, over the T0 tasks alone when the run also evaluated a held-out cluster
  taken from ``t0_train`` (`t0_recipes.data.holdout`: not T0 tasks, labelled so in every table);
* against the baseline :math:`b` (LoRA) of the same variant: :math:`\\Delta_m = A_m - A_b` over
  the tasks both ran, with a paired bootstrap interval. Replicate :math:`r` draws the evaluation
  examples of each task with replacement, once per task (``n_boot x n`` indices, shared by every
  method and seed, which is what pairs them), recomputes every :math:`a_{m,t,s}` on the draw,
  then :math:`\\Delta_m^{(r)}`; the interval is the 2.5 / 97.5 percentiles of the replicates.
  It measures the evaluation-sample uncertainty of the difference given these seeds. With a
  held-out cluster, :math:`\\Delta_m` is given over the T0 tasks and over all tasks.

A draw is a matrix of counts ``w`` (``n_boot x n``, how often each example was drawn), so the
accuracies of all (method, seed) columns ``c`` (``n x k``) of a task come from one product
``w @ c / n`` (``r n, n k -> r k``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from t0_recipes.data.tasks import HELD_OUT, TASKS
from tensoradapt.atomic import atomic_write
from tensoradapt.config import METHOD_LABELS, METHODS

__all__ = [
    "CLUSTER_LABEL",
    "DEFAULT_N_CHOICES",
    "ROUTING_VARIANTS",
    "VARIANTS",
    "bootstrap_counts",
    "load_run_records",
    "main",
    "markdown_table",
    "paired_mean_difference",
    "percentile_interval",
    "plot_experiment",
    "summarize_experiment",
    "validate_run_record",
    "write_experiment",
]

logger = logging.getLogger(__name__)

#: The three variants of an experiment, in report order, with the label the report prints.
VARIANTS: dict[str, str] = {
    "fewshot": "few-shot (pre-trained, then few-shot)",
    "zeroshot": "zero-shot (pre-trained, no few-shot training)",
    "zeroshot_arrow": "zero-shot (Arrow): pre-trained, every token routed by Arrow, no training",
    "zeroshot_arrow_task": "zero-shot (Arrow task row): pre-trained, a routing row from the unlabeled shots, "
                           "no training",
    "no_pretrain": "no pre-training (few-shot from a fresh adapter)",
}
_SHORT = {"fewshot": "few-shot", "zeroshot": "zero-shot", "zeroshot_arrow": "zero-shot (Arrow)",
          "zeroshot_arrow_task": "zero-shot (Arrow task row)", "no_pretrain": "no pre-training"}
#: The zero-shot routings compared, per method, with uniform averaging (``zeroshot``) and few-shot training.
ROUTING_VARIANTS: tuple[str, ...] = ("zeroshot_arrow", "zeroshot_arrow_task")

#: Answer choices per task (chance accuracy is ``1 / n_choices``): the task registry's figures
#: (rte 2, cb 3, copa 2, wic 2, wsc 2, anli 3, winogrande 2, ag_news 4, trec 6, ...).
DEFAULT_N_CHOICES: dict[str, int] = {task.name: task.n_choices for task in TASKS.values()}
#: What a task outside the T0 held-out set is in an experiment: a pre-training task held out.
CLUSTER_LABEL = "held-out cluster from t0_train (not a T0 task)"

_RECORD_KEYS = ("method", "variant", "results")
_RESULT_KEYS = ("task", "seed", "accuracy", "correct")
_ACCURACY_TOLERANCE = 1e-6
_SOURCE = "_source"  # where a loaded record came from (for error messages), set by load_run_records


# ---------------------------------------------------------------------------------------------
# Loading and validation


def _where(record: Mapping[str, Any], index: int | None = None) -> str:
    if _SOURCE in record:
        return str(record[_SOURCE])
    if index is not None:
        return f"record {index}"
    return "run record"


def validate_run_record(record: Any, source: str = "run record") -> None:
    """Raise ``ValueError`` naming ``source`` and the key when ``record`` breaks the schema.

    Checks: the keys ``method``, ``variant``, ``results``; a known variant; per result ``task``
    (str), ``seed`` (int or null), ``accuracy`` (equal to the mean of ``correct`` within 1e-6),
    ``correct`` (a non-empty list of 0/1) and, when given, ``n == len(correct)``; no (task, seed)
    twice. ``mode``, ``wall_time_s`` and ``config`` are optional.
    """
    if not isinstance(record, Mapping):
        raise ValueError(f"{source}: a run record is a JSON object, got {type(record).__name__}")
    for key in _RECORD_KEYS:
        if key not in record:
            raise ValueError(f"{source}: run record lacks key {key!r}")
    method, variant = record["method"], record["variant"]
    if not isinstance(method, str) or not method:
        raise ValueError(f"{source}: key 'method' must be a non-empty string, got {method!r}")
    if variant not in VARIANTS:
        raise ValueError(f"{source}: key 'variant' is {variant!r}; choose one of {list(VARIANTS)}")
    results = record["results"]
    if not isinstance(results, list) or not results:
        raise ValueError(f"{source}: key 'results' must be a non-empty list")
    wall = record.get("wall_time_s")
    if wall is not None and (isinstance(wall, bool) or not isinstance(wall, (int, float))):
        raise ValueError(f"{source}: key 'wall_time_s' must be a number or null, got {wall!r}")
    seen: set[tuple[str, int | None]] = set()
    for i, result in enumerate(results):
        where = f"{source}: results[{i}]"
        if not isinstance(result, Mapping):
            raise ValueError(f"{where} must be an object")
        for key in _RESULT_KEYS:
            if key not in result:
                raise ValueError(f"{where} lacks key {key!r}")
        task, seed, accuracy, correct = (result[key] for key in _RESULT_KEYS)
        if not isinstance(task, str) or not task:
            raise ValueError(f"{where}: key 'task' must be a non-empty string, got {task!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"{where}: key 'seed' must be an integer or null, got {seed!r}")
        where = f"{source}: results[{i}] (task {task!r}, seed {seed})"
        if (task, seed) in seen:
            raise ValueError(f"{where}: a second result for the same task and seed")
        seen.add((task, seed))
        if not isinstance(correct, list) or not correct:
            raise ValueError(f"{where}: key 'correct' must be a non-empty list of 0/1")
        if any(isinstance(value, str) or value not in (0, 1) for value in correct):
            raise ValueError(f"{where}: key 'correct' must hold only 0/1 (or true/false)")
        if "n" in result and result["n"] != len(correct):
            raise ValueError(f"{where}: key 'n' is {result['n']!r} but 'correct' has {len(correct)} entries")
        if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)):
            raise ValueError(f"{where}: key 'accuracy' must be a number, got {accuracy!r}")
        mean = sum(correct) / len(correct)
        if abs(accuracy - mean) > _ACCURACY_TOLERANCE:
            raise ValueError(
                f"{where}: key 'accuracy' is {accuracy!r} but the mean of 'correct' is {mean!r}; "
                "the report computes everything from 'correct', so they must agree"
            )


def _record_paths(paths_or_dir: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    if isinstance(paths_or_dir, (str, os.PathLike)):
        root = Path(paths_or_dir)
        if root.is_dir():
            paths = sorted(root.rglob("*.run.json"))
            if not paths:
                raise ValueError(f"no *.run.json under {root}")
            return paths
        return [root]
    paths = [Path(path) for path in paths_or_dir]
    if not paths:
        raise ValueError("no run-record paths given")
    return paths


def load_run_records(paths_or_dir: str | os.PathLike | Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """Read and validate run records.

    Args:
        paths_or_dir: a folder (every ``*.run.json`` under it, recursively, in path order), one
            record file, or several.

    Returns:
        The records as dicts, each with ``"_source"`` (its path) added for later error messages.

    Raises:
        ValueError: a file is not JSON or breaks the schema (the message names the file and the
            key; see `validate_run_record`), or a folder holds no record.
        FileNotFoundError: a named file does not exist.
    """
    records = []
    for path in _record_paths(paths_or_dir):
        text = path.read_text(encoding="utf-8")
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        validate_run_record(record, str(path))
        record[_SOURCE] = str(path)
        records.append(record)
    return records


# ---------------------------------------------------------------------------------------------
# Statistics


def _order(names: Iterable[str], preferred: Sequence[str]) -> list[str]:
    names = set(names)
    return [name for name in preferred if name in names] + sorted(names - set(preferred))


def _seed_key(seed: int | None) -> str:
    return "none" if seed is None else str(seed)


def _collect(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(variant, method): {"tasks": {task: {seed: bool[n]}}, ...}}`` with the pairing checked."""
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    for index, record in enumerate(records):
        where = _where(record, index)
        validate_run_record(record, where)
        key = (record["variant"], record["method"])
        if key in runs:
            raise ValueError(
                f"{where}: a second run record for method {key[1]!r}, variant {key[0]!r} "
                f"(mode {record.get('mode')!r}; the first, mode {runs[key]['mode']!r}, is {runs[key]['source']}): "
                "an experiment has one record per (method, variant)"
            )
        tasks: dict[str, dict[int | None, np.ndarray]] = {}
        for result in record["results"]:
            tasks.setdefault(result["task"], {})[result["seed"]] = np.asarray(result["correct"], dtype=bool)
        runs[key] = {
            "source": where,
            "mode": record.get("mode"),
            "wall_time_s": record.get("wall_time_s"),
            "config": record.get("config"),
            "tasks": tasks,
        }
    # Pairing: within a variant, every method and seed of a task scored the same examples.
    lengths: dict[tuple[str, str], tuple[int, str]] = {}
    for (variant, method), run in runs.items():
        for task, seeds in run["tasks"].items():
            for seed, correct in seeds.items():
                first = lengths.setdefault((variant, task), (len(correct), f"{run['source']} ({method}, seed {seed})"))
                if len(correct) != first[0]:
                    raise ValueError(
                        f"{run['source']} ({method}, seed {seed}): task {task!r} has {len(correct)} entries in "
                        f"'correct' but {first[1]} has {first[0]}; the examples of a task must pair across "
                        "methods and seeds (same evaluation set, same order)"
                    )
    return runs


def bootstrap_counts(task: str, n: int, *, n_boot: int, seed: int) -> np.ndarray:
    """How often each of task ``task``'s ``n`` examples is drawn in each of ``n_boot`` resamples.

    The draw comes from a stream of ``seed``, the task's name and ``n``, so every comparison of
    the same examples (across methods, variants, seeds or benchmarks) resamples them alike.

    Returns:
        ``(n_boot, n)``, float64; row ``i`` sums to ``n``.
    """
    draws = np.random.default_rng([seed, zlib.crc32(task.encode()), n]).integers(0, n, size=(n_boot, n))
    flat = (draws + (np.arange(n_boot) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def percentile_interval(values: np.ndarray, estimate: float) -> dict[str, float]:
    """``{"estimate", "low", "high"}``: ``estimate`` and the 2.5 / 97.5 percentiles of the replicates ``values``."""
    low, high = np.percentile(values, [2.5, 97.5])
    return {"estimate": float(estimate), "low": float(low), "high": float(high)}


def paired_mean_difference(
    ours: Mapping[str, Sequence[int]], reference: Mapping[str, Sequence[int]], *, n_boot: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Mean over ``reference``'s tasks of our accuracy minus the reference's, with a paired bootstrap 95 % interval.

    One run per side (no seeds): ``ours[task]`` and ``reference[task]`` are the right / wrong
    (1 / 0) outcomes of the same examples in the same order. Each replicate resamples every
    task's examples alone (`bootstrap_counts`, the same draw for both sides), and tasks weigh
    equally whatever their size.
    """
    replicates = np.zeros(n_boot)
    estimate = 0.0
    for task in reference:
        a, b = np.asarray(ours[task], dtype=np.float64), np.asarray(reference[task], dtype=np.float64)
        if a.shape != b.shape:
            raise ValueError(f"task {task!r}: {a.size} outcomes against the reference's {b.size}; they must pair")
        replicates += bootstrap_counts(task, a.size, n_boot=n_boot, seed=seed) @ (a - b) / a.size
        estimate += float((a - b).mean())
    return percentile_interval(replicates / len(reference), estimate / len(reference))


def _task_stats(seeds: Mapping[int | None, np.ndarray]) -> dict[str, Any]:
    accuracies = np.array([correct.mean() for correct in seeds.values()])
    distinct = {correct.tobytes() for correct in seeds.values()}
    q25, q75 = np.percentile(accuracies, [25, 75])
    return {
        "seeds": {_seed_key(seed): float(acc) for seed, acc in zip(seeds, accuracies)},
        "median": float(np.median(accuracies)),
        "min": float(accuracies.min()),
        "max": float(accuracies.max()),
        "q25": float(q25),
        "q75": float(q75),
        "iqr": float(q75 - q25),
        "std": float(accuracies.std(ddof=1)) if len(accuracies) > 1 else 0.0,
        "n_seeds": len(accuracies),
        "n_distinct": len(distinct),  # 1 when a zero-shot result is repeated for every seed
        "n_examples": int(next(iter(seeds.values())).size),
    }


def summarize_experiment(
    records: Sequence[Mapping[str, Any]],
    *,
    baseline: str = "lora",
    n_boot: int = 2000,
    seed: int = 0,
    n_choices: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Medians over seeds, means over tasks and paired-bootstrap intervals against ``baseline``.

    Args:
        records: run records (see the module docstring; `load_run_records` reads them).
        baseline: the method every other method of the same variant is compared with.
        n_boot: bootstrap resamples.
        seed: seed of the resampling (each task draws from its own stream, derived from
            ``seed`` and the task name, so adding a task changes no other task's draws).
        n_choices: answer choices per task (chance is ``1 / n_choices``); defaults to
            `DEFAULT_N_CHOICES`, and a task missing from it has no chance level.

    Returns:
        A JSON-able dict: ``baseline``, ``n_boot``, ``seed``, ``confidence`` (0.95),
        ``methods`` / ``variants`` / ``tasks`` (report order: the T0 tasks, then the others),
        ``t0_tasks`` and ``cluster_tasks`` (the tasks outside the T0 held-out set: a cluster
        held out of ``t0_train``, described by ``cluster_label``), ``chance`` (``{task: p or
        None}``), ``chance_mean`` (all tasks), ``chance_mean_t0`` and ``runs[variant][method]``
        with ``tasks[task]`` (``seeds`` ``{seed: acc}``, ``median``, ``min``, ``max``, ``q25``,
        ``q75``, ``iqr``, ``std``, ``n_seeds``, ``n_distinct``, ``n_examples``), ``mean`` and
        ``n_tasks`` (over all its tasks), ``spread_mean`` (``{"min", "max"}``: the mean over
        tasks of the seeds' min and max), ``t0`` (``{"mean", "n_tasks", "spread_mean"}`` over
        its T0 tasks alone; ``None`` without one), ``mode``, ``wall_time_s``, ``source``,
        ``config`` and ``delta``: ``None`` for the baseline or when the variant has no baseline
        run, else ``{"baseline", "tasks" (the tasks both ran), "mean": {"estimate", "low",
        "high"}, "t0": {...} over the T0 tasks both ran (``None`` without one), "per_task":
        {task: {...}}}`` (fractions); ``routing``: per method with a zero-shot routing variant, each
        of its zero-shot and few-shot variants against uniform averaging and few-shot training
        (`_routing_deltas`).

    Raises:
        ValueError: a record breaks the schema, two records share (method, variant), or the
            ``correct`` vectors of one task differ in length within a variant.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not records:
        raise ValueError("records is empty: nothing to summarize")
    n_choices = dict(DEFAULT_N_CHOICES if n_choices is None else n_choices)
    runs = _collect(records)
    variants = _order({variant for variant, _ in runs}, list(VARIANTS))
    methods = _order({method for _, method in runs}, METHODS)
    tasks = _order({task for run in runs.values() for task in run["tasks"]}, HELD_OUT)
    t0_tasks = [task for task in tasks if task in HELD_OUT]
    chance = {task: (1.0 / n_choices[task] if n_choices.get(task) else None) for task in tasks}

    out_runs: dict[str, dict[str, Any]] = {}
    for variant in variants:
        entries: dict[str, Any] = {}
        for method in methods:
            if (variant, method) not in runs:
                continue
            run = runs[variant, method]
            stats = {task: _task_stats(run["tasks"][task]) for task in tasks if task in run["tasks"]}
            t0_stats = [stats[task] for task in t0_tasks if task in stats]
            entries[method] = {
                "tasks": stats,
                **_group_means(list(stats.values())),
                "t0": _group_means(t0_stats) if t0_stats else None,
                "mode": run["mode"],
                "wall_time_s": run["wall_time_s"],
                "source": run["source"],
                "config": run["config"],
                "delta": None,
            }
        out_runs[variant] = entries

    boot = _bootstrap_medians(runs, baseline=baseline, tasks=tasks, n_boot=n_boot, seed=seed)
    for variant, entries in out_runs.items():
        if baseline in entries:
            _fill_deltas(entries, boot.get(variant, {}), baseline=baseline, tasks=tasks)
    routing = _routing_deltas(runs, out_runs, methods=methods, tasks=tasks, n_boot=n_boot, seed=seed)

    return {
        "baseline": baseline,
        "n_boot": n_boot,
        "seed": seed,
        "confidence": 0.95,
        "methods": methods,
        "variants": variants,
        "tasks": tasks,
        "t0_tasks": t0_tasks,
        "cluster_tasks": [task for task in tasks if task not in HELD_OUT],
        "cluster_label": CLUSTER_LABEL,
        "chance": chance,
        "chance_mean": _mean_known(chance[task] for task in tasks),
        "chance_mean_t0": _mean_known(chance[task] for task in t0_tasks),
        "runs": out_runs,
        "routing": routing,
    }


def _routing_deltas(
    runs: Mapping[tuple[str, str], Mapping[str, Any]],
    out_runs: Mapping[str, Mapping[str, Any]],
    *,
    methods: Sequence[str],
    tasks: Sequence[str],
    n_boot: int,
    seed: int,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per method with a zero-shot routing (`ROUTING_VARIANTS`), each variant against the same method's
    uniform averaging (``zeroshot``) and few-shot training (``fewshot``).

    The same bootstrap as the Δ vs the baseline, within one method across variants: a task's draw
    comes from the same stream (``seed``, the task name, ``n``), so its examples pair across
    uniform, Arrow, Arrow task row and few-shot as they pair across methods. A task whose variants
    scored different numbers of examples is left out of the comparison (logged).

    Returns:
        ``{method: {variant: {"vs_zeroshot": delta, "vs_fewshot": delta}}}`` for the variants
        ``zeroshot``, the routings and ``fewshot`` that the method ran; ``delta`` is ``None`` for a
        variant against itself or a missing one, else ``{"reference", "tasks", "mean", "t0"}`` as
        the ``delta`` of `summarize_experiment`.
    """
    routed = [m for m in methods if any((variant, m) in runs for variant in ROUTING_VARIANTS)]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method in routed:
        present = [v for v in ("zeroshot", *ROUTING_VARIANTS, "fewshot") if (v, method) in runs]
        boot: dict[str, dict[str, np.ndarray]] = {}
        for task in tasks:
            having = [v for v in present if task in runs[v, method]["tasks"]]
            sizes = {next(iter(runs[v, method]["tasks"][task].values())).size for v in having}
            if len(having) < 2:
                continue
            if len(sizes) > 1:
                logger.warning("%s, %s: the variants scored %s examples; left out of the routing comparison",
                               method, task, sorted(sizes))
                continue
            n = sizes.pop()
            weights = bootstrap_counts(task, n, n_boot=n_boot, seed=seed)
            for variant in having:
                columns = np.stack(list(runs[variant, method]["tasks"][task].values()), axis=1).astype(np.float64)
                boot.setdefault(task, {})[variant] = np.median(weights @ columns / n, axis=1)  # r n, n k -> r k -> r
        entries: dict[str, dict[str, Any]] = {}
        for variant in present:
            ours = out_runs[variant][method]["tasks"]
            deltas: dict[str, Any] = {}
            for reference in ("zeroshot", "fewshot"):
                if reference == variant or reference not in present:
                    deltas[f"vs_{reference}"] = None
                    continue
                theirs = out_runs[reference][method]["tasks"]
                common = [t for t in tasks if t in boot and variant in boot[t] and reference in boot[t]]
                common_t0 = [t for t in common if t in HELD_OUT]
                deltas[f"vs_{reference}"] = None if not common else {
                    "reference": reference,
                    "tasks": common,
                    "mean": _mean_delta(common, boot, ours, theirs, method=variant, baseline=reference),
                    "t0": _mean_delta(common_t0, boot, ours, theirs, method=variant, baseline=reference)
                    if common_t0 else None,
                }
            entries[variant] = deltas
        out[method] = entries
    return out


def _group_means(stats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``mean`` (of the medians), ``n_tasks`` and ``spread_mean`` (of the seeds' min and max) over ``stats``."""
    return {
        "mean": float(np.mean([s["median"] for s in stats])),
        "n_tasks": len(stats),
        "spread_mean": {
            "min": float(np.mean([s["min"] for s in stats])),
            "max": float(np.mean([s["max"] for s in stats])),
        },
    }


def _mean_known(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not ``None`` (``None`` when none is)."""
    known = [value for value in values if value is not None]
    return float(np.mean(known)) if known else None


def _bootstrap_medians(
    runs: Mapping[tuple[str, str], Mapping[str, Any]],
    *,
    baseline: str,
    tasks: Sequence[str],
    n_boot: int,
    seed: int,
) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """``{variant: {task: {method: (n_boot,) medians over seeds}}}`` where the baseline ran the task.

    One draw per task (its own stream from ``seed`` and the task name), shared by every variant,
    method and seed; one product per (task, variant) scores all their columns on it.
    """
    boot: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for task in tasks:
        groups: dict[str, list[str]] = {}
        for variant, method in runs:
            if task in runs[variant, method]["tasks"]:
                groups.setdefault(variant, []).append(method)
        groups = {v: ms for v, ms in groups.items() if baseline in ms and len(ms) > 1}
        if not groups:
            continue
        weights: dict[int, np.ndarray] = {}  # by n: variants of one task normally share it
        for variant, having in groups.items():
            columns = [c for method in having for c in runs[variant, method]["tasks"][task].values()]
            n = columns[0].size
            if n not in weights:
                weights[n] = bootstrap_counts(task, n, n_boot=n_boot, seed=seed)
            accuracy = weights[n] @ np.stack(columns, axis=1).astype(np.float64) / n  # r n, n k -> r k
            medians, start = {}, 0
            for method in having:
                k = len(runs[variant, method]["tasks"][task])
                medians[method] = np.median(accuracy[:, start:start + k], axis=1)
                start += k
            boot.setdefault(variant, {})[task] = medians
    return boot


def _fill_deltas(
    entries: dict[str, Any],
    boot_median: Mapping[str, Mapping[str, np.ndarray]],
    *,
    baseline: str,
    tasks: Sequence[str],
) -> None:
    """Fill ``entries[method]["delta"]`` for every method but ``baseline`` (one variant)."""
    base = entries[baseline]["tasks"]
    for method, entry in entries.items():
        if method == baseline:
            continue
        common = [task for task in tasks if task in boot_median and method in boot_median[task]]
        if not common:
            continue
        per_task = {}
        for task in common:
            replicates = boot_median[task][method] - boot_median[task][baseline]
            per_task[task] = percentile_interval(replicates, entry["tasks"][task]["median"] - base[task]["median"])
        common_t0 = [task for task in common if task in HELD_OUT]
        entry["delta"] = {
            "baseline": baseline,
            "tasks": common,
            "mean": _mean_delta(common, boot_median, entry["tasks"], base, method=method, baseline=baseline),
            "t0": _mean_delta(common_t0, boot_median, entry["tasks"], base, method=method, baseline=baseline)
            if common_t0 else None,
            "per_task": per_task,
        }


def _mean_delta(
    common: Sequence[str],
    boot_median: Mapping[str, Mapping[str, np.ndarray]],
    ours: Mapping[str, Any],
    theirs: Mapping[str, Any],
    *,
    method: str,
    baseline: str,
) -> dict[str, float]:
    """The interval of ``method``'s mean over ``common`` minus ``baseline``'s (``ours``/``theirs``: task stats)."""
    # Mean over tasks of the method minus that of the baseline (not a mean of per-task
    # differences), so a method identical to the baseline gives exactly 0 in every replicate.
    replicates = (np.mean([boot_median[task][method] for task in common], axis=0)
                  - np.mean([boot_median[task][baseline] for task in common], axis=0))
    estimate = np.mean([ours[t]["median"] for t in common]) - np.mean([theirs[t]["median"] for t in common])
    return percentile_interval(replicates, float(estimate))


# ---------------------------------------------------------------------------------------------
# Markdown


def _label(method: str, entry: Mapping[str, Any] | None = None) -> str:
    label = METHOD_LABELS.get(method, method)
    mode = entry.get("mode") if entry else None
    return label if mode in (None, "full") else f"{label} ({mode})"


def _capitalized(text: str) -> str:
    """``text`` with its first letter upper-case, the rest as it is ("Arrow" stays)."""
    return text[:1].upper() + text[1:]


def _column(task: str) -> str:
    return TASKS[task].column if task in TASKS else task


def _pct(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _delta_cell(interval: Mapping[str, float] | None) -> str:
    """``+1.2 [-0.4, +2.9]`` in percentage points; bold when the interval excludes 0."""
    if interval is None:
        return "–"
    text = f"{100 * interval['estimate']:+.1f} [{100 * interval['low']:+.1f}, {100 * interval['high']:+.1f}]"
    return f"**{text}**" if interval["low"] > 0 or interval["high"] < 0 else text


#: A group of tasks a mean runs over: its key, mean-column header and Δ-column suffix.
_Group = tuple[str, str, str]


def _groups(summary: Mapping[str, Any]) -> list[_Group]:
    """One mean over all tasks; with a held-out cluster, the T0 tasks' mean before it."""
    if summary.get("cluster_tasks"):
        return [("t0", "T0 mean", ", T0 tasks"), ("all", "all-task mean", ", all tasks")]
    return [("all", "mean", "")]


def _group_stats(entry: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    """``{"mean", "n_tasks", "spread_mean"}`` of a run entry over the group ``key`` (``None``: no task of it)."""
    return entry if key == "all" else entry.get("t0")


def _group_delta(delta: Mapping[str, Any] | None, key: str) -> Mapping[str, float] | None:
    """The interval of a Δ over the group ``key``."""
    if delta is None:
        return None
    return delta["mean"] if key == "all" else delta.get("t0")


def _in_group(task: str, key: str) -> bool:
    return key == "all" or task in HELD_OUT


def _seed_counts(summary: Mapping[str, Any], variant: str) -> str:
    counts = sorted({s["n_seeds"] for e in summary["runs"][variant].values() for s in e["tasks"].values()})
    distinct = sorted({s["n_distinct"] for e in summary["runs"][variant].values() for s in e["tasks"].values()})
    text = " or ".join(map(str, counts)) + " seed" + ("s" if counts != [1] else "")
    if distinct == [1] and counts != [1]:
        text += " (one result repeated: nothing is trained per seed)"
    return text


def markdown_table(summary: Mapping[str, Any]) -> str:
    """The summary as Markdown: a headline table, one table per variant, the runs.

    Per variant: rows = methods, columns = the tasks' medians over seeds (%), their mean and the
    mean's difference from the baseline in percentage points with its paired-bootstrap 95 %
    interval (bold when it excludes 0). The columns of a held-out cluster from ``t0_train`` are
    marked ‡ and labelled `CLUSTER_LABEL`; then the means and Δs come twice: over the T0 tasks
    and over all tasks.
    """
    lines = ["# T0 proxy experiment: every method, one protocol", ""]
    lines += _headline(summary)
    lines += _routing_table(summary)
    for variant in summary["variants"]:
        lines += _variant_table(summary, variant)
    lines += _runs_table(summary)
    return "\n".join(lines) + "\n"


def _delta_variant(summary: Mapping[str, Any]) -> str | None:
    variants = summary["variants"]
    return "fewshot" if "fewshot" in variants else (variants[0] if variants else None)


def _cluster_note(summary: Mapping[str, Any], columns: Sequence[str]) -> list[str]:
    """The line naming the ‡ columns of ``columns`` (none without a held-out cluster)."""
    cluster = [task for task in summary.get("cluster_tasks", []) if task in columns]
    if not cluster:
        return []
    named = ", ".join(f"{_column(t)} ({t}, chance {_pct(summary['chance'][t])} %)" for t in cluster)
    return [f"‡ {summary.get('cluster_label', CLUSTER_LABEL)}: {named}. Left out of the pre-training mixture; "
            "each seed's shots come from a fixed shot pool of its t0_train rows, its evaluation rows from the "
            "disjoint rest. T0 mean: the T0 tasks only; all-task mean: every column.", ""]


def _headline(summary: Mapping[str, Any]) -> list[str]:
    """The headline: per method and variant the mean(s) over tasks, and the Δ(s) of one variant."""
    baseline = summary["baseline"]
    base_label = METHOD_LABELS.get(baseline, baseline)
    runs, variants, groups = summary["runs"], summary["variants"], _groups(summary)
    head_variants = [v for v in ("zeroshot", "fewshot", "no_pretrain") if v in variants]
    delta_variant = _delta_variant(summary)
    short = _SHORT.get(delta_variant, delta_variant)
    lines = ["## Headline", "", f"Mean over tasks of the median accuracy over seeds (%); Δ in percentage points "
             f"vs {base_label}.", ""]
    if summary.get("cluster_tasks"):
        cluster = ", ".join(_column(t) for t in summary["cluster_tasks"])
        n_t0 = len(summary["t0_tasks"])
        lines += [f"T0 mean: the {n_t0} T0 held-out task{'s' if n_t0 != 1 else ''}; "
                  f"all-task mean: those and {cluster}, "
                  f"a {summary.get('cluster_label', CLUSTER_LABEL)}.", ""]
    lines += [
        "| method | " + " | ".join(f"{_SHORT.get(v, v)} {header}" for v in head_variants for _, header, _ in groups)
        + " | " + " | ".join(f"{short} Δ vs {base_label}{suffix} [95 % CI]" for _, _, suffix in groups) + " |",
        "|---" * (len(head_variants) * len(groups) + len(groups) + 1) + "|",
    ]
    for method in summary["methods"]:
        cells = []
        for variant in head_variants:
            for key, _, _ in groups:
                stats = _group_stats(runs[variant][method], key) if method in runs[variant] else None
                cells.append(_pct(stats["mean"]) if stats else "–")
        delta = runs[delta_variant].get(method, {}).get("delta") if delta_variant else None
        deltas = ["(baseline)" if method == baseline else _delta_cell(_group_delta(delta, key)) for key, _, _ in groups]
        lines.append(f"| {_label(method)} | " + " | ".join(cells + deltas) + " |")
    chance = {"t0": summary.get("chance_mean_t0"), "all": summary.get("chance_mean")}
    if chance["all"] is not None:
        lines.append("| chance | " + " | ".join(_pct(chance[key]) for _ in head_variants for key, _, _ in groups)
                     + " |" + " |" * len(groups))
    return lines + [""]


def _routing_table(summary: Mapping[str, Any]) -> list[str]:
    """Zero-shot routing of a new task: per method, uniform / Arrow / Arrow task row / few-shot, with Δs."""
    routing = summary.get("routing") or {}
    if not routing:
        return []
    runs, groups = summary["runs"], _groups(summary)
    top_k = sorted({str((entry.get("config") or {}).get("zero_shot_routing", {}).get("top_k", "?")).replace(
        "None", "all") for variant in ROUTING_VARIANTS for entry in runs.get(variant, {}).values()})
    names = {"zeroshot": "uniform averaging (zero-shot)", "zeroshot_arrow": "Arrow",
             "zeroshot_arrow_task": "Arrow task row", "fewshot": "few-shot training"}
    lines = [
        "## Zero-shot routing of a new task",
        "",
        "Each held-out task routed over the pre-trained skills without a gradient step: **uniform averaging** "
        "(a fresh routing row, the skills averaged: the zero-shot variant), **Arrow** (every token routed by "
        "|<x, v_e>| against each skill's top singular direction, softmax over the top k; one result per task) "
        "and the **Arrow task row** (one routing row per seed from the Arrow weights of its few-shot inputs, "
        "labels unused), against **few-shot training** of the same method. Mean over tasks of the median "
        f"over seeds (%); Δ in percentage points vs the same method's uniform averaging and few-shot training "
        f"over the tasks both ran, with a paired bootstrap 95 % interval (the draws of the Δ vs "
        f"{METHOD_LABELS.get(summary['baseline'], summary['baseline'])}). Arrow's k: {', '.join(top_k)}.",
        "",
        "| method | routing | " + " | ".join(header for _, header, _ in groups)
        + " | " + " | ".join(f"Δ vs uniform{suffix} [95 % CI]" for _, _, suffix in groups)
        + " | " + " | ".join(f"Δ vs few-shot{suffix} [95 % CI]" for _, _, suffix in groups) + " |",
        "|---" * (2 + 3 * len(groups)) + "|",
    ]
    for method, entries in routing.items():
        for variant, deltas in entries.items():
            entry = runs[variant][method]
            cells = []
            for key, _, _ in groups:
                stats = _group_stats(entry, key)
                cells.append(_pct(stats["mean"]) if stats else "–")
            for reference in ("zeroshot", "fewshot"):
                delta = deltas[f"vs_{reference}"]
                cells += ["–" if delta is None else _delta_cell(_group_delta(delta, key)) for key, _, _ in groups]
            lines.append(f"| {_label(method)} | {names[variant]} | " + " | ".join(cells) + " |")
    return lines + [""]


def _variant_table(summary: Mapping[str, Any], variant: str) -> list[str]:
    """One variant: per method the median of every task, the mean(s) over tasks and the Δ(s)."""
    baseline = summary["baseline"]
    base_label = METHOD_LABELS.get(baseline, baseline)
    entries, groups = summary["runs"][variant], _groups(summary)
    columns = [t for t in summary["tasks"] if any(t in e["tasks"] for e in entries.values())]
    cluster = set(summary.get("cluster_tasks", []))
    lines = [
        f"## {_capitalized(VARIANTS.get(variant, variant))}",
        "",
        f"Median accuracy (%) over {_seed_counts(summary, variant)} per task.",
        "",
        *_cluster_note(summary, columns),
        "| method | " + " | ".join(_column(t) + (" ‡" if t in cluster else "") for t in columns)
        + " | " + " | ".join(header for _, header, _ in groups)
        + " | " + " | ".join(f"Δ vs {base_label}{suffix} [95 % CI]" for _, _, suffix in groups) + " |",
        "|---" * (len(columns) + 2 * len(groups) + 1) + "|",
    ]
    partial = False
    for method, entry in entries.items():
        cells = [_pct(entry["tasks"][t]["median"]) if t in entry["tasks"] else "–" for t in columns]
        for key, _, _ in groups:
            stats = _group_stats(entry, key)
            mean = _pct(stats["mean"]) if stats else "–"
            if stats and stats["n_tasks"] < sum(_in_group(t, key) for t in columns):
                mean += " †"
                partial = True
            cells.append(mean)
        cells += ["(baseline)" if method == baseline else _delta_cell(_group_delta(entry["delta"], key))
                  for key, _, _ in groups]
        lines.append(f"| {_label(method, entry)} | " + " | ".join(cells) + " |")
    chance = [summary["chance"].get(t) for t in columns]
    means = [_mean_known(c for t, c in zip(columns, chance) if _in_group(t, key)) for key, _, _ in groups]
    lines.append("| chance | " + " | ".join(_pct(c) for c in chance + means) + " |" + " |" * len(groups))
    if baseline not in entries:
        lines += ["", f"No {base_label} run in this variant: no Δ."
                  + (" Its Δs vs the same method's uniform averaging and few-shot training are in "
                     "'Zero-shot routing of a new task'." if variant in ROUTING_VARIANTS else "")]
    if partial:
        lines += ["", "† mean over fewer tasks than the table's columns (a Δ uses only the tasks both methods ran)."]
    return lines + [""]


def _runs_table(summary: Mapping[str, Any]) -> list[str]:
    """Wall time per method and variant, then how the numbers were computed."""
    baseline = summary["baseline"]
    base_label = METHOD_LABELS.get(baseline, baseline)
    runs, variants = summary["runs"], summary["variants"]
    lines = ["## Runs", "", "| method | " + " | ".join(f"{_SHORT.get(v, v)} wall time" for v in variants) + " |"]
    lines.append("|---" * (len(variants) + 1) + "|")
    for method in summary["methods"]:
        cells = []
        for variant in variants:
            wall = runs[variant].get(method, {}).get("wall_time_s")
            cells.append("–" if wall is None else f"{wall / 60:.1f} min")
        lines.append(f"| {_label(method)} | " + " | ".join(cells) + " |")
    delta_variant = _delta_variant(summary)
    if delta_variant is None:
        return lines
    means = ("mean over tasks of the medians (over the T0 tasks, and over all tasks)" if summary.get("cluster_tasks")
             else "mean over tasks of the medians")
    return lines + [
        "",
        f"How the numbers were computed: accuracy per (task, seed) from each evaluation example's "
        f"0/1 outcome; median over the seeds of each task ({_SHORT.get(delta_variant, delta_variant)}: "
        f"{_seed_counts(summary, delta_variant)}); "
        f"{means}; Δ = a method's mean minus {base_label}'s over the tasks both ran, "
        f"with a 95 % percentile interval from a paired bootstrap over evaluation examples "
        f"(n_boot = {summary['n_boot']}, seed {summary['seed']}: each resample draws every task's examples "
        f"with replacement once and scores every method and seed on that same draw). The interval "
        f"covers the evaluation sample, not the choice of seeds. Chance is 1 / number of answer choices.",
    ]


# ---------------------------------------------------------------------------------------------
# Figure


def plot_experiment(summary: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Grouped bars (PNG): per method, the mean accuracy of each variant.

    Error bars run from the mean over tasks of the seeds' minimum to that of their maximum;
    the dashed line is chance (mean over the tasks). With a held-out cluster from ``t0_train``
    there are two panels: the mean over the T0 tasks and over all tasks. The legend sits below
    the axes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = summary["methods"]
    groups = _groups(summary)
    figure, axes = plt.subplots(1, len(groups), figsize=(len(groups) * max(6.0, 1.1 * len(methods) + 2), 4.5),
                                squeeze=False)
    for axis, (key, _, _) in zip(axes[0], groups):
        _plot_group(axis, summary, key)
    axes[0][0].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=4,
                      frameon=False)  # below: no bar hidden
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, format="png")  # explicit: atomic_write's temporary name ends in .tmp
    plt.close(figure)
    return path


def _plot_group(axis: Any, summary: Mapping[str, Any], key: str) -> None:
    """One panel: per method and variant the mean over the group ``key``'s tasks, with the seeds' spread."""
    methods, variants, runs = summary["methods"], summary["variants"], summary["runs"]
    width = 0.8 / max(1, len(variants))
    for i, variant in enumerate(variants):
        xs, heights, low, high = [], [], [], []
        for x, method in enumerate(methods):
            stats = _group_stats(runs[variant][method], key) if method in runs[variant] else None
            if stats is None:
                continue
            xs.append(x + (i - (len(variants) - 1) / 2) * width)
            heights.append(100 * stats["mean"])
            low.append(100 * (stats["mean"] - stats["spread_mean"]["min"]))
            high.append(100 * (stats["spread_mean"]["max"] - stats["mean"]))
        axis.bar(xs, heights, width=width, label=_SHORT.get(variant, variant),
                 yerr=[low, high], capsize=2, error_kw={"elinewidth": 0.8})
    chance = summary.get("chance_mean_t0") if key == "t0" else summary.get("chance_mean")
    if chance is not None:
        axis.axhline(100 * chance, color="black", linestyle="dashed", linewidth=1, label="chance (mean over tasks)")
    axis.set_xticks(range(len(methods)), [METHOD_LABELS.get(m, m) for m in methods])
    axis.set_ylabel("mean accuracy over tasks (%)")
    axis.set_ylim(0, 100)
    if not summary.get("cluster_tasks"):
        title = f"T0 proxy: {len(summary['tasks'])} held-out task(s)"
    elif key == "t0":
        title = f"T0 proxy: the {len(summary['t0_tasks'])} T0 held-out task(s)"
    else:
        cluster = ", ".join(_column(t) for t in summary["cluster_tasks"])
        title = f"T0 proxy: all {len(summary['tasks'])} tasks (T0 + held-out cluster from t0_train: {cluster})"
    axis.set_title(f"{title}\nmedian over seeds (bars: seeds' min-max, mean over tasks)", fontsize=9)


# ---------------------------------------------------------------------------------------------
# Files and command line


def write_experiment(summary: Mapping[str, Any], out_dir: str | os.PathLike, stem: str = "t0_proxy") -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` under ``out_dir``, each atomically."""
    out = Path(out_dir)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "png": out / f"{stem}.png"}
    text = json.dumps(summary, indent=2, allow_nan=False) + "\n"
    atomic_write(paths["json"], _readable(lambda tmp: Path(tmp).write_text(text, encoding="utf-8")))
    markdown = markdown_table(summary)
    atomic_write(paths["markdown"], _readable(lambda tmp: Path(tmp).write_text(markdown, encoding="utf-8")))
    atomic_write(paths["png"], _readable(lambda tmp: plot_experiment(summary, tmp)))
    return paths


def _readable(write: Callable[[str], object]) -> Callable[[str], None]:
    """``write``, then ``rw-r--r--`` (`atomic_write`'s temporary file is created owner-only)."""

    def write_readable(temporary: str) -> None:
        write(temporary)
        os.chmod(temporary, 0o644)

    return write_readable


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m t0_recipes.reporting.experiment RUN_DIR --out benchmarks/results/t0_proxy``."""
    parser = argparse.ArgumentParser(
        description="Summarize an experiment's run records (every *.run.json under RUN_DIR) into JSON + Markdown + PNG."
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="folder searched recursively for *.run.json")
    parser.add_argument("--out", default="benchmarks/results/t0_proxy", help="output folder")
    parser.add_argument("--stem", default="t0_proxy", help="output file name stem")
    parser.add_argument("--baseline", default="lora", help="method the others are compared with")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        records = load_run_records(args.run_dir)
        summary = summarize_experiment(records, baseline=args.baseline, n_boot=args.n_boot, seed=args.seed)
    except (ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    paths = write_experiment(summary, args.out, args.stem)
    logger.info("%d run records -> %s", len(records), ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
