"""How do step time and memory grow with the number of tasks, skills, the tensor rank R and the order N?

One axis at a time, every other setting held at ``step_time.py``'s defaults, one training step
(forward + backward, mixed-task batch: example ``i`` is task ``i mod n_tasks``) of T5 per point:

* ``tasks``: ``poly``, ``mhr``, ``tensorpoly_i``, ``tensorpoly_ii`` (rows of the routing matrix);
* ``skills``: ``poly``, ``mhr`` (the inventory size S);
* ``tensor_rank`` (R) and ``order`` (N): ``tlora``, ``tensorpoly_i``, ``tensorpoly_ii``.

For one (axis, method) all points and dense LoRA are sampled in turn, round after round, so each
point gets its time ratio to LoRA and its extra time over LoRA (``overhead``) from the same
rounds, robust to other load on the machine. Peak memory of one step is measured per point.

The growth of the adapter's own cost, ``overhead`` = method - LoRA (time and memory), is fitted
on log-log axes: the slope ``k`` of ``overhead ~ x^k`` over the whole range, and the local slope
between consecutive points. A cost "turns quadratic or worse" at the first pair of points whose
local slope is at least 1.8, counted only where the overhead at both points is at least
``--min-share`` of LoRA's own cost (below that, noise and near-zero differences make log-log
slopes meaningless); an overhead below that share everywhere is called negligible.

Usage::

    python benchmarks/scaling.py                                      # tiny T5, CPU, 1 thread
    python benchmarks/scaling.py --axes tensor_rank,order --repeats 15
    python benchmarks/scaling.py --model-size small --device cuda --dtype bf16
    python benchmarks/scaling.py --quick --json /tmp/scaling.json     # seconds, for smoke tests
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import NullLocator, ScalarFormatter
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    DTYPES,
    RESULTS_DIR,
    T5_SIZES,
    add_adapter_arguments,
    add_common_arguments,
    apply_threads,
    environment,
    interleaved_samples,
    markdown_table,
    median,
    paired_difference,
    paired_ratio,
    peak_memory_bytes,
    resolve_device,
    t5_base,
    write_outputs,
)
from step_time import Settings, build_variant, make_batch, make_step, settings_from_args, task_kwargs  # noqa: E402

#: Axis -> (the Settings field it sets, the methods it applies to, default values, --quick values).
AXES: dict[str, tuple[str, tuple[str, ...], tuple[int, ...], tuple[int, ...]]] = {
    "tasks": ("n_tasks", ("poly", "mhr", "tensorpoly_i", "tensorpoly_ii"), (8, 32, 128, 512, 2048), (8, 512)),
    "skills": ("n_skills", ("poly", "mhr"), (2, 4, 8, 16, 32, 64), (2, 8)),
    "tensor_rank": ("tensor_rank", ("tlora", "tensorpoly_i", "tensorpoly_ii"), (1, 2, 4, 8, 16, 32), (1, 4)),
    "order": ("order", ("tlora", "tensorpoly_i", "tensorpoly_ii"), (1, 2, 3, 4, 6, 8), (1, 2)),
}

#: Local log-log slope at or above which growth counts as quadratic or worse.
QUADRATIC = 1.8

#: Upper bounds of the growth classes of a log-log slope ``k``.
GROWTH_CLASSES = (
    (-0.2, "falling"), (0.2, "flat"), (0.8, "sub-linear"), (1.2, "about linear"), (QUADRATIC, "super-linear"),
)


# ----------------------------------------------------------------------------------------------
# fitting


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope ``k`` of ``log y = k log x + c`` over the points with ``y > 0``; None if under 2."""
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if y > 0]
    if len(points) < 2:
        return None
    logx, logy = np.array(points).T
    return float(np.polyfit(logx, logy, 1)[0])


def local_slopes(xs: Sequence[float], ys: Sequence[float]) -> list[float | None]:
    """Log-log slope between each pair of consecutive points (None where either ``y`` is not positive)."""
    return [loglog_slope(xs[i:i + 2], ys[i:i + 2]) if ys[i] > 0 and ys[i + 1] > 0 else None
            for i in range(len(xs) - 1)]


def growth_class(slope: float | None, measurable: bool = True) -> str:
    """A word for a log-log slope: falling, flat, sub-linear, about linear, super-linear, quadratic or worse;
    ``"negligible"`` when the overhead is nowhere ``measurable``."""
    if slope is None or not measurable:
        return "negligible"
    for bound, name in GROWTH_CLASSES:
        if slope < bound:
            return name
    return "quadratic or worse"


def quadratic_onset(xs: Sequence[float], overhead: Sequence[float], reference: float,
                    min_share: float) -> tuple[float, float] | None:
    """The first ``(x_i, x_{i+1})`` whose local slope is >= `QUADRATIC` and whose overheads are both
    at least ``min_share * reference``; None if the cost never turns quadratic."""
    floor = min_share * reference
    for i, slope in enumerate(local_slopes(xs, overhead)):
        if slope is not None and slope >= QUADRATIC and min(overhead[i], overhead[i + 1]) >= floor:
            return xs[i], xs[i + 1]
    return None


def fit(xs: Sequence[float], overhead: Sequence[float], reference: float, min_share: float) -> dict:
    """Slope over the range, its class, local slopes, the onset of quadratic growth of one overhead curve,
    and whether the overhead falls again after that onset (a step, not a steady power law)."""
    slope = loglog_slope(xs, overhead)
    onset = quadratic_onset(xs, overhead, reference, min_share)
    after = [y for x, y in zip(xs, overhead) if onset and x >= onset[1]]
    return {
        "falls_after_onset": bool(after) and min(after) < after[0],
        "slope": slope,
        "growth": growth_class(slope, measurable=max(overhead) >= min_share * reference),
        "local_slopes": local_slopes(xs, overhead),
        "quadratic_from": list(onset) if onset else None,
    }


# ----------------------------------------------------------------------------------------------
# measuring


def point_name(method: str, value: int) -> str:
    """``"<method>@<value>"``, the name of one point in an interleaved pool."""
    return f"{method}@{value}"


def measure_curve(base: torch.nn.Module, batch: dict, settings: Settings, *, axis: str, method: str,
                  values: Sequence[int], device: torch.device, repeats: int, min_share: float) -> dict:
    """Every value of ``axis`` for ``method`` interleaved with LoRA: medians, ratios, overheads, memory, fits."""
    field = AXES[axis][0]
    variants = {point_name(method, v): (method, dataclasses.replace(settings, **{field: v})) for v in values}
    variants["lora"] = ("lora", settings)
    models = {name: build_variant(kind, base, point) for name, (kind, point) in variants.items()}
    steps = {name: make_step(models[name], batch, task_kwargs(kind, "mixed", point, device))
             for name, (kind, point) in variants.items()}
    memory = {name: peak_memory_bytes(step, device) for name, step in steps.items()}
    samples = interleaved_samples(steps, device, repeats=repeats, desc=f"{axis} / {method}")
    names = [point_name(method, v) for v in values]
    lora_s, lora_bytes = median(samples["lora"]), memory["lora"]
    time_overhead = [paired_difference(samples[n], samples["lora"]) for n in names]
    memory_overhead = [memory[n] - lora_bytes for n in names]
    return {
        "axis": axis,
        "method": method,
        "values": list(values),
        "median_s": [median(samples[n]) for n in names],
        "lora_median_s": lora_s,
        "ratio_to_lora": [paired_ratio(samples[n], samples["lora"]) for n in names],
        "overhead_s": time_overhead,
        "peak_memory_bytes": [memory[n] for n in names],
        "lora_peak_memory_bytes": lora_bytes,
        "adapter_parameters": [sum(p.numel() for p in models[n].parameters() if p.requires_grad) for n in names],
        "time_fit": fit(values, time_overhead, lora_s, min_share),
        "memory_fit": fit(values, memory_overhead, lora_bytes, min_share),
    }


def measure(settings: Settings, *, axes: Sequence[str], device: torch.device, dtype: torch.dtype, repeats: int,
            seed: int, min_share: float, quick: bool) -> list[dict]:
    """One curve per (axis, method) of ``axes``, on one base model and one batch."""
    base = t5_base(settings.model_size, device=device, dtype=dtype, seed=seed).train()
    for parameter in base.parameters():
        parameter.requires_grad_(False)
    batch = make_batch(settings, base.config.vocab_size, device, seed)
    curves = []
    for axis in axes:
        _, methods, values, quick_values = AXES[axis]
        for method in methods:
            curves.append(measure_curve(base, batch, settings, axis=axis, method=method,
                                        values=quick_values if quick else values, device=device, repeats=repeats,
                                        min_share=min_share))
    return curves


# ----------------------------------------------------------------------------------------------
# output


def slope_text(slope: float | None) -> str:
    """A slope to two decimals, or a dash."""
    return "-" if slope is None else f"{slope:.2f}"


def onset_text(onset: list | None) -> str:
    """``"from x to y"`` or ``"no"``."""
    return "no" if onset is None else f"**from {onset[0]} to {onset[1]}**"


def conclusions(curves: list[dict]) -> list[str]:
    """One computed sentence per curve whose time or memory overhead turns quadratic, or one saying none does."""
    found = []
    for curve in curves:
        for cost, key in (("time", "time_fit"), ("memory", "memory_fit")):
            onset = curve[key]["quadratic_from"]
            if onset is not None:
                falls = (f"; it falls again at larger {curve['axis']}, so this is a step, not a steady power law"
                         if curve[key]["falls_after_onset"] else "")
                found.append(f"{curve['method']}: the {cost} overhead over LoRA grows quadratically or worse in "
                             f"{curve['axis']} from {onset[0]} to {onset[1]} (local log-log slope >= {QUADRATIC})"
                             f"{falls}.")
    if not found:
        return [f"No curve turns quadratic: no local log-log slope of a time or memory overhead reaches {QUADRATIC} "
                "where that overhead is large enough to measure."]
    return found


def curve_rows(curves: list[dict]) -> list[list]:
    """Table rows: per curve and value, step time, ratio to LoRA, overhead, memory and parameters."""
    rows = []
    for curve in curves:
        for i, value in enumerate(curve["values"]):
            rows.append([curve["method"], value, f"{1e3 * curve['median_s'][i]:.1f}",
                         f"{curve['ratio_to_lora'][i]:.2f}", f"{1e3 * curve['overhead_s'][i]:.1f}",
                         f"{curve['peak_memory_bytes'][i] / 2**20:.1f}", f"{curve['adapter_parameters'][i]:,}"])
    return rows


def fit_rows(curves: list[dict]) -> list[list]:
    """Table rows: per curve, the time and memory overhead slopes, classes and quadratic onsets."""
    return [[c["axis"], c["method"], slope_text(c["time_fit"]["slope"]), c["time_fit"]["growth"],
             onset_text(c["time_fit"]["quadratic_from"]), slope_text(c["memory_fit"]["slope"]),
             c["memory_fit"]["growth"], onset_text(c["memory_fit"]["quadratic_from"])] for c in curves]


def markdown(payload: dict) -> str:
    """Summary: the computed conclusions, the fits, then one table of points per axis."""
    settings, env, curves = payload["settings"], payload["environment"], payload["curves"]
    command = f"python benchmarks/scaling.py {payload['command']}".strip()
    lines = [
        "# Scaling: step time and memory against tasks, skills, tensor rank R and order N",
        "",
        f"T5 `{settings['model_size']}` ({settings['dtype']}, {env['device']}: {env['device_name']}, "
        f"{env['torch_threads']} thread(s), {env['cpu_count']} CPUs, torch {env['torch']}); training step "
        f"(forward + backward) on a mixed-task batch of {settings['batch_size']} x {settings['source_length']} -> "
        f"{settings['target_length']} tokens. Held fixed unless on the axis: r={settings['lora_rank']}, "
        f"R={settings['tensor_rank']}, N={settings['order']}, S={settings['n_skills']}, H={settings['n_heads']}, "
        f"{settings['n_tasks']} tasks. Each curve is interleaved with dense LoRA over {settings['repeats']} "
        f"rounds. Reproduce with `{command}`.",
        "",
        "## Conclusions (computed)",
        "",
        *[f"- {sentence}" for sentence in conclusions(curves)],
        "",
        f"Overhead = the method's cost minus LoRA's (time: median of per-round differences; memory: peak of one "
        f"step). Slope = least-squares log-log slope of the overhead over the axis (1 linear, 2 quadratic); "
        f"growth classes: falling < -0.2 <= flat < 0.2 <= sub-linear < 0.8 <= about linear < 1.2 <= "
        f"super-linear < {QUADRATIC} <= "
        f"quadratic or worse; negligible = the overhead never reaches {settings['min_share']:.0%} of LoRA's own cost. "
        f"Quadratic onset = first pair of consecutive points with a local slope >= {QUADRATIC} whose overheads "
        f"both reach {settings['min_share']:.0%} of LoRA's own cost.",
        "",
        markdown_table(
            ["axis", "method", "time slope", "time growth", "time quadratic?", "memory slope", "memory growth",
             "memory quadratic?"],
            fit_rows(curves),
            align=["l", "l", "r", "l", "l", "r", "l", "l"],
        ),
    ]
    for axis in dict.fromkeys(c["axis"] for c in curves):
        lines += [
            "",
            f"## {axis}",
            "",
            markdown_table(["method", axis, "step ms", "/ lora", "overhead ms", "peak MiB", "adapter params"],
                           curve_rows([c for c in curves if c["axis"] == axis]),
                           align=["l", "r", "r", "r", "r", "r", "r"]),
        ]
    lines += ["", "Peak memory is what one step allocates above what is allocated when it starts"
              + (" (`torch.cuda.max_memory_allocated`)." if env["device"].startswith("cuda") else
                 ", counted on the CPU by a dispatch mode over tensor storages (`benchmarks/common.py`).")]
    return "\n".join(lines)


def chart(path: Path, payload: dict) -> None:
    """Per axis, log-log: time ratio to LoRA (top) and peak step memory in MiB with LoRA's dashed (bottom).

    Ticks are the measured values in plain numbers; a method keeps one colour in every panel.
    """
    curves = payload["curves"]
    axes_names = list(dict.fromkeys(c["axis"] for c in curves))
    colours = {method: f"C{index}" for index, method in enumerate(dict.fromkeys(c["method"] for c in curves))}
    figure, grid = plt.subplots(2, len(axes_names), figsize=(4.2 * len(axes_names), 7.5), squeeze=False)
    for column, axis in enumerate(axes_names):
        top, bottom = grid[0][column], grid[1][column]
        axis_curves = [c for c in curves if c["axis"] == axis]
        for curve in axis_curves:
            style = dict(marker="o", label=curve["method"], color=colours[curve["method"]])
            top.plot(curve["values"], curve["ratio_to_lora"], **style)
            bottom.plot(curve["values"], [b / 2**20 for b in curve["peak_memory_bytes"]], **style)
        bottom.axhline(axis_curves[0]["lora_peak_memory_bytes"] / 2**20, color="black", linestyle="--",
                       linewidth=1, label="lora")
        top.axhline(1.0, color="black", linestyle="--", linewidth=1, label="lora (parity)")
        top.set_title(f"step time vs {axis}")
        top.set_ylabel("step time / LoRA step time")
        bottom.set_title(f"peak step memory vs {axis}")
        bottom.set_ylabel("peak memory above start (MiB)")
        for plot in (top, bottom):
            plot.set_xscale("log", base=2)
            plot.set_yscale("log")
            plot.set_xticks(axis_curves[0]["values"], [str(v) for v in axis_curves[0]["values"]])
            plot.xaxis.set_minor_locator(NullLocator())
            plot.yaxis.set_major_formatter(ScalarFormatter())
            plot.yaxis.set_minor_formatter(ScalarFormatter())
            plot.set_xlabel(axis if axis != "tasks" else "tasks (routing rows)")
            plot.legend(fontsize=7)
            plot.grid(True, which="both", alpha=0.3)
    settings = payload["settings"]
    figure.suptitle(f"Scaling of one training step, T5 {settings['model_size']} ({settings['dtype']}, "
                    f"{payload['environment']['device']}), mixed-task batch; log-log")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--quick`` shrinks everything to a seconds-long run."""
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_json=RESULTS_DIR / "scaling.json", default_repeats=9)
    parser.add_argument("--model-size", choices=tuple(T5_SIZES), help="T5 shape (default: tiny; micro with --quick)")
    parser.add_argument("--axes", default=",".join(AXES), help="comma-separated subset of " + ",".join(AXES))
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--source-length", type=int, default=defaults.source_length)
    parser.add_argument("--target-length", type=int, default=defaults.target_length)
    add_adapter_arguments(parser)
    parser.add_argument("--min-share", type=float, default=0.1,
                        help="an overhead below this share of LoRA's cost is not tested for quadratic growth")
    args = parser.parse_args(argv)
    args.axes = tuple(a for a in args.axes.split(",") if a)
    unknown = sorted(set(args.axes) - set(AXES))
    if unknown:
        parser.error(f"unknown axes {unknown}; choose from {tuple(AXES)}")
    if args.model_size is None:
        args.model_size = "micro" if args.quick else "tiny"
    if args.quick:
        args.repeats = min(args.repeats, 3)
        args.batch_size, args.source_length, args.target_length = 4, 16, 8
        args.n_heads, args.n_tasks = min(args.n_heads, 8), min(args.n_tasks, 16)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(argv)
    apply_threads(args.threads)
    device, dtype = resolve_device(args.device), DTYPES[args.dtype]
    settings = settings_from_args(args, model_size=args.model_size,
                                  batch_shape=(args.batch_size, args.source_length, args.target_length))
    curves = measure(settings, axes=args.axes, device=device, dtype=dtype, repeats=args.repeats, seed=args.seed,
                     min_share=args.min_share, quick=args.quick)
    payload = {
        "benchmark": "scaling",
        "command": " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {**dataclasses.asdict(settings), "dtype": args.dtype, "repeats": args.repeats,
                     "seed": args.seed, "axes": list(args.axes), "min_share": args.min_share},
        "environment": environment(device),
        "conclusions": conclusions(curves),
        "curves": curves,
    }
    text = markdown(payload)
    print(text)
    write_outputs(args.json, payload, text)
    chart(args.json.with_suffix(".png"), payload)
    return payload


if __name__ == "__main__":
    main()
