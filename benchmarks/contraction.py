"""How much faster is the planned contraction than chaining ``torch.kron`` rank by rank?

Materialises a batch of entangled vectors (the ``r`` LoRA columns of one TLoRA side,
``(batch, rank, order, q) -> (batch, dim)``) three ways:

* ``planned``: :func:`tensoradapt.algebra.materialize`, one opt_einsum plan per shape, cached;
* ``pairwise``: :func:`tensoradapt.algebra.kron_chain`, batched pairwise outer products left to
  right, summed over ranks (a fair vectorised baseline);
* ``naive``: a Python loop over batch entries and ranks, each a chain of ``torch.kron`` calls
  (how the reference code writes it).

Each is timed forward and forward+backward. Samples of the three are interleaved (so drift in
the machine's speed hits all alike) and the median is reported. Writes a JSON file, a PNG beside
it and a markdown summary beside it, and prints a table::

    python benchmarks/contraction.py --json benchmarks/results/contraction.json
    python benchmarks/contraction.py --quick --json /tmp/contraction.json   # seconds, for smoke tests
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from tensoradapt.algebra import kron_chain, leaf_size, materialize  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, interleaved_samples, median  # noqa: E402

METHODS = ("planned", "pairwise", "naive")
PASSES = ("forward", "forward+backward")
FULL_SETTINGS = [
    dict(order=order, dim=dim, rank=rank, batch=16) for order in (2, 4, 8) for dim in (2048, 5120) for rank in (8, 20)
]
QUICK_SETTINGS = [dict(order=order, dim=60, rank=2, batch=2) for order in (2, 4)]


def planned(leaves: torch.Tensor, dim: int) -> torch.Tensor:
    """``(batch, rank, order, q) -> (batch, dim)`` through the cached opt_einsum plan."""
    return materialize(leaves, dim)


def pairwise(leaves: torch.Tensor, dim: int) -> torch.Tensor:
    """``(batch, rank, order, q) -> (batch, dim)``: batched pairwise outer products, summed over ranks."""
    return kron_chain(leaves).sum(dim=1)[:, :dim]


def naive(leaves: torch.Tensor, dim: int) -> torch.Tensor:
    """``(batch, rank, order, q) -> (batch, dim)``: a Python loop of ``torch.kron`` chains per entry and rank."""
    batch, rank, order, _ = leaves.shape
    vectors = []
    for b in range(batch):
        total = None
        for r in range(rank):
            product = leaves[b, r, 0]
            for n in range(1, order):
                product = torch.kron(product, leaves[b, r, n])
            total = product if total is None else total + product
        vectors.append(total[:dim])
    return torch.stack(vectors)


IMPLEMENTATIONS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = dict(
    planned=planned, pairwise=pairwise, naive=naive
)


def make_step(method: str, pass_name: str, leaves: torch.Tensor, dim: int, upstream: torch.Tensor) -> Callable[[], None]:
    """One timed unit of work: a forward, or a forward and a backward of ``<output, upstream>``."""
    implementation = IMPLEMENTATIONS[method]
    if pass_name == "forward":

        def step() -> None:
            with torch.no_grad():
                implementation(leaves, dim)

    else:

        def step() -> None:
            leaves.grad = None
            implementation(leaves, dim).backward(upstream)

    return step


def run_setting(
    order: int, dim: int, rank: int, batch: int, *, device: torch.device, repeats: int, min_sample_s: float, seed: int
) -> list[dict]:
    """Check the three implementations agree, then time them for both passes of one setting."""
    generator = torch.Generator().manual_seed(seed)
    q = leaf_size(dim, order)
    leaves = torch.randn(batch, rank, order, q, generator=generator).to(device).requires_grad_()
    upstream = torch.randn(batch, dim, generator=generator).to(device)
    with torch.no_grad():
        expected = planned(leaves, dim)
        scale = expected.abs().max()
        for method in ("pairwise", "naive"):
            error = ((IMPLEMENTATIONS[method](leaves, dim) - expected).abs().max() / scale).item()
            if error > 1e-4:
                raise RuntimeError(f"{method} disagrees with planned by {error:.2e} at order={order}, dim={dim}")
    rows = []
    for pass_name in PASSES:
        steps = {method: make_step(method, pass_name, leaves, dim, upstream) for method in METHODS}
        samples = interleaved_samples(steps, device, repeats=repeats, warmup=1, min_sample_s=min_sample_s)
        medians = {name: median(values) for name, values in samples.items()}
        rows.append(
            dict(
                order=order,
                dim=dim,
                rank=rank,
                batch=batch,
                leaf_size=q,
                parameters=batch * rank * order * q,
                pass_name=pass_name,
                **{f"{method}_s": medians[method] for method in METHODS},
                speedup_naive_over_planned=medians["naive"] / medians["planned"],
                speedup_pairwise_over_planned=medians["pairwise"] / medians["planned"],
            )
        )
    return rows


def format_table(rows: Sequence[dict]) -> list[str]:
    """Markdown table lines of the results, times in milliseconds."""
    lines = [
        "| order N | dim d | rank R | batch | q | pass | planned ms | pairwise ms | naive ms | naive / planned "
        "| pairwise / planned |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['order']} | {row['dim']} | {row['rank']} | {row['batch']} | {row['leaf_size']} | "
            f"{row['pass_name']} | {row['planned_s'] * 1e3:.3f} | {row['pairwise_s'] * 1e3:.3f} | "
            f"{row['naive_s'] * 1e3:.3f} | {row['speedup_naive_over_planned']:.1f}x | "
            f"{row['speedup_pairwise_over_planned']:.2f}x |"
        )
    return lines


def plot(rows: Sequence[dict], path: Path) -> None:
    """Two panels (forward, forward+backward): median ms per method and setting, log scale."""
    figure, axes = plt.subplots(1, len(PASSES), figsize=(14, 5), sharey=True)
    width = 0.8 / len(METHODS)
    for axis, pass_name in zip(axes, PASSES):
        selected = [row for row in rows if row["pass_name"] == pass_name]
        labels = [f"N={row['order']}\nd={row['dim']}\nR={row['rank']}" for row in selected]
        for i, method in enumerate(METHODS):
            positions = [x + (i - 1) * width for x in range(len(selected))]
            axis.bar(positions, [row[f"{method}_s"] * 1e3 for row in selected], width, label=method)
        for x, row in enumerate(selected):
            axis.annotate(
                f"{row['speedup_naive_over_planned']:.0f}x", (x, row["naive_s"] * 1e3), ha="center", va="bottom",
                fontsize=7,
            )
        axis.set_xticks(range(len(selected)), labels, fontsize=7)
        axis.set_yscale("log")
        axis.set_title(f"{pass_name} (batch {selected[0]['batch']}; label: naive / planned)")
        axis.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("median ms per call")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def summary(result: dict, command: str) -> str:
    """The markdown summary: environment, command, table and the range of speed-ups."""
    rows = result["results"]
    lines = ["# Planned contraction vs chained `torch.kron`", ""]
    env = result["environment"]
    lines.append(
        f"Median of {result['repeats']} interleaved samples per cell; torch {env['torch']}, {env['device']} "
        f"({env['torch_threads']} threads, {env['device_name']}, {env['platform']}). Reproduce with `{command}`."
    )
    lines.append("")
    lines += format_table(rows)
    lines.append("")
    for pass_name in PASSES:
        selected = [row for row in rows if row["pass_name"] == pass_name]
        naive_ratio = [row["speedup_naive_over_planned"] for row in selected]
        pairwise_ratio = [row["speedup_pairwise_over_planned"] for row in selected]
        lines.append(
            f"- {pass_name}: naive / planned time ratio {min(naive_ratio):.2f} to {max(naive_ratio):.2f}; "
            f"pairwise / planned {min(pairwise_ratio):.2f} to {max(pairwise_ratio):.2f} (above 1: planned is faster)."
        )
    lines.append("")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/contraction.json"),
                        help="results file; the PNG and the markdown summary go beside it")
    parser.add_argument("--quick", action="store_true", help="two tiny settings, few samples (smoke test)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved samples per cell (default 15, quick 3)")
    parser.add_argument("--min-sample-s", type=float, default=None,
                        help="calls are repeated until one sample lasts this long (default 0.02, quick 0.001)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark; returns what it writes to ``--json``."""
    args = parse_args(argv)
    device = torch.device(args.device)
    repeats = args.repeats or (3 if args.quick else 15)
    min_sample_s = args.min_sample_s or (0.001 if args.quick else 0.02)
    rows = []
    for setting in QUICK_SETTINGS if args.quick else FULL_SETTINGS:
        rows += run_setting(**setting, device=device, repeats=repeats, min_sample_s=min_sample_s, seed=args.seed)
        print(f"done order={setting['order']} dim={setting['dim']} rank={setting['rank']}", file=sys.stderr)
    result = dict(
        benchmark="contraction",
        methods=list(METHODS),
        repeats=repeats,
        min_sample_s=min_sample_s,
        quick=args.quick,
        environment=environment(device),
        results=rows,
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, args.json.with_suffix(".png"))
    command = "python benchmarks/contraction.py" + (" --quick" if args.quick else "")
    args.json.with_suffix(".md").write_text(summary(result, command))
    print("\n".join(format_table(rows)))
    print(f"wrote {args.json}, {args.json.with_suffix('.png')}, {args.json.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
