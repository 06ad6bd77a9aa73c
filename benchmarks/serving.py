"""How fast does one routed model serve a batch where every request has its own task?

A model with ``n_tasks`` tasks (T0's 313 by default) answers ``requests`` prompts at once, each
from a different task, by greedy decoding of exactly ``new_tokens`` tokens (``generate`` with
``min_new_tokens = max_new_tokens``). For every task-routed method (Poly, MHR, TensorPoly-I,
TensorPoly-II; seeded random adapter values, as in ``inference.py``) three ways to serve it:

* ``<method>``: ours, one ``generate(..., task_ids=(requests,))``: every layer builds each
  request's adapter from the shared experts and applies them in one batched product;
* ``peft_<method>``: every task exported as a plain LoRA (`tensoradapt.export_lora_library`,
  exact for these methods), all loaded into one ``peft.PeftModel`` and served by PEFT's
  mixed-adapter batch, ``generate(..., adapter_names=[one per request])``;
* ``merged_<method>``: one request at a time with its task merged into the weights
  (`tensoradapt.merge` before, `tensoradapt.unmerge` after: a task switch per request, counted).

``base`` (the model without adapters, one batch) is the ceiling. Before anything is timed the
benchmark asserts that the three give the same tokens (in fp32; in bf16 the share of equal tokens
is reported) and the same logits at every step up to the first differing token, within
``tolerance * max |logit|``. Exporting the library and loading it into PEFT are timed apart
(one pass each, not interleaved: a server pays them once).

Reported per method: tokens/s of each way (``requests * new_tokens`` over the median time of a
call), and ``speedup_vs_peft`` / ``speedup_vs_merged``, the medians over interleaved rounds of the
per-round time ratio (``> 1``: ours is faster).

Usage::

    python benchmarks/serving.py                                     # tiny T5, 313 tasks, CPU, 1 thread
    python benchmarks/serving.py --model-size small --n-tasks 64 --requests 32
    python benchmarks/serving.py --device cuda --dtype bf16
    python benchmarks/serving.py --quick --json /tmp/serving.json    # seconds, for smoke tests
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
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
    resolve_device,
    share_base,
    synchronize,
    t5_base,
    write_outputs,
)
from step_time import Settings, adapter_config, settings_from_args  # noqa: E402

#: Methods whose every task is a plain LoRA (exported exactly) and that route by task.
ROUTED = ("poly", "mhr", "tensorpoly_i", "tensorpoly_ii")

#: Logit tolerance, relative to the largest logit, per dtype.
TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2}


class OutputMismatch(AssertionError):
    """Two ways of serving the same tasks gave different tokens or logits."""


@dataclasses.dataclass(frozen=True)
class Request:
    """The batch served: ``input_ids`` / ``attention_mask`` ``(requests, source_length)``, one task per request."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    tasks: torch.Tensor  # (requests,) distinct task ids


def make_requests(settings: Settings, n_requests: int, vocab: int, device: torch.device, seed: int) -> Request:
    """Random prompts, each from a different task (a seeded draw of ``n_requests`` of ``n_tasks``)."""
    if n_requests > settings.n_tasks:
        raise ValueError(f"requests={n_requests} > n_tasks={settings.n_tasks}: every request needs its own task")
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, vocab, (n_requests, settings.source_length), generator=generator)
    tasks = torch.randperm(settings.n_tasks, generator=generator)[:n_requests]
    return Request(input_ids.to(device), torch.ones_like(input_ids).to(device), tasks.to(device))


def generation_kwargs(new_tokens: int) -> dict:
    """Greedy decoding of exactly ``new_tokens`` tokens, returning the raw logits of every step."""
    return dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1,
                return_dict_in_generate=True, output_logits=True)


@dataclasses.dataclass
class Output:
    """Generated ``tokens (requests, new_tokens)`` and ``logits (requests, new_tokens, vocab)`` (float32, CPU)."""

    tokens: torch.Tensor
    logits: torch.Tensor


def _output(generated, new_tokens: int) -> Output:
    tokens = generated.sequences[:, -new_tokens:]
    logits = torch.stack(generated.logits, dim=1)
    return Output(tokens.cpu(), logits.float().cpu())


def task_name(task: int) -> str:
    """The folder / PEFT adapter name of task ``task``."""
    return f"task_{task}"


def adapted(base: torch.nn.Module, method: str, settings: Settings, seed: int) -> torch.nn.Module:
    """``base``'s weights (shared) with ``method``'s adapter over ``n_tasks`` tasks, seeded random values; eval.

    The values are large enough that a wrong task changes the logits by far more than the
    equality tolerance (a fresh adapter outputs zero, which would make the checks vacuous).
    """
    model = share_base(base)
    tensoradapt.inject(model, adapter_config(method, settings))
    perturb_adapters(model, seed, std=0.3, leaf_std=0.2)
    return model.eval()


def merged_server(base: torch.nn.Module, method: str, settings: Settings, seed: int) -> torch.nn.Module:
    """The same adapter as `adapted`, on private copies of the adapted base weights (merging writes them)."""
    model = adapted(base, method, settings, seed)
    for layer in tensoradapt.adapted_layers(model).values():
        layer.base.weight = torch.nn.Parameter(layer.base.weight.detach().clone(), requires_grad=False)
    return model


def load_peft(base: torch.nn.Module, directory: Path, tasks: list[int]):
    """One ``PeftModel`` over a private copy of ``base`` holding the LoRA of every task in ``tasks``.

    Returns:
        ``(model, seconds)``: the model, and the seconds each adapter took to load, in order.
    """
    from peft import PeftModel

    model, seconds = None, []
    for task in tasks:
        path = directory / task_name(task)
        start = time.perf_counter()
        if model is None:
            model = PeftModel.from_pretrained(share_base(base), str(path), adapter_name=task_name(task))
        else:
            model.load_adapter(str(path), adapter_name=task_name(task))
        seconds.append(time.perf_counter() - start)
    return model.eval(), seconds


def serve_ours(model, request: Request, new_tokens: int) -> Callable[[], Output]:
    def call() -> Output:
        with torch.no_grad():
            generated = model.generate(input_ids=request.input_ids, attention_mask=request.attention_mask,
                                       task_ids=request.tasks, **generation_kwargs(new_tokens))
        return _output(generated, new_tokens)

    return call


def serve_peft(model, request: Request, new_tokens: int) -> Callable[[], Output]:
    names = [task_name(int(task)) for task in request.tasks.tolist()]

    def call() -> Output:
        with torch.no_grad():
            generated = model.generate(input_ids=request.input_ids, attention_mask=request.attention_mask,
                                       adapter_names=names, **generation_kwargs(new_tokens))
        return _output(generated, new_tokens)

    return call


def serve_merged(model, request: Request, new_tokens: int) -> Callable[[], Output]:
    tasks = [int(task) for task in request.tasks.tolist()]

    def call() -> Output:
        outputs = []
        for index, task in enumerate(tasks):
            tensoradapt.merge(model, task)
            try:
                with torch.no_grad():
                    generated = model.generate(input_ids=request.input_ids[index:index + 1],
                                               attention_mask=request.attention_mask[index:index + 1],
                                               **generation_kwargs(new_tokens))
            finally:
                tensoradapt.unmerge(model)
            outputs.append(_output(generated, new_tokens))
        return Output(torch.cat([o.tokens for o in outputs]), torch.cat([o.logits for o in outputs]))

    return call


def serve_base(model, request: Request, new_tokens: int) -> Callable[[], Output]:
    def call() -> Output:
        with torch.no_grad():
            generated = model.generate(input_ids=request.input_ids, attention_mask=request.attention_mask,
                                       **generation_kwargs(new_tokens))
        return _output(generated, new_tokens)

    return call


def compare(ours: Output, other: Output, *, name: str, tolerance: float, exact_tokens: bool) -> dict:
    """Tokens and logits of ``other`` against ``ours``; raises `OutputMismatch` past the tolerance.

    Logits are compared at every step up to and including each request's first differing token
    (where both decoded the same prefix). ``exact_tokens``: every token must agree.
    """
    same = ours.tokens == other.tokens
    token_agreement = same.float().mean().item()
    if exact_tokens and not bool(same.all()):
        first = int((~same).nonzero()[0, 0])
        raise OutputMismatch(f"{name}: generated tokens differ from ours (request {first}): "
                             f"{ours.tokens[first].tolist()} vs {other.tokens[first].tolist()}")
    # Step s of request i is comparable when tokens 0..s-1 agree.
    prefix_agrees = torch.cat([torch.ones_like(same[:, :1]), same[:, :-1].cumprod(dim=1).bool()], dim=1)
    difference = (ours.logits - other.logits).abs().amax(dim=-1)
    max_diff = difference[prefix_agrees].max().item()
    scale = ours.logits.abs().max().item()
    if not max_diff <= tolerance * scale:
        raise OutputMismatch(f"{name}: logits differ from ours by {max_diff:.3g} > {tolerance:g} x {scale:.3g}")
    return {"token_agreement": token_agreement, "max_abs_logit_diff": max_diff, "logit_scale": scale}


def adapter_effect(ours: Output, base: Output) -> float:
    """How far the adapters move the first step's logits from the base model's (the check is not vacuous)."""
    return (ours.logits[:, 0] - base.logits[:, 0]).abs().max().item()


def measure(settings: Settings, *, methods: tuple[str, ...], n_requests: int, new_tokens: int,
            device: torch.device, dtype_name: str, repeats: int, seed: int, library_dir: Path,
            peft_adapters: str = "all") -> dict:
    """Per method: build, export, load into PEFT (timed), check equal outputs; then interleaved samples.

    ``peft_adapters``: ``"all"`` loads every task's LoRA into the ``PeftModel``; ``"batch"`` only
    those of the batch's tasks (PEFT's mixed-batch forward visits only the adapters a batch names,
    so the others do not change its speed, but loading them grows quadratically: each
    ``load_adapter`` walks every module, those of the adapters already loaded included).
    """
    dtype = DTYPES[dtype_name]
    base = t5_base(settings.model_size, device=device, dtype=dtype, seed=seed).eval()
    for parameter in base.parameters():
        parameter.requires_grad_(False)
    request = make_requests(settings, n_requests, base.config.vocab_size, device, seed)
    calls: dict[str, Callable[[], Output]] = {"base": serve_base(base, request, new_tokens)}
    base_output = calls["base"]()
    checks, setup = {}, {}
    keep = []  # the models stay alive while their calls are timed
    for method in methods:
        ours = adapted(base, method, settings, seed)
        start = time.perf_counter()
        tensoradapt.export_lora_library(ours, library_dir / method, [task_name(t) for t in range(settings.n_tasks)])
        export_s = time.perf_counter() - start
        loaded = list(range(settings.n_tasks)) if peft_adapters == "all" else request.tasks.tolist()
        peft_model, load_times = load_peft(base, library_dir / method, loaded)
        merged = merged_server(base, method, settings, seed)
        keep += [ours, peft_model, merged]
        calls[method] = serve_ours(ours, request, new_tokens)
        calls[f"peft_{method}"] = serve_peft(peft_model, request, new_tokens)
        calls[f"merged_{method}"] = serve_merged(merged, request, new_tokens)
        reference = calls[method]()
        exact = dtype_name == "fp32"
        checks[method] = {
            "adapter_effect": adapter_effect(reference, base_output),
            "peft": compare(reference, calls[f"peft_{method}"](), name=f"peft_{method}",
                            tolerance=TOLERANCE[dtype_name], exact_tokens=exact),
            "merged": compare(reference, calls[f"merged_{method}"](), name=f"merged_{method}",
                              tolerance=TOLERANCE[dtype_name], exact_tokens=exact),
        }
        setup[method] = {"export_s": export_s, "peft_load_s": sum(load_times), "peft_adapters": len(loaded),
                         "peft_load_first_s": load_times[0], "peft_load_last_s": load_times[-1]}
    synchronize(device)
    samples = interleaved_samples(calls, device, repeats=repeats, warmup=1, desc="serving")
    medians = {name: median(values) for name, values in samples.items()}
    tokens = n_requests * new_tokens
    return {
        "samples_s": samples,
        "median_s": medians,
        "tokens_per_s": {name: tokens / seconds for name, seconds in medians.items()},
        "speedup_vs_peft": {m: paired_ratio(samples[f"peft_{m}"], samples[m]) for m in methods},
        "speedup_vs_merged": {m: paired_ratio(samples[f"merged_{m}"], samples[m]) for m in methods},
        "time_vs_base": {m: paired_ratio(samples[m], samples["base"]) for m in methods},
        "checks": checks,
        "setup_s": setup,
    }


def markdown(payload: dict) -> str:
    """Summary: tokens/s and speed-ups per method, the equality checks, the one-off setup costs."""
    settings, env, methods = payload["settings"], payload["environment"], payload["settings"]["methods"]
    tps, command = payload["tokens_per_s"], f"python benchmarks/serving.py {payload['command']}".strip()
    shape = T5_SIZES[settings["model_size"]]
    lines = [
        "# Mixed-task serving: one routed model vs PEFT's mixed-adapter batch vs merged single-task",
        "",
        f"T5 `{settings['model_size']}` (d_model {shape['d_model']}, {shape['num_layers']} + "
        f"{shape['num_decoder_layers']} blocks, vocabulary {shape['vocab_size']}; {settings['dtype']}, "
        f"{env['device']}: {env['device_name']}, {env['torch_threads']} thread(s), {env['cpu_count']} CPUs, "
        f"torch {env['torch']}). {settings['n_tasks']} tasks; {settings['requests']} requests of "
        f"{settings['source_length']} tokens, each from its own task, answered by greedy decoding of "
        f"{settings['new_tokens']} tokens; r={settings['lora_rank']}, R={settings['tensor_rank']}, "
        f"N={settings['order']}, S={settings['n_skills']}, H={settings['n_heads']}. Median over "
        f"{settings['repeats']} interleaved rounds. Reproduce with `{command}`.",
        "",
        "## Throughput (tokens/s) and speed-up",
        "",
        markdown_table(
            ["method", "ours", "PEFT mixed batch", "merged, one task at a time", "ours / PEFT", "ours / merged"],
            [[m, f"{tps[m]:.0f}", f"{tps[f'peft_{m}']:.0f}", f"{tps[f'merged_{m}']:.0f}",
              f"{payload['speedup_vs_peft'][m]:.2f}x", f"{payload['speedup_vs_merged'][m]:.2f}x"] for m in methods],
            align=["l", "r", "r", "r", "r", "r"],
        ),
        "",
        f"The base model without adapters, same batch: {tps['base']:.0f} tokens/s. Speed-ups are medians of "
        "per-round time ratios (> 1: ours is faster); merged includes a merge and an unmerge per request.",
        "",
        "## Equal outputs (asserted before timing)",
        "",
        markdown_table(
            ["method", "tokens equal (PEFT)", "max abs logit diff (PEFT)", "tokens equal (merged)",
             "max abs logit diff (merged)", "max abs logit", "adapter effect"],
            [[m, f"{c['peft']['token_agreement']:.0%}", f"{c['peft']['max_abs_logit_diff']:.1e}",
              f"{c['merged']['token_agreement']:.0%}", f"{c['merged']['max_abs_logit_diff']:.1e}",
              f"{c['peft']['logit_scale']:.2f}", f"{c['adapter_effect']:.2f}"]
             for m, c in payload["checks"].items()],
            align=["l", "r", "r", "r", "r", "r", "r"],
        ),
        "",
        f"Logits are compared at every step while the tokens so far agree, within {settings['tolerance']:g} x "
        "the largest logit; the adapter effect is the largest change of the first step's logits from the base "
        "model's.",
        "",
        "## One-off costs",
        "",
        markdown_table(
            ["method", f"export of {settings['n_tasks']} tasks (s)", "PEFT load (s)", "LoRAs loaded",
             "first load (ms)", "last load (ms)"],
            [[m, f"{s['export_s']:.1f}", f"{s['peft_load_s']:.1f}", str(s["peft_adapters"]),
              f"{1e3 * s['peft_load_first_s']:.0f}", f"{1e3 * s['peft_load_last_s']:.0f}"]
             for m, s in payload["setup_s"].items()],
            align=["l", "r", "r", "r", "r", "r"],
        ),
        "",
        ("PEFT holds every task's LoRA." if settings["peft_adapters"] == "all" else
         f"PEFT holds only the LoRAs of the batch's {settings['requests']} tasks (`--peft-adapters batch`): its "
         "mixed-batch forward visits only the adapters a batch names, so the others would not change its speed, "
         "but each `load_adapter` walks every module, the adapters already loaded included, so loading all "
         f"{settings['n_tasks']} takes time quadratic in their number (compare the first and the last load)."),
    ]
    if payload.get("notes"):
        lines += ["", *[f"- {note}" for note in payload["notes"]]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_json=RESULTS_DIR / "serving.json", default_repeats=7)
    parser.add_argument("--model-size", choices=tuple(T5_SIZES), help="T5 shape (default: tiny; micro with --quick)")
    parser.add_argument("--requests", type=int, default=32, help="prompts in the batch, each from its own task")
    parser.add_argument("--source-length", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=16)
    add_adapter_arguments(parser, n_tasks_help="tasks of the model (PEFT loads one LoRA each)")
    parser.add_argument("--methods", default=",".join(ROUTED), help="comma-separated subset of " + ",".join(ROUTED))
    parser.add_argument("--peft-adapters", choices=("all", "batch"), default="batch",
                        help="LoRAs PEFT loads: every task's, or the batch's only (default; its speed is the same, "
                             "its load time grows quadratically with the adapters it holds)")
    parser.add_argument("--library-dir", type=Path, help="where to export the LoRA libraries (default: a temp folder)")
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    device = resolve_device(args.device)
    methods = tuple(m for m in args.methods.split(",") if m)
    unknown = sorted(set(methods) - set(ROUTED))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {ROUTED}")
    if args.model_size is None:
        args.model_size = "micro" if args.quick else "tiny"
    if args.quick:
        args.repeats = min(args.repeats, 2)
        args.n_tasks, args.requests = min(args.n_tasks, 6), min(args.requests, 4)
        args.source_length, args.new_tokens = 8, 4
        args.n_heads = min(args.n_heads, 8)
    settings = settings_from_args(args, model_size=args.model_size,
                                  batch_shape=(args.requests, args.source_length, args.new_tokens))
    with tempfile.TemporaryDirectory(prefix="serving-") as scratch:
        results = measure(settings, methods=methods, n_requests=args.requests, new_tokens=args.new_tokens,
                          device=device, dtype_name=args.dtype, repeats=args.repeats, seed=args.seed,
                          library_dir=args.library_dir or Path(scratch), peft_adapters=args.peft_adapters)
    payload = {
        "benchmark": "serving",
        "command": " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {
            "model_size": args.model_size,
            "n_tasks": args.n_tasks,
            "requests": args.requests,
            "source_length": args.source_length,
            "new_tokens": args.new_tokens,
            "lora_rank": args.lora_rank,
            "tensor_rank": args.tensor_rank,
            "order": args.order,
            "n_skills": args.n_skills,
            "n_heads": args.n_heads,
            "methods": list(methods),
            "dtype": args.dtype,
            "repeats": args.repeats,
            "seed": args.seed,
            "tolerance": TOLERANCE[args.dtype],
            "peft_adapters": args.peft_adapters,
        },
        "environment": environment(device),
        **results,
    }
    text = markdown(payload)
    print(text)
    write_outputs(args.json, payload, text)
    bar_chart(
        args.json.with_suffix(".png"),
        {m: {"ours": payload["tokens_per_s"][m], "PEFT mixed batch": payload["tokens_per_s"][f"peft_{m}"],
             "merged, one task at a time": payload["tokens_per_s"][f"merged_{m}"]} for m in methods},
        title=f"Mixed-task serving, T5 {args.model_size}, {args.n_tasks} tasks, {args.requests} requests "
              f"({args.dtype}, {device.type})",
        ylabel="tokens / s (greedy)",
        reference=payload["tokens_per_s"]["base"],
        reference_label="base model, no adapters",
    )
    return payload


if __name__ == "__main__":
    main()
