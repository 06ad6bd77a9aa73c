"""The planted-skills report: a markdown table per world and two kinds of figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["WORLD_TITLES", "headline", "markdown_report", "plot_results", "plot_routing"]

WORLD_TITLES = {
    "poly": "dense low-rank skills, mixed as Poly mixes them",
    "tensor": "Kronecker-product skills (columns = leaf (x) leaf), mixed as TensorPoly-I mixes them",
    "rank_one": "rank-one pairs a_i b_j^T (T-REX's mix and match)",
}
MODE_COLORS = {"routing_only": "#4c72b0", "modules_only": "#dd8452", "full": "#55a868"}


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _count(value) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.1f}k" if value >= 10_000 else f"{value:,}"


def _ordered(methods: dict, order) -> list[str]:
    return [name for name in order if name in methods]


def headline(output: dict, labels: dict) -> list[str]:
    """One line per world: LoRA vs the best routed method (task-routed or T-REX) at the same few-shot
    budget, and the best task-routing recovery vs chance."""
    lines = []
    for kind, world in output["worlds"].items():
        methods = world["methods"]
        lora = methods["lora"]["fewshot"]["full"]["error"]
        routed = [
            (entry["fewshot"][mode]["error"], name, mode)
            for name, entry in methods.items()
            if entry["recovery"] is not None or entry["config"]["method"] == "trex"
            for mode in entry["fewshot"]
        ]
        best_error, best_name, best_mode = min(routed)
        best_recovery = max((entry["recovery"]["score"], name) for name, entry in methods.items() if entry["recovery"])
        verdict = "beats" if best_error < lora else "does not beat"
        lines.append(
            f"- `{kind}`: best routed few-shot {labels[best_name]} ({best_mode}) {best_error:.3f} {verdict} "
            f"LoRA {lora:.3f}; best router recovery {labels[best_recovery[1]]} {best_recovery[0]:.2f} "
            f"(chance {methods[best_recovery[1]]['recovery']['chance']:.2f})."
        )
    return lines


def markdown_report(output: dict, order, labels: dict, modes, mode_labels: dict) -> str:
    """The run's tables as markdown (also what the script prints)."""
    settings = output["settings"]
    spec = settings["world"]
    lines = [
        "# Planted skills: do routed adapters find reusable skills?",
        "",
        f"Seed {output['seed']}{' (quick sizes)' if output['quick'] else ''}. Backbone: frozen tanh MLP "
        f"d={spec['dim']} -> {spec['dim']} -> {spec['dim']} -> {spec['out_dim']}, adapters on fc1 and fc2. "
        f"{spec['n_train_tasks']} training tasks, {spec['n_heldout_tasks']} held-out tasks (new combinations "
        f"of the same skills, {spec['skills_per_task']} skills each), {spec['shots']} shots per held-out task. "
        f"Multi-task: {settings['pretrain_steps']} Adam steps x {settings['batch_per_task']} examples per task; "
        f"few-shot: {settings['fewshot_steps']} steps, last step evaluated. T-REX routes every input, with a "
        "task-level semantic prior from k-means centroids of the training tasks' mean inputs (no task-skill "
        "routing to recover); it adapts its one adapter (full).",
        "",
        "Error = held-out relative error, sum ||f(x) - y||^2 / sum ||backbone(x) - y||^2 on fresh inputs "
        "(1 = no better than the frozen backbone, 0 = the planted function; mean over held-out tasks). "
        "Recovery = correlation of learned and planted task-skill weights after the best one-to-one "
        f"matching of skills ({output['matcher']}); chance = the same with the learned rows given to random "
        "tasks.",
        "",
    ]
    for kind, world in output["worlds"].items():
        methods = world["methods"]
        lines += [
            f"## `{kind}`: {WORLD_TITLES[kind]} (K={world['n_experts']} planted experts)",
            "",
            "| method | multi-task params | train-task error | "
            + " | ".join(f"few-shot {mode_labels[mode]}" for mode in modes)
            + " | few-shot params (z / full) | router recovery (chance) |",
            "|---|---:|---:|" + "---:|" * len(modes) + "---:|---:|",
        ]
        for name in _ordered(methods, order):
            entry = methods[name]
            fewshot = entry["fewshot"]
            errors = " | ".join(_fmt(fewshot[mode]["error"]) if mode in fewshot else "-" for mode in modes)
            z_count = fewshot["routing_only"]["trainable"] if "routing_only" in fewshot else None
            budget = f"{_count(z_count)} / {_count(fewshot['full']['trainable'])}"
            rec = entry["recovery"]
            recovery = "-" if rec is None else f"{rec['score']:.2f} ({rec['chance']:.2f})"
            lines.append(
                f"| {labels[name]} | {_count(entry['multitask_parameters'])} | {_fmt(entry['train_error'])} | "
                f"{errors} | {budget} | {recovery} |"
            )
        lines.append("")
    lines += ["## In one line per world", "", *headline(output, labels)]
    return "\n".join(lines)


def plot_results(output: dict, order, labels: dict, modes, mode_labels: dict, path: Path) -> None:
    """Top row: held-out error per method and few-shot mode; bottom row: router recovery vs chance."""
    kinds = list(output["worlds"])
    fig, axes = plt.subplots(2, len(kinds), figsize=(5.2 * len(kinds), 7.5), squeeze=False,
                             gridspec_kw=dict(height_ratios=[3, 2]))
    width = 0.8 / len(modes)
    for col, kind in enumerate(kinds):
        methods = output["worlds"][kind]["methods"]
        names = _ordered(methods, order)
        ax = axes[0, col]
        for m, mode in enumerate(modes):
            xs, ys, errs = [], [], []
            for i, name in enumerate(names):
                result = methods[name]["fewshot"].get(mode)
                if result is None:
                    continue
                xs.append(i + (m - (len(modes) - 1) / 2) * width)
                ys.append(result["error"])
                errs.append(np.std(result["per_task"]))
            ax.bar(xs, ys, width, yerr=errs, capsize=2, color=MODE_COLORS[mode], label=mode_labels[mode])
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.text(len(names) - 0.5, 1.0, "frozen backbone", ha="right", va="bottom", fontsize=7)
        ax.set_xticks(range(len(names)), [labels[name] for name in names], rotation=35, ha="right", fontsize=8)
        ax.set_title(f"world '{kind}'", fontsize=10)
        ax.set_ylim(0, max(1.25, ax.get_ylim()[1]))
        if col == 0:
            ax.set_ylabel("held-out relative error (lower is better)")
            ax.legend(fontsize=7, loc="upper left", title="few-shot training", title_fontsize=7)

        ax = axes[1, col]
        routed = [name for name in names if methods[name]["recovery"] is not None]
        scores = [methods[name]["recovery"]["score"] for name in routed]
        chance = [methods[name]["recovery"]["chance"] for name in routed]
        p95 = [methods[name]["recovery"]["chance_p95"] for name in routed]
        ax.bar(range(len(routed)), scores, 0.6, color="#8172b3", label="learned routing")
        ax.scatter(range(len(routed)), chance, marker="_", s=400, color="k", zorder=3, label="chance (mean)")
        ax.scatter(range(len(routed)), p95, marker="_", s=400, color="0.5", zorder=3, label="chance (95th pct)")
        ax.set_xticks(range(len(routed)), [labels[name] for name in routed], rotation=35, ha="right", fontsize=8)
        ax.set_ylim(min(0.0, min(scores + chance) - 0.05), 1.0)
        if col == 0:
            ax.set_ylabel("router recovery of the\nplanted allocation")
            ax.legend(fontsize=7, loc="upper right")
    fig.suptitle("Planted skills: few-shot transfer to new skill combinations, and what the routers learned",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_routing(output: dict, world, order, labels: dict, path: Path) -> None:
    """Planted task-skill allocation of the training tasks beside every router's learned weights.

    Learned columns are reordered by the matching (column ``k`` is the skill matched to planted
    skill ``k``; unmatched learned skills follow). One slice per method: the first adapted layer,
    head / order 0 for MHR / TensorPoly-II.
    """
    methods = output["worlds"][world.kind]["methods"]
    routed = [name for name in _ordered(methods, order) if methods[name]["recovery"] is not None]
    planted = np.array(output["worlds"][world.kind]["allocation_train"])
    fig, axes = plt.subplots(1, len(routed) + 1, figsize=(2.2 * (len(routed) + 1) + 1, 4.8), squeeze=False)
    axes = axes[0]
    panels = [("planted", planted, world.skill_labels())]
    for name in routed:
        example = methods[name]["recovery"]["example"]
        learned = np.array(example["learned"])
        matched = [s for _, s in sorted(example["pairs"])]
        columns = matched + [s for s in range(learned.shape[1]) if s not in matched]
        slice_name = "" if name in ("poly", "tensorpoly_i") else (" head 0" if name == "mhr" else " order 0")
        title = (f"{labels[name]}\n{example['layer']}{slice_name}: {example['score']:.2f}\n"
                 f"(all: {methods[name]['recovery']['score']:.2f}, chance {methods[name]['recovery']['chance']:.2f})")
        panels.append((title, learned[:, columns], [f"{c}" for c in columns]))
    for ax, (title, matrix, ticks) in zip(axes, panels):
        ax.imshow(matrix, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xticks(range(len(ticks)), ticks, fontsize=6, rotation=90)
        ax.set_yticks([])
        ax.set_xlabel("skill" if title == "planted" else "learned skill (matched order)", fontsize=7)
    axes[0].set_ylabel(f"training task (0..{planted.shape[0] - 1})", fontsize=8)
    fig.suptitle(f"World '{world.kind}': planted vs learned task-skill routing (training tasks)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
