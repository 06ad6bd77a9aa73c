"""What one adapted layer adds to a compiled training step, against LoRA and against a mixed batch's floor.

One `tensoradapt.AdaptedLinear` (a frozen ``d_in -> d_out`` linear, no bias) at the tiny T5's width
by default, a mixed batch (example ``i`` is task ``i``), forward and backward of ``output.sum()``
through ``torch.compile(fullgraph=True)``; every method interleaved with plain LoRA, round by round.

``floor`` is the least an adapter can do to differ per example: one shared LoRA scaled by a learned
scalar per task, ``(x (g_t A)) (g_t s B)`` as two batched products. Every routed method pays at
least this in a mixed batch (a per-example matrix built by one pointwise pass, batched products
instead of matmuls); what it costs above the floor is its own routing and mixing. This is the
per-layer view of `step_time.py --compile`'s tiny T5, where the fixed per-layer work decides the
ratio (docs: results, "Training-step time").

Usage::

    python benchmarks/layer_overhead.py                     # d 128, 8 x 64 tokens, 1 thread, compiled
    python benchmarks/layer_overhead.py --eager --json /tmp/layer_overhead_eager.json
    python benchmarks/layer_overhead.py --quick --json /tmp/layer_overhead.json     # seconds, smoke test
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tensoradapt  # noqa: E402
from tensoradapt.routing.state import RoutingInputs  # noqa: E402
from common import (  # noqa: E402
    DTYPES,
    RESULTS_DIR,
    add_adapter_arguments,
    add_common_arguments,
    apply_threads,
    bar_chart,
    environment,
    interleaved_samples,
    markdown_table,
    median,
    paired_ratio,
    resolve_device,
    write_outputs,
)

#: Our methods, then the floor; LoRA is the baseline.
VARIANTS = ("lora", "floor", "tlora", "tensorpoly_i", "tensorpoly_ii", "poly", "mhr", "trex")
#: Methods routed by task id (the others take none; T-REX routes by token and takes a semantic prior).
ROUTED = ("tensorpoly_i", "tensorpoly_ii", "poly", "mhr")
#: The compiled fixed-overhead goal of `step_time.py` (tiny and T5-small within 1.10x LoRA).
GOAL = 1.10


class GatedLoRA(nn.Module):
    """The floor: one LoRA ``A (d_in, r)``, ``B (r, d_out)`` and a scalar gate per task, applied per example.

    ``x (batch, tokens, d_in) -> base(x) + (x (g_t A)) (g_t scaling B)``, ``g_t = gate[task_ids]``;
    gates start at 1, so at init it is the LoRA of the same ``A`` and ``B``.
    """

    def __init__(self, base: nn.Linear, lora_rank: int, n_tasks: int) -> None:
        super().__init__()
        self.base = base
        self.down = nn.Parameter(torch.randn(base.in_features, lora_rank, dtype=base.weight.dtype) / base.in_features**0.5)
        self.up = nn.Parameter(torch.zeros(lora_rank, base.out_features, dtype=base.weight.dtype))
        self.gate = nn.Parameter(torch.ones(n_tasks, dtype=base.weight.dtype))
        self.scaling = 1.0 / lora_rank

    def forward(self, x: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        gate = self.gate[task_ids][:, None, None]  # (batch, 1, 1)
        return self.base(x) + torch.bmm(torch.bmm(x, self.down * gate), self.up * (self.scaling * gate))


def build_layer(variant: str, args: argparse.Namespace, *, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A frozen base linear (seeded) adapted by ``variant``, in training mode."""
    torch.manual_seed(args.seed)
    base = nn.Linear(args.d_in, args.d_out, bias=False).to(device=device, dtype=dtype).requires_grad_(False)
    if variant == "floor":
        return GatedLoRA(base, args.lora_rank, args.n_tasks).to(device).train()
    config = tensoradapt.AdapterConfig(
        method=variant, target_modules=["layer"], lora_rank=args.lora_rank, tensor_rank=args.tensor_rank,
        order=args.order, n_skills=args.n_skills, n_heads=args.n_heads,
        n_tasks=args.n_tasks if variant in ROUTED else 1,
    )
    return tensoradapt.AdaptedLinear(base, config).train()


def route(layer: nn.Module, variant: str, task_ids: torch.Tensor, batch: int) -> None:
    """Give an `AdaptedLinear` its routing inputs the way a model call does, through its `RoutingState`.

    Task-routed methods get ``task_ids``; T-REX a seeded semantic prior ``(batch, k)`` of cosine
    similarities in ``[-1, 1]`` (only its shape matters to the cost, as in ``step_time.py``).
    """
    if variant in ROUTED:
        layer.state.push(RoutingInputs(task_ids=task_ids))
    elif variant == "trex":
        prior = torch.rand(batch, layer.config.trex_n_clusters, generator=torch.Generator().manual_seed(0)) * 2 - 1
        weight = layer.base.weight
        layer.state.push(RoutingInputs(semantic_prior=prior.to(device=weight.device, dtype=weight.dtype)))


def make_step(layer: nn.Module, variant: str, x: torch.Tensor, task_ids: torch.Tensor, *,
              compiled: bool) -> Callable[[], None]:
    """One training step of ``layer`` on ``x``: gradients reset, forward, backward of the output's sum."""
    if variant == "floor":
        def forward(inputs: torch.Tensor) -> torch.Tensor:
            return layer(inputs, task_ids)
    else:
        route(layer, variant, task_ids, x.shape[0])
        forward = layer
    call = torch.compile(forward, fullgraph=True) if compiled else forward
    trainable = [p for p in layer.parameters() if p.requires_grad]

    def step() -> None:
        for parameter in trainable:
            parameter.grad = None
        x.grad = None
        call(x).sum().backward()

    return step


def measure(args: argparse.Namespace, *, device: torch.device, dtype: torch.dtype) -> dict:
    """Seconds per step of every variant (interleaved rounds), their ratios to LoRA and to the floor."""
    variants = [v for v in VARIANTS if v in args.variants]
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, args.tokens, args.d_in, generator=generator).to(device=device, dtype=dtype)
    x.requires_grad_(True)
    task_ids = (torch.arange(args.batch) % args.n_tasks).to(device)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * len(variants))
    steps = {v: make_step(build_layer(v, args, device=device, dtype=dtype), v, x, task_ids,
                          compiled=not args.eager) for v in variants}
    samples = interleaved_samples(steps, device, repeats=args.repeats, warmup=3, min_sample_s=args.min_sample_s,
                                  desc="layer rounds")
    return {
        "median_s": {v: median(samples[v]) for v in variants},
        "ratio_to_lora": {v: paired_ratio(samples[v], samples["lora"]) for v in variants},
        "ratio_to_floor": ({v: paired_ratio(samples[v], samples["floor"]) for v in variants}
                           if "floor" in samples else {}),
        "samples_s": samples,
    }


def markdown(payload: dict) -> str:
    """The table of a run: microseconds per step, ratio to LoRA and to the floor."""
    s, env = payload["settings"], payload["environment"]
    mode = "eager" if s["eager"] else "compiled (`torch.compile(fullgraph=True)`, inductor)"
    rows = [(v, f"{1e6 * payload['median_s'][v]:.0f}", f"{payload['ratio_to_lora'][v]:.3f}",
             f"{payload['ratio_to_floor'][v]:.3f}" if payload["ratio_to_floor"] else "-")
            for v in payload["median_s"]]
    return "\n".join([
        "# One adapted layer: its step time against LoRA and against a mixed batch's floor",
        "",
        f"One `AdaptedLinear` {s['d_in']} -> {s['d_out']}, a mixed batch of {s['batch']} x {s['tokens']} tokens "
        f"(example i is task i of {s['n_tasks']}), forward + backward, {mode}; {s['dtype']}, {env['device']}, "
        f"{env['torch_threads']} thread(s), torch {env['torch']}. r={s['lora_rank']}, R={s['tensor_rank']}, "
        f"N={s['order']}, S={s['n_skills']}, H={s['n_heads']}. Medians over {s['repeats']} interleaved rounds; "
        "ratios are medians of per-round ratios.",
        "",
        "`floor`: one LoRA scaled per example by a learned per-task scalar, as two batched products, the "
        "least work an adapter can do to differ per example in a mixed batch; the last column is what a "
        "method costs above it (its routing and mixing).",
        "",
        markdown_table(("variant", "µs per step", "/ LoRA", "/ floor"), rows, align=("l", "r", "r", "r")),
        "",
        f"Reproduce with `python benchmarks/layer_overhead.py {payload['command']}`.",
    ]) + "\n"


def plot(payload: dict, path: Path) -> None:
    """Bars per variant: step time / LoRA and / the floor, with the compiled goal's line."""
    to_lora, to_floor, s = payload["ratio_to_lora"], payload["ratio_to_floor"], payload["settings"]
    bar_chart(
        path,
        {v: {"/ LoRA": to_lora[v], **({"/ floor": to_floor[v]} if to_floor else {})} for v in to_lora if v != "lora"},
        title=f"One adapted layer, {'eager' if s['eager'] else 'compiled'}: step time / LoRA and / floor\n"
              f"({s['d_in']} -> {s['d_out']}, {s['batch']} x {s['tokens']} tokens, mixed batch)",
        ylabel="time ratio (median of paired rounds)",
        reference=GOAL,
        reference_label=f"compiled fixed-overhead goal {GOAL:.2f}",
    )


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The run's settings; ``--quick`` shrinks the layer and the rounds to a seconds-long smoke test."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_json=RESULTS_DIR / "layer_overhead.json", default_repeats=15)
    parser.add_argument("--d-in", type=int, default=128)
    parser.add_argument("--d-out", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="examples, each its own task")
    parser.add_argument("--tokens", type=int, default=64)
    add_adapter_arguments(parser)
    parser.add_argument("--min-sample-s", type=float, default=0.05, help="repeat a step until a sample lasts this long")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    parser.add_argument("--eager", action="store_true", help="time eager steps instead of compiled ones")
    args = parser.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {VARIANTS}")
    if "lora" not in args.variants:
        parser.error("--variants must include lora, the baseline of every ratio")
    if args.quick:
        args.repeats, args.min_sample_s = min(args.repeats, 3), 0.0
        args.d_in, args.d_out, args.tokens, args.n_heads, args.n_tasks = 32, 24, 8, 8, 16
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(argv)
    apply_threads(args.threads)
    device, dtype = resolve_device(args.device), DTYPES[args.dtype]
    results = measure(args, device=device, dtype=dtype)
    settings = {key: getattr(args, key) for key in ("d_in", "d_out", "batch", "tokens", "lora_rank", "tensor_rank",
                                                    "order", "n_skills", "n_heads", "n_tasks", "repeats",
                                                    "min_sample_s", "eager", "seed")}
    payload = {
        "benchmark": "layer_overhead",
        "command": " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {**settings, "dtype": args.dtype, "variants": list(results["median_s"])},
        "environment": environment(device),
        **results,
    }
    text = markdown(payload)
    print(text)
    write_outputs(args.json, payload, text)
    plot(payload, args.json.with_suffix(".png"))
    return payload


if __name__ == "__main__":
    main()
