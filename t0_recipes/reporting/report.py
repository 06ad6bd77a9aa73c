"""Results of a T0 run -> JSON + a Markdown table laid out like the paper's Table 1 + a PNG chart.

Per task: the accuracy of every few-shot seed and their median; over tasks: the mean of the
medians (the paper's ``ACC``). Beside our row the table prints the paper's row for the same
method (when it has one), the T0-3B + (IA)3 reference and chance level.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from t0_recipes.data.tasks import FEWSHOT_SEEDS, HELD_OUT, PAPER_TABLE1, PAPER_TABLE1_LABELS, REFERENCE_ROW, TASKS
from tensoradapt.atomic import atomic_write

__all__ = [
    "SeedResult",
    "build_report",
    "markdown_report",
    "plot_report",
    "summarize",
    "write_report",
    "write_run_record",
]


@dataclass
class SeedResult:
    """Accuracy of one (task, few-shot seed) run.

    Attributes:
        task: registry task name.
        seed: few-shot subset seed.
        accuracy: fraction in [0, 1].
        n_eval: evaluation examples (rows x templates).
        by_template: accuracy per template id.
        n_train: few-shot training examples (``None`` for zero-shot).
        correct: per evaluation example, in the protocol's fixed order, 1 if predicted right:
            the same examples for every method, so differences can be bootstrapped in pairs.
        train_s: seconds to copy the model and adapt it (``None``: a repeated zero-shot result).
        eval_s: seconds of rank classification (``None`` likewise).
    """

    task: str
    seed: int
    accuracy: float
    n_eval: int
    by_template: dict[str, float] = field(default_factory=dict)
    n_train: int | None = None
    correct: list[int] = field(default_factory=list)
    train_s: float | None = None
    eval_s: float | None = None


def summarize(results: Sequence[SeedResult]) -> dict[str, Any]:
    """Median over seeds per task and mean of the medians over tasks.

    Returns:
        ``{"tasks": {task: {"seeds": {seed: acc}, "median": m}}, "mean": mean, "n_tasks": k}``,
        tasks in Table-1 order (other tasks after), accuracies as fractions.
    """
    by_task: dict[str, dict[int, float]] = {}
    for result in results:
        seeds = by_task.setdefault(result.task, {})
        if result.seed in seeds:
            raise ValueError(f"two results for task {result.task!r} seed {result.seed}")
        seeds[result.seed] = result.accuracy
    order = [t for t in HELD_OUT if t in by_task] + sorted(t for t in by_task if t not in HELD_OUT)
    tasks = {task: {"seeds": by_task[task], "median": statistics.median(by_task[task].values())} for task in order}
    mean = statistics.fmean(entry["median"] for entry in tasks.values()) if tasks else float("nan")
    return {"tasks": tasks, "mean": mean, "n_tasks": len(tasks)}


def build_report(
    results: Sequence[SeedResult],
    *,
    method: str,
    preset: str,
    params: Mapping[str, int] | None = None,
    wall_time_s: float | None = None,
    paper_row: str | None = None,
    random_init: bool = False,
    checkpoint: str = "last",
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Everything the JSON / Markdown / PNG outputs show, as one JSON-able dict.

    Args:
        results: one `SeedResult` per (task, seed).
        method: our run's name (``"tensorpoly_i"``, ``"zero_shot"``, ...).
        preset: ``"paper"`` or ``"tiny"``.
        params: ``{"trainable": n, "total": n}`` (and any other counts).
        wall_time_s: seconds the run took.
        paper_row: key of `t0_recipes.tasks.PAPER_TABLE1` to print beside ours; defaults to
            ``method`` when the paper has such a row.
        random_init: the backbone is an untrained tiny model (the report says so).
        checkpoint: which checkpoint was evaluated (``"last"``: no selection on the eval split).
        notes: extra lines for the Markdown.
    """
    if paper_row is None and method in PAPER_TABLE1:
        paper_row = method
    if paper_row is not None and paper_row not in PAPER_TABLE1:
        raise ValueError(f"paper_row={paper_row!r} is not a row of the paper's Table 1: {sorted(PAPER_TABLE1)}")
    summary = summarize(results)
    return {
        "method": method,
        "preset": preset,
        "random_init": random_init,
        "checkpoint": checkpoint,
        "params": dict(params or {}),
        "wall_time_s": wall_time_s,
        "summary": summary,
        "results": [asdict(result) for result in results],
        "paper_row": paper_row,
        "paper": {key: PAPER_TABLE1[key] for key in {paper_row, REFERENCE_ROW} if key is not None},
        "notes": list(notes),
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _paper_pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _paper_rows(report: Mapping[str, Any]) -> list[str]:
    """Keys of the paper rows to show: the method's own (if any), then the reference, no repeats."""
    keys = dict.fromkeys([report.get("paper_row"), REFERENCE_ROW])
    return [key for key in keys if key is not None and key in report["paper"]]


def markdown_report(report: Mapping[str, Any]) -> str:
    """The report as Markdown: a Table-1-style comparison, the per-seed table, counts and notes."""
    summary = report["summary"]
    tasks = summary["tasks"]
    held = [task for task in HELD_OUT if task in tasks]
    columns = list(HELD_OUT)
    header = "| Model | " + " | ".join(TASKS[t].column for t in columns) + " | ACC |"
    rule = "|---" * (len(columns) + 2) + "|"
    present = {int(seed) for entry in tasks.values() for seed in entry["seeds"]}
    seeds = [seed for seed in FEWSHOT_SEEDS if seed in present] + sorted(present - set(FEWSHOT_SEEDS))

    lines = [f"# T0 held-out tasks: `{report['method']}` (preset `{report['preset']}`)", ""]
    if report["random_init"]:
        lines += [
            "> **Tiny random-init model.** The backbone is an untrained toy T5, so accuracy sits near "
            "chance level; these numbers are not comparable with the paper's. The point of this run is "
            "that the whole protocol (real rows, templates, few-shot seeds, rank classification, "
            "medians) runs end to end.",
            "",
        ]
    lines += [
        f"Accuracy (%) by rank classification, median over {len(seeds)} few-shot seed(s) "
        f"({', '.join(map(str, seeds))}) per task; ACC is the mean over the {len(held)} held-out task(s) "
        f"evaluated here (the paper's ACC averages all {len(HELD_OUT)}). Checkpoint: {report['checkpoint']}.",
        "",
        header,
        rule,
    ]
    ours_mean = statistics.fmean(tasks[t]["median"] for t in held) if held else None
    lines.append(
        f"| ours: {report['method']} | "
        + " | ".join(_pct(tasks[t]["median"]) if t in tasks else "–" for t in columns)
        + f" | {_pct(ours_mean)} |"
    )
    paper_rows = _paper_rows(report)
    for key in paper_rows:
        row = report["paper"][key]
        label = f"paper: {PAPER_TABLE1_LABELS.get(key, key)}"
        lines.append(f"| {label} | " + " | ".join(_paper_pct(row[t]) for t in columns) + f" | {_paper_pct(row['mean'])} |")
    chance = {t: 100.0 / TASKS[t].n_choices for t in columns}
    lines.append(
        "| chance | " + " | ".join(f"{chance[t]:.1f}" for t in columns) + f" | {statistics.fmean(chance.values()):.1f} |"
    )
    if held and len(held) < len(HELD_OUT):
        lines.append("")
        for key in paper_rows:
            same = statistics.fmean(report["paper"][key][t] for t in held)
            lines.append(
                f"- Paper row {PAPER_TABLE1_LABELS.get(key, key)!r} averaged over the same {len(held)} task(s): {same:.1f}."
            )
    extra = [t for t in tasks if t not in HELD_OUT]
    if extra:
        lines += ["", "Held-out cluster from t0_train (not T0 tasks, not in Table 1; not in ACC): " + ", ".join(
            f"{t} {_pct(tasks[t]['median'])} (chance {100 / TASKS[t].n_choices:.1f})" for t in extra) + "."]

    lines += ["", "## Per seed", "", "| task | " + " | ".join(f"seed {s}" for s in seeds) + " | median | eval examples |"]
    lines.append("|---" * (len(seeds) + 3) + "|")
    n_eval = {}
    for result in report["results"]:
        n_eval.setdefault(result["task"], result["n_eval"])
    for task, entry in tasks.items():
        by_seed = {int(seed): value for seed, value in entry["seeds"].items()}  # JSON keys are strings
        cells = [_pct(by_seed.get(seed)) for seed in seeds]
        lines.append(f"| {task} | " + " | ".join(cells) + f" | {_pct(entry['median'])} | {n_eval.get(task, '–')} |")

    lines += ["", "## Run", ""]
    params = report["params"]
    if params.get("total"):
        trainable = params.get("trainable", 0)
        lines.append(f"- Parameters: {trainable:,} trainable of {params['total']:,} ({100 * trainable / params['total']:.3f} %).")
    for key, value in params.items():
        if key not in ("trainable", "total"):
            lines.append(f"- {key}: {value:,}" if isinstance(value, int) else f"- {key}: {value}")
    if report.get("wall_time_s") is not None:
        lines.append(f"- Wall time: {report['wall_time_s']:.1f} s.")
    lines += [f"- {note}" for note in report.get("notes", [])]
    return "\n".join(lines) + "\n"


def plot_report(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Bar chart per held-out task: ours, the paper's row, the reference, chance (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = report["summary"]["tasks"]
    columns = [t for t in HELD_OUT if t in tasks] or list(HELD_OUT)
    series = [(f"ours: {report['method']}", [100 * tasks[t]["median"] if t in tasks else 0.0 for t in columns])]
    for key in _paper_rows(report):
        series.append((f"paper: {PAPER_TABLE1_LABELS.get(key, key)}", [report["paper"][key][t] for t in columns]))
    width = 0.8 / len(series)
    figure, axis = plt.subplots(figsize=(max(6.0, 1.0 * len(columns) + 2), 4.0))
    for i, (label, values) in enumerate(series):
        positions = [x + (i - (len(series) - 1) / 2) * width for x in range(len(columns))]
        axis.bar(positions, values, width=width, label=label)
    for x, task in enumerate(columns):
        chance = 100.0 / TASKS[task].n_choices
        axis.hlines(chance, x - 0.45, x + 0.45, colors="black", linestyles="dashed", linewidth=1,
                    label="chance" if x == 0 else None)
    axis.set_xticks(range(len(columns)), [TASKS[t].column for t in columns])
    axis.set_ylabel("accuracy (%)")
    axis.set_ylim(0, 100)
    title = f"T0 held-out tasks, {report['method']} ({report['preset']})"
    if report.get("random_init"):
        title += " - tiny random-init model"
    axis.set_title(title)
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=4, frameon=False)  # below: no bar hidden
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike, stem: str = "t0_report") -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` under ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "png": out / f"{stem}.png"}
    paths["json"].write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(markdown_report(report), encoding="utf-8")
    plot_report(report, paths["png"])
    return paths


def write_run_record(
    path: str | os.PathLike,
    *,
    method: str,
    variant: str,
    mode: str,
    results: Sequence[SeedResult],
    wall_time_s: float | None,
    config: Mapping[str, Any],
    phases_s: Mapping[str, float | None] | None = None,
) -> Path:
    """One run's record for `t0_recipes.reporting.experiment`: per (task, seed) the accuracy and
    the per-example ``correct`` vector (examples in the protocol's fixed order), written atomically.

    ``variant``: ``"fewshot"`` (pre-trained, then few-shot), ``"zeroshot"`` (pre-trained, a new
    task's fresh routing, no training) or ``"no_pretrain"`` (few-shot from a fresh adapter).
    Timings sit apart from ``results`` (so two runs of one seed have equal ``results``):
    ``phases_s``, the run's seconds per phase (``{"setup": ..., "pretrain": ..., ...}``), and
    ``task_seed_s``, per (task, seed) the seconds spent training and evaluating.
    """
    record = {
        "method": method,
        "variant": variant,
        "mode": mode,
        "results": [
            {"task": r.task, "seed": r.seed, "accuracy": r.accuracy, "n": r.n_eval, "correct": list(r.correct)}
            for r in results
        ],
        "wall_time_s": wall_time_s,
        "phases_s": dict(phases_s or {}),
        "task_seed_s": [{"task": r.task, "seed": r.seed, "train": r.train_s, "eval": r.eval_s} for r in results],
        "config": dict(config),
    }
    path = Path(path)
    atomic_write(path, lambda temporary: Path(temporary).write_text(json.dumps(record) + "\n", encoding="utf-8"))
    return path
