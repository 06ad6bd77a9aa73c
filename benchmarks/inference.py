"""What does inference cost with a merged adapter, an unmerged one, and T-REX, against the base model?

One inference call = one forward of a T5 model in eval mode under ``torch.no_grad`` (encoder on
the source, decoder on given target ids: the rank-classification pass of the T0 protocol). All
variants read the same base weights (shared in memory), with the adapter hyper-parameters of
``step_time.py``, and one task for the whole batch:

* ``base``: the model without adapters;
* ``<method>_merged``: ``tensoradapt.merge(model, task)``, the task's delta folded into the base
  weights (the merged layers own a copy of their weights), which should cost what ``base`` costs;
* ``<method>_unmerged``: the same adapter (same seeded values), its delta computed on the fly;
* ``trex``: rank-one experts routed per token (with a semantic prior), which cannot merge.

All variants are sampled in turn, round after round, and ``ratios["<variant>/<baseline>"]`` is
the median over rounds of the per-round time ratio: ``<method>_merged/base``,
``<method>_unmerged/<method>_merged``, ``trex/lora_unmerged`` and ``trex/base``. As a correctness
check, ``max_abs_diff`` holds per method the largest ``|merged - unmerged|`` logit difference next
to the adapter's own effect ``|unmerged - base|``, the largest ``|disabled - base|`` (adapters off
inside ``tensoradapt.disable_adapters``) and the largest weight change left by ``unmerge``.

Usage::

    python benchmarks/inference.py                                    # tiny T5, CPU, 1 thread
    python benchmarks/inference.py --model-size small --repeats 21
    python benchmarks/inference.py --model-size t0-3b --device cuda --dtype bf16
    python benchmarks/inference.py --quick --json /tmp/inference.json # seconds, for smoke tests
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tensoradapt  # noqa: E402
from tensoradapt.testing import perturb_adapters  # noqa: E402
from common import (  # noqa: E402
    DTYPES,
    RESULTS_DIR,
    T5_SIZES,
    add_adapter_arguments,
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
from step_time import Settings, adapter_config, make_batch, settings_from_args, task_kwargs  # noqa: E402

MERGEABLE = ("lora", "tlora", "tensorpoly_i", "tensorpoly_ii", "poly", "mhr")


def variant_names(methods: tuple[str, ...]) -> tuple[str, ...]:
    """``base``, then ``<method>_merged`` and ``<method>_unmerged`` per method, then ``trex``."""
    return ("base", *(f"{m}_{state}" for m in methods for state in ("merged", "unmerged")), "trex")


def ratio_pairs(methods: tuple[str, ...]) -> list[tuple[str, str]]:
    """The (variant, baseline) pairs reported: merged vs base, unmerged vs merged, T-REX vs LoRA and base."""
    pairs = [(f"{m}_merged", "base") for m in methods] + [(f"{m}_unmerged", f"{m}_merged") for m in methods]
    if "lora" in methods:
        pairs.append(("trex", "lora_unmerged"))
    return pairs + [("trex", "base")]


def adapted(base: torch.nn.Module, method: str, settings: Settings, seed: int) -> torch.nn.Module:
    """``base``'s weights (shared) with ``method``'s adapter; eval mode.

    The adapter parameters are seeded random values (`tensoradapt.testing.perturb_adapters`), not
    the initialisation: a fresh LoRA-style adapter outputs zero, which would make the merged vs
    unmerged check trivially true. Values do not change the cost.
    """
    model = share_base(base)
    tensoradapt.inject(model, adapter_config(method, settings))
    perturb_adapters(model, seed, std=0.1, leaf_std=0.2)
    return model.eval()


def own_adapted_weights(model: torch.nn.Module) -> None:
    """Give every adapted layer a private copy of its base weight, so merging leaves the shared base alone."""
    for layer in tensoradapt.adapted_layers(model).values():
        layer.base.weight = torch.nn.Parameter(layer.base.weight.detach().clone(), requires_grad=False)


def merged_copy(base: torch.nn.Module, method: str, settings: Settings, seed: int, task: int | None):
    """The adapter of ``adapted(base, method, settings, seed)``, merged for ``task`` into private weights."""
    model = adapted(base, method, settings, seed)
    own_adapted_weights(model)
    tensoradapt.merge(model, task)
    return model


def inference_batch(settings: Settings, vocab: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` ``(b, source_length)`` and ``decoder_input_ids`` ``(b, target_length)``."""
    batch = make_batch(settings, vocab, device, seed)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "decoder_input_ids": batch["labels"]}


def make_call(model: torch.nn.Module, batch: dict, kwargs: dict) -> Callable[[], torch.Tensor]:
    """One inference call: the logits of a forward under ``torch.no_grad``."""

    def call() -> torch.Tensor:
        with torch.no_grad():
            return model(**batch, **kwargs).logits

    return call


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b|`` in float32."""
    return (a.float() - b.float()).abs().max().item()


def correctness(models: dict[str, torch.nn.Module], calls: dict[str, Callable[[], torch.Tensor]], batch: dict,
                method: str) -> dict[str, float]:
    """Merged vs unmerged logits (with the logits' size and the adapter's effect for scale), disabled vs
    base, and the largest weight change ``unmerge`` leaves (0: restored bit for bit)."""
    merged, unmerged, reference = calls[f"{method}_merged"](), calls[f"{method}_unmerged"](), calls["base"]()
    unmerged_model, merged_model = models[f"{method}_unmerged"], models[f"{method}_merged"]
    with tensoradapt.disable_adapters(unmerged_model):
        disabled = make_call(unmerged_model, batch, {})()
    layers = tensoradapt.adapted_layers(merged_model)
    task = next(iter(layers.values())).merged_task
    tensoradapt.unmerge(merged_model)
    restored = max(max_abs(layer.base.weight, models["base"].get_submodule(name).weight)
                   for name, layer in layers.items())
    tensoradapt.merge(merged_model, task)
    return {
        "merged_vs_unmerged": max_abs(merged, unmerged),
        "logit_scale": unmerged.float().abs().max().item(),
        "adapter_effect": max_abs(unmerged, reference),
        "disabled_vs_base": max_abs(disabled, reference),
        "unmerge_weight_change": restored,
    }


def adapter_parameters(model: torch.nn.Module) -> int:
    """Adapter parameters (modules and routing) of an adapted model; 0 for a plain one."""
    if not tensoradapt.adapted_layers(model):
        return 0
    return tensoradapt.count_parameters(model)["adapter"]


def build_models(base: torch.nn.Module, methods: tuple[str, ...], settings: Settings, seed: int):
    """Every variant's model (``base`` itself for ``base``)."""
    task = 3 % settings.n_tasks
    models: dict[str, torch.nn.Module] = {"base": base}
    for method in methods:
        routed_task = task if adapter_config(method, settings).n_tasks > 1 else None
        models[f"{method}_merged"] = merged_copy(base, method, settings, seed, routed_task)
        models[f"{method}_unmerged"] = adapted(base, method, settings, seed)
    models["trex"] = adapted(base, "trex", settings, seed)
    return models


def call_kwargs(name: str, settings: Settings, device: torch.device) -> dict:
    """Routing arguments: none for ``base``, else step_time's single-task arguments of the method."""
    if name == "base":
        return {}
    return task_kwargs(name.rsplit("_", 1)[0] if name != "trex" else name, "single", settings, device)


def measure(settings: Settings, *, methods: tuple[str, ...], device: torch.device, dtype: torch.dtype,
            repeats: int, min_sample_s: float, seed: int) -> dict:
    """Build the variants, check merged against unmerged, then interleaved samples and peak memory."""
    base = t5_base(settings.model_size, device=device, dtype=dtype, seed=seed).eval()
    for parameter in base.parameters():
        parameter.requires_grad_(False)
    models = build_models(base, methods, settings, seed)
    batch = inference_batch(settings, base.config.vocab_size, device, seed)
    calls = {name: make_call(model, batch, call_kwargs(name, settings, device)) for name, model in models.items()}
    checks = {method: correctness(models, calls, batch, method) for method in methods}
    memory = {name: peak_memory_bytes(call, device) for name, call in calls.items()}
    samples = interleaved_samples(calls, device, repeats=repeats, min_sample_s=min_sample_s, desc="inference")
    return {
        "samples_s": samples,
        "median_s": {name: median(values) for name, values in samples.items()},
        "peak_memory_bytes": memory,
        "ratios": {f"{a}/{b}": paired_ratio(samples[a], samples[b]) for a, b in ratio_pairs(methods)},
        "max_abs_diff": checks,
        "adapter_parameters": {name: adapter_parameters(model) for name, model in models.items()},
    }


def markdown(payload: dict) -> str:
    """Summary: the ratios, the correctness check, then medians and peak memory per variant."""
    settings, env, methods = payload["settings"], payload["environment"], payload["settings"]["methods"]
    ratios, medians, memory = payload["ratios"], payload["median_s"], payload["peak_memory_bytes"]
    command = f"python benchmarks/inference.py {payload['command']}".strip()
    lines = [
        "# Inference: merged and unmerged adapters, and T-REX, against the base model",
        "",
        f"T5 `{settings['model_size']}` ({settings['dtype']}, {env['device']}: {env['device_name']}, "
        f"{env['torch_threads']} thread(s), {env['cpu_count']} CPUs, torch {env['torch']}); one forward "
        f"(eval, no grad) of {settings['batch_size']} x {settings['source_length']} -> "
        f"{settings['target_length']} tokens, one task per batch; r={settings['lora_rank']}, "
        f"R={settings['tensor_rank']}, N={settings['order']}, S={settings['n_skills']}, H={settings['n_heads']}, "
        f"{settings['n_tasks']} tasks; T-REX {settings['trex_down']} x {settings['trex_up']} experts with a "
        f"{settings['trex_n_clusters']}-cluster prior. Median over {settings['repeats']} interleaved rounds of "
        f"the per-round ratio. Reproduce with `{command}`.",
        "",
        "## Time ratios",
        "",
        markdown_table(
            ["method", "merged / base", "unmerged / merged"],
            [[m, f"{ratios[f'{m}_merged/base']:.3f}", f"{ratios[f'{m}_unmerged/{m}_merged']:.3f}"] for m in methods],
            align=["l", "r", "r"],
        ),
        "",
        *[f"- `{key}`: {value:.3f}" for key, value in ratios.items() if key.startswith("trex/")],
        "",
        "## Correctness: merged vs unmerged logits",
        "",
        markdown_table(
            ["method", "max abs merged - unmerged", "max abs logit", "max abs unmerged - base (adapter effect)",
             "max abs disabled - base", "weight change after unmerge"],
            [[m, *(f"{payload['max_abs_diff'][m][key]:.2e}" for key in
                   ("merged_vs_unmerged", "logit_scale", "adapter_effect", "disabled_vs_base",
                    "unmerge_weight_change"))]
             for m in methods],
            align=["l", "r", "r", "r", "r", "r"],
        ),
        "",
        "Adapter parameters are seeded random values (a fresh adapter may output zero); merged and unmerged "
        "variants hold the same values.",
        "",
        "## Medians and peak memory",
        "",
        markdown_table(
            ["variant", "adapter params", "forward ms", "/ base", "peak MiB above start"],
            [[name, f"{payload['adapter_parameters'][name]:,}", f"{1e3 * seconds:.2f}",
              f"{seconds / medians['base']:.2f}", f"{memory[name] / 2**20:.2f}"] for name, seconds in medians.items()],
            align=["l", "r", "r", "r", "r"],
        ),
        "",
        "`/ base` is a ratio of medians; the ratios above are medians of per-round ratios. Peak memory is "
        "what one forward allocates above what is allocated when it starts"
        + (" (`torch.cuda.max_memory_allocated`)." if env["device"].startswith("cuda") else
           ", counted on the CPU by a dispatch mode over tensor storages (`benchmarks/common.py`)."),
    ]
    return "\n".join(lines)


def chart(path: Path, payload: dict) -> None:
    """Bar chart of the time ratios: merged / base and unmerged / merged per method, T-REX's two."""
    ratios, methods = payload["ratios"], payload["settings"]["methods"]
    groups = {m: {"merged / base": ratios[f"{m}_merged/base"],
                  "unmerged / merged": ratios[f"{m}_unmerged/{m}_merged"]} for m in methods}
    groups["trex"] = {"trex / base": ratios["trex/base"]}
    if "trex/lora_unmerged" in ratios:
        groups["trex"]["trex / lora unmerged"] = ratios["trex/lora_unmerged"]
    settings = payload["settings"]
    bar_chart(path, groups, reference=1.0, reference_label="parity",
              title=f"Inference time ratio, T5 {settings['model_size']} ({settings['dtype']}, "
                    f"{payload['environment']['device']}), one task per batch",
              ylabel="forward time ratio (median of paired rounds)")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--quick`` shrinks everything to a seconds-long run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_json=RESULTS_DIR / "inference.json", default_repeats=21)
    parser.add_argument("--model-size", choices=tuple(T5_SIZES), help="T5 shape (default: tiny; micro with --quick)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--source-length", type=int, default=64)
    parser.add_argument("--target-length", type=int, default=16)
    add_adapter_arguments(parser)
    parser.add_argument("--min-sample-s", type=float, default=0.05, help="repeat a call until a sample lasts this long")
    parser.add_argument("--methods", default=",".join(MERGEABLE),
                        help="comma-separated subset of " + ",".join(MERGEABLE))
    args = parser.parse_args(argv)
    args.methods = tuple(m for m in args.methods.split(",") if m)
    unknown = sorted(set(args.methods) - set(MERGEABLE))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {MERGEABLE}")
    if args.model_size is None:
        args.model_size = "micro" if args.quick else "tiny"
    if args.quick:
        args.repeats, args.min_sample_s = min(args.repeats, 3), 0.0
        args.batch_size, args.source_length, args.target_length = 4, 16, 8
        args.n_heads, args.n_tasks = min(args.n_heads, 8), min(args.n_tasks, 16)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(argv)
    apply_threads(args.threads)
    device, dtype = resolve_device(args.device), DTYPES[args.dtype]
    settings = settings_from_args(args, model_size=args.model_size,
                                  batch_shape=(args.batch_size, args.source_length, args.target_length))
    results = measure(settings, methods=args.methods, device=device, dtype=dtype, repeats=args.repeats,
                      min_sample_s=args.min_sample_s, seed=args.seed)
    payload = {
        "benchmark": "inference",
        "command": " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {**dataclasses.asdict(settings), "dtype": args.dtype, "repeats": args.repeats,
                     "min_sample_s": args.min_sample_s, "seed": args.seed, "methods": list(args.methods),
                     "variants": list(variant_names(args.methods))},
        "environment": environment(device),
        **results,
    }
    text = markdown(payload)
    print(text)
    write_outputs(args.json, payload, text)
    chart(args.json.with_suffix(".png"), payload)
    return payload


if __name__ == "__main__":
    main()
