"""What does a training step cost with each adapter, against dense LoRA and against PEFT's Poly / MHR?

One step = forward + backward of a T5 model's LM loss (gradients reset to ``None`` before each
step, no optimiser). Every variant adapts the same 7 linears per block of the same base model
(the base weights are shared in memory by all variants), with the same LoRA rank ``r``:

* ours: ``lora``, ``tlora``, ``tensorpoly_i``, ``tensorpoly_ii`` (``R``, ``N``), ``poly``, ``mhr``
  (``S`` skills, ``H`` heads), and ``trex`` (``r1 x r2`` rank-one experts routed per token, with a
  semantic prior of ``k`` cluster similarities per example);
* PEFT in the same process: ``peft_lora``, ``peft_poly`` (``PolyConfig(n_splits=1)``) and
  ``peft_mhr`` (``n_splits=H``), which is how people run Poly / MHR today.

Two batches: ``mixed`` (every example from a different task, the multi-task pre-training case)
and ``single`` (one task for the whole batch; PEFT still receives one task id per example, as
its API requires). Within a batch kind all variants are sampled in turn, round after round, and
``ratios["<method>/<baseline>"]`` is the median over rounds of the per-round time ratio. The
paper's code trained TLoRA 1.37x slower than LoRA (its Table 6); the targets here are TLoRA and
TensorPoly-I within 1.10x of LoRA and faster than PEFT's Poly.

Usage::

    python benchmarks/step_time.py                                    # tiny T5, CPU, 1 thread
    python benchmarks/step_time.py --model-size small --repeats 21
    python benchmarks/step_time.py --model-size t0-3b --device cuda --dtype bf16
    python benchmarks/step_time.py --profile tlora                    # torch.profiler table, then exit
    python benchmarks/step_time.py --compile --json benchmarks/results/step_time_compiled.json
    python benchmarks/step_time.py --quick --json /tmp/step_time.json # seconds, for smoke tests
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tensoradapt  # noqa: E402
from common import (  # noqa: E402
    DTYPES,
    RESULTS_DIR,
    T5_SIZES,
    T5_TARGETS,
    add_common_arguments,
    apply_threads,
    bar_chart,
    environment,
    interleaved_samples,
    markdown_table,
    median,
    paired_ratio,
    peak_memory_bytes,
    resolve_device,
    share_base,
    t5_base,
    write_outputs,
)

OURS = ("lora", "tlora", "tensorpoly_i", "tensorpoly_ii", "poly", "mhr", "trex")
PEFT = ("peft_lora", "peft_poly", "peft_mhr")
VARIANTS = OURS + PEFT
ROUTED = ("poly", "mhr", "tensorpoly_i", "tensorpoly_ii", "peft_poly", "peft_mhr")
BATCHES = ("mixed", "single")

#: (method, baseline) pairs reported; the first six are the headline ratios.
PAIRS: tuple[tuple[str, str], ...] = (
    ("tlora", "lora"),
    ("tensorpoly_i", "lora"),
    ("tensorpoly_ii", "lora"),
    ("poly", "peft_poly"),
    ("mhr", "peft_mhr"),
    ("trex", "lora"),
    ("poly", "lora"),
    ("mhr", "lora"),
    ("tlora", "peft_poly"),
    ("tensorpoly_i", "peft_poly"),
    ("tensorpoly_ii", "peft_poly"),
    ("lora", "peft_lora"),
    ("peft_poly", "lora"),
    ("peft_mhr", "lora"),
)

#: Targets (ratio must stay at or below): within 1.10x of LoRA, faster than PEFT's Poly.
TARGETS: dict[str, float] = {
    "tlora/lora": 1.10,
    "tensorpoly_i/lora": 1.10,
    "tlora/peft_poly": 1.0,
    "tensorpoly_i/peft_poly": 1.0,
    "poly/peft_poly": 1.0,
    "mhr/peft_mhr": 1.0,
}


@dataclass(frozen=True)
class Settings:
    """What a run measures: model shape, batch shape and adapter hyper-parameters."""

    model_size: str = "tiny"
    batch_size: int = 8
    source_length: int = 64
    target_length: int = 16
    lora_rank: int = 16
    tensor_rank: int = 8
    order: int = 2
    n_skills: int = 8
    n_heads: int = 64
    n_tasks: int = 313
    routing_noise: str = "relaxed_bernoulli"
    trex_down: int = 4
    trex_up: int = 8
    trex_n_clusters: int = 32


def adapter_config(method: str, settings: Settings) -> tensoradapt.AdapterConfig:
    """Our ``AdapterConfig`` of ``method`` with ``settings``' hyper-parameters."""
    return tensoradapt.AdapterConfig(
        method=method,
        target_modules=T5_TARGETS,
        lora_rank=settings.lora_rank,
        tensor_rank=settings.tensor_rank,
        order=settings.order,
        n_skills=settings.n_skills,
        n_heads=settings.n_heads,
        n_tasks=settings.n_tasks if method in ROUTED else 1,
        routing_noise=settings.routing_noise,
        trex_down=settings.trex_down,
        trex_up=settings.trex_up,
        trex_n_clusters=settings.trex_n_clusters,
    )


def build_variant(name: str, base: torch.nn.Module, settings: Settings) -> torch.nn.Module:
    """``base``'s weights (shared, frozen) adapted by ``name``; in training mode."""
    model = share_base(base)
    if name in OURS:
        tensoradapt.inject(model, adapter_config(name, settings))
        return model.train()
    import peft

    if name == "peft_lora":
        config = peft.LoraConfig(
            r=settings.lora_rank, lora_alpha=settings.lora_rank, lora_dropout=0.0, target_modules=T5_TARGETS
        )
    else:
        config = peft.PolyConfig(
            task_type="SEQ_2_SEQ_LM",
            r=settings.lora_rank,
            target_modules=T5_TARGETS,
            n_tasks=settings.n_tasks,
            n_skills=settings.n_skills,
            n_splits=1 if name == "peft_poly" else settings.n_heads,
        )
    model = peft.get_peft_model(model, config)
    device, dtype = base.lm_head.weight.device, base.lm_head.weight.dtype
    return model.to(device=device, dtype=dtype).train()


def make_batch(settings: Settings, vocab: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """Random token ids: ``input_ids``, ``attention_mask`` ``(b, source_length)``, ``labels`` ``(b, target_length)``."""
    generator = torch.Generator().manual_seed(seed)
    b = settings.batch_size
    input_ids = torch.randint(2, vocab, (b, settings.source_length), generator=generator)
    labels = torch.randint(2, vocab, (b, settings.target_length), generator=generator)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "labels": labels.to(device),
    }


def task_kwargs(name: str, batch_kind: str, settings: Settings, device: torch.device) -> dict:
    """Routing arguments of one call: none for unrouted methods; ``task_ids`` otherwise.

    ``mixed``: example ``i`` is task ``i mod n_tasks``. ``single``: task 3 for all; ours takes an
    ``int`` (one adapter for the batch), PEFT a ``(batch,)`` tensor (its API has no other form).
    ``trex`` routes by token, so it takes no task ids but a seeded ``semantic_prior (batch, k)``
    (cosine similarities in ``[-1, 1]``; only their shape matters to the cost).
    """
    b = settings.batch_size
    if name == "trex":
        generator = torch.Generator().manual_seed(b)
        prior = torch.rand(b, settings.trex_n_clusters, generator=generator) * 2 - 1
        return {"semantic_prior": prior.to(device)}
    if name not in ROUTED:
        return {}
    if batch_kind == "mixed":
        return {"task_ids": (torch.arange(b) % settings.n_tasks).to(device)}
    single = 3 % settings.n_tasks
    if name in OURS:
        return {"task_ids": single}
    return {"task_ids": torch.full((b,), single, dtype=torch.long, device=device)}


def make_step(model: torch.nn.Module, batch: dict, kwargs: dict, *, compiled: bool = False) -> Callable[[], None]:
    """One training step: reset gradients, forward with labels, backward of the loss.

    ``compiled``: through ``torch.compile(model)`` (inductor), the first call compiling; ours with
    ``fullgraph=True`` (one graph, docs: how-to "Compile a model"), PEFT's without (its Poly / MHR
    read task ids on the host: graph breaks).
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    call = torch.compile(model, fullgraph=not hasattr(model, "peft_config")) if compiled else model

    def step() -> None:
        for parameter in trainable:
            parameter.grad = None
        call(**batch, **kwargs).loss.backward()

    return step


def profile(name: str, steps: dict[str, Callable[[], None]], *, rows: int = 25) -> str:
    """torch.profiler's table (self CPU time) of 5 steps of ``name``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step = steps[name]
    for _ in range(2):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch_profile(activities=activities, record_shapes=False) as prof:
        for _ in range(5):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def measure(
    settings: Settings,
    *,
    variants: tuple[str, ...],
    device: torch.device,
    dtype: torch.dtype,
    repeats: int,
    min_sample_s: float,
    seed: int,
    profile_variant: str | None = None,
    compiled: bool = False,
) -> dict:
    """Build every variant, then per batch kind: interleaved step samples and one step's peak memory.

    ``compiled``: every step through ``torch.compile`` (`make_step`), each compiled by one call
    before anything is measured.
    """
    base = t5_base(settings.model_size, device=device, dtype=dtype, seed=seed).train()
    for parameter in base.parameters():
        parameter.requires_grad_(False)
    models = {name: build_variant(name, base, settings) for name in variants}
    batch = make_batch(settings, base.config.vocab_size, device, seed)
    results: dict = {"samples": {}, "median_s": {}, "peak_memory_bytes": {}, "ratios": {}, "ratio_of_medians": {}}
    for batch_kind in BATCHES:
        steps = {
            name: make_step(models[name], batch, task_kwargs(name, batch_kind, settings, device), compiled=compiled)
            for name in variants
        }
        if compiled:
            for step in steps.values():
                step()  # compiles, outside the CPU memory tracker's dispatch mode
        if profile_variant is not None:
            print(f"== {profile_variant}, {batch_kind} batch ==")
            print(profile(profile_variant, steps))
            if "lora" in steps and profile_variant != "lora":
                print(f"== lora, {batch_kind} batch ==")
                print(profile("lora", steps))
            continue
        memory = {name: peak_memory_bytes(step, device) for name, step in steps.items()}
        samples = interleaved_samples(steps, device, repeats=repeats, min_sample_s=min_sample_s)
        results["samples"][batch_kind] = samples
        results["median_s"][batch_kind] = {name: median(values) for name, values in samples.items()}
        results["peak_memory_bytes"][batch_kind] = memory
        results["ratios"][batch_kind] = {
            f"{a}/{b}": paired_ratio(samples[a], samples[b]) for a, b in PAIRS if a in samples and b in samples
        }
        results["ratio_of_medians"][batch_kind] = {
            f"{a}/{b}": results["median_s"][batch_kind][a] / results["median_s"][batch_kind][b]
            for a, b in PAIRS
            if a in samples and b in samples
        }
    results["adapter_parameters"] = {
        name: sum(p.numel() for p in model.parameters() if p.requires_grad) for name, model in models.items()
    }
    return results


def markdown(payload: dict) -> str:
    """Summary: headline ratios against their targets, then per batch kind the medians and memory."""
    settings, env = payload["settings"], payload["environment"]
    lines = [
        "# Training-step time: every adapter vs dense LoRA and PEFT's Poly / MHR",
        "",
        f"T5 `{settings['model_size']}` ({settings['dtype']}, {env['device']}: {env['device_name']}, "
        f"{env['torch_threads']} thread(s), {env['cpu_count']} CPUs, torch {env['torch']}); batch "
        f"{settings['batch_size']} x {settings['source_length']} -> {settings['target_length']} tokens; LoRA rank "
        f"r={settings['lora_rank']}, tensor rank R={settings['tensor_rank']}, order N={settings['order']}, "
        f"S={settings['n_skills']} skills, H={settings['n_heads']} MHR heads, {settings['n_tasks']} tasks. "
        f"Forward + backward{' compiled (`torch.compile`)' if settings.get('compile') else ''}, "
        f"median over {settings['repeats']} interleaved rounds of the per-round ratio. "
        f"Reproduce with `python benchmarks/step_time.py {payload['command']}`.".replace(" `python benchmarks/step_time.py `", " `python benchmarks/step_time.py`"),
        "",
        "## Headline (mixed-task batch)",
        "",
        markdown_table(
            ["ratio", "mixed batch", "single-task batch", "target", "met (mixed)"],
            [
                [
                    key,
                    f"{payload['ratios'][key]:.3f}",
                    f"{payload['ratios_single_task'].get(key, float('nan')):.3f}",
                    f"<= {TARGETS[key]:.2f}" if key in TARGETS else "-",
                    ("yes" if payload["ratios"][key] <= TARGETS[key] else "**no**") if key in TARGETS else "-",
                ]
                for key in payload["ratios"]
            ],
            align=["l", "r", "r", "r", "l"],
        ),
    ]
    for batch_kind in BATCHES:
        medians = payload["median_s"].get(batch_kind)
        if not medians:
            continue
        memory = payload["peak_memory_bytes"][batch_kind]
        lora_ms, lora_mem = medians.get("lora"), memory.get("lora")
        lines += [
            "",
            f"## {batch_kind} batch: medians and peak memory",
            "",
            markdown_table(
                ["variant", "adapter params", "step ms", "/ lora", "peak MiB above start", "memory / lora"],
                [
                    [
                        name,
                        f"{payload['adapter_parameters'][name]:,}",
                        f"{1e3 * seconds:.2f}",
                        f"{seconds / lora_ms:.2f}" if lora_ms else "-",
                        f"{memory[name] / 2**20:.1f}",
                        f"{memory[name] / lora_mem:.2f}" if lora_mem else "-",
                    ]
                    for name, seconds in medians.items()
                ],
                align=["l", "r", "r", "r", "r", "r"],
            ),
        ]
    lines += [
        "",
        "`/ lora` in the per-batch tables is a ratio of medians; the headline is the median of per-round ratios. "
        "Peak memory is what one step allocates above what is allocated when it starts (activations, "
        "gradients, temporaries); "
        + ("`torch.cuda.max_memory_allocated`." if env["device"].startswith("cuda") else
           "counted on the CPU by a dispatch mode over tensor storages (`benchmarks/common.py`)."),
    ]
    if payload.get("notes"):
        lines += ["", *[f"- {note}" for note in payload["notes"]]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_json=RESULTS_DIR / "step_time.json", default_repeats=15)
    parser.add_argument("--model-size", choices=tuple(T5_SIZES), help="T5 shape (default: tiny; micro with --quick)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--source-length", type=int, default=64)
    parser.add_argument("--target-length", type=int, default=16)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--tensor-rank", type=int, default=8)
    parser.add_argument("--order", type=int, default=2)
    parser.add_argument("--n-skills", type=int, default=8)
    parser.add_argument("--n-heads", type=int, default=64)
    parser.add_argument("--n-tasks", type=int, default=313)
    parser.add_argument("--routing-noise", choices=("relaxed_bernoulli", "none"), default="relaxed_bernoulli")
    parser.add_argument("--min-sample-s", type=float, default=0.05, help="repeat a step until a sample lasts this long")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    parser.add_argument("--profile", choices=VARIANTS, help="print torch.profiler tables for this variant and exit")
    parser.add_argument("--compile", action="store_true", help="time steps of torch.compile(model) (inductor)")
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    device, dtype = resolve_device(args.device), DTYPES[args.dtype]
    variants = tuple(v for v in args.variants.split(",") if v)
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {VARIANTS}")
    if args.model_size is None:
        args.model_size = "micro" if args.quick else "tiny"
    if args.quick:
        args.repeats, args.min_sample_s = min(args.repeats, 3), 0.0
        args.batch_size, args.source_length, args.target_length = 4, 16, 8
        args.n_heads, args.n_tasks = min(args.n_heads, 8), min(args.n_tasks, 16)
    settings = Settings(
        model_size=args.model_size,
        batch_size=args.batch_size,
        source_length=args.source_length,
        target_length=args.target_length,
        lora_rank=args.lora_rank,
        tensor_rank=args.tensor_rank,
        order=args.order,
        n_skills=args.n_skills,
        n_heads=args.n_heads,
        n_tasks=args.n_tasks,
        routing_noise=args.routing_noise,
    )
    results = measure(
        settings,
        variants=variants,
        device=device,
        dtype=dtype,
        repeats=args.repeats,
        min_sample_s=args.min_sample_s,
        seed=args.seed,
        profile_variant=args.profile,
        compiled=args.compile,
    )
    if args.profile:
        return results
    command = " ".join(argv if argv is not None else sys.argv[1:])
    payload = {
        "benchmark": "step_time",
        "command": command,
        "settings": {
            **settings.__dict__,
            "dtype": args.dtype,
            "repeats": args.repeats,
            "min_sample_s": args.min_sample_s,
            "seed": args.seed,
            "variants": list(variants),
            "compile": args.compile,
        },
        "environment": environment(device),
        "ratios": results["ratios"]["mixed"],
        "ratios_single_task": results["ratios"]["single"],
        "ratio_of_medians": results["ratio_of_medians"],
        "targets": TARGETS,
        "targets_met": {key: results["ratios"]["mixed"][key] <= limit for key, limit in TARGETS.items()
                        if key in results["ratios"]["mixed"]},
        "median_s": results["median_s"],
        "peak_memory_bytes": results["peak_memory_bytes"],
        "adapter_parameters": results["adapter_parameters"],
        "samples_s": results["samples"],
    }
    if args.compile and device.type == "cpu":
        payload["notes"] = ["Compiled steps: the CPU peak memory counts only the storages made through the "
                            "dispatcher; inductor's kernels allocate their buffers outside it."]
    text = markdown(payload)
    print(text)
    write_outputs(args.json, payload, text)
    groups = {
        batch_kind: {key: value for key, value in results["ratios"][batch_kind].items() if key.split("/")[1] in
                     ("lora", "peft_poly", "peft_mhr") and not key.startswith("peft_")}
        for batch_kind in BATCHES
    }
    bar_chart(
        args.json.with_suffix(".png"),
        {f"{key}": {batch_kind: groups[batch_kind][key] for batch_kind in BATCHES if key in groups[batch_kind]}
         for key in groups["mixed"]},
        title=f"Training-step time ratio, T5 {settings.model_size} ({args.dtype}, {device.type})",
        ylabel="time ratio (median of paired rounds)",
        reference=1.0,
        reference_label="parity",
    )
    return payload


if __name__ == "__main__":
    main()
