"""The one pipeline behind every method script: pre-train, adapt few-shot, evaluate, report.

    python t0_recipes/tensorpoly_i.py --preset tiny --data-dir ../shared/data --output-dir runs/tp1

Stages (each method script only names its method and calls `main`):

1. load the backbone (`t0_recipes.presets.load_model`; the ``paper`` preset stops at once
   offline, naming ``--model PATH`` and ``--preset tiny``) and inject the method's adapter
   (`t0_recipes.methods`) with one routing row per pre-training task;
2. T-REX only: fit the semantic prior's centroids on the mixture and set its task-prior table;
3. multi-task pre-training on the mixture (`t0_recipes.data.mixture`, `t0_recipes.training.pretrain`), with
   checkpoints under ``<output-dir>/pretrain_<method>_<preset>/`` and ``--resume``; the evaluated
   tasks and the ``--hold-out`` ones (`t0_recipes.data.holdout`) are left out of it;
4. for every held-out task and seed: a copy of the pre-trained model, a fresh task, few-shot
   training in ``--mode`` (`t0_recipes.training.fewshot`), rank classification (`t0_recipes.protocol`);
5. the report (`t0_recipes.reporting.report`): ``<stem>.json``, ``.md`` and ``.png``, the run's
   configuration ``<stem>_config.json`` and the run records ``<stem>[_zeroshot].run.json`` (with
   the seconds of every phase and of every (task, seed)), in ``--output-dir``.

Multi-GPU: ``accelerate launch t0_recipes/<method>.py ...``; every process trains its share of
each global batch, the main process writes the outputs.
"""

from __future__ import annotations

import argparse
import copy
import os
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from t0_recipes.cli import apply_threads, base_parser, evaluated_tasks, preset_from_args, protocol_from_args
from t0_recipes.data.rows import TASK_MODES
from t0_recipes.data.hub import P3_PER_DATASET_CAP, HubUnavailableError
from t0_recipes.data.validate import DataError, check_data
from t0_recipes.methods import ADAPTER_SIZES, adapter_config_for, check_mode, modes_of, routes_by_task
from t0_recipes.reporting.report import write_run_record
from t0_recipes.run_dir import OutputDirError, claim_output_dir
from t0_recipes.scoring.scorers import get_scorer
from t0_recipes.training.zero_shot_routing import ROUTINGS, check_routing_method, evaluate_zero_shot_routing
from tensoradapt.atomic import atomic_write
from t0_recipes.presets import ModelUnavailableError, Preset, load_model
from tensoradapt.config import METHOD_LABELS

__all__ = ["RecipeConfig", "main", "recipe_parser", "run_recipe"]

logger = logging.getLogger(__name__)

#: Errors a user can fix from the command line: reported as one line (``--debug``: the traceback).
RECIPE_ERRORS = (OutputDirError, DataError, ModelUnavailableError, HubUnavailableError, FileNotFoundError, ValueError)


@dataclass
class RecipeConfig:
    """Everything a recipe run was asked to do; written as ``<stem>_config.json``.

    Attributes:
        method, mode: the adapter method and the few-shot training mode.
        preset: the preset with its overrides (`Preset.to_json`).
        model: ``--model PATH`` or ``None`` (the preset's model).
        adapter: the injected ``AdapterConfig`` (``to_dict``).
        tasks, seeds, data_dir, source, eval_max_rows: the protocol's (``tasks``: every evaluated
            task, the held-out ones of ``hold_out`` included).
        hold_out: pre-training tasks held out of the mixture and evaluated (``--hold-out``).
        hold_out_pools: per held-out task, the rows of its shot pool and evaluation pool.
        task_mode: ``"templates"`` or ``"datasets"``: what a pre-training task is.
        per_dataset_cap: pre-training examples per dataset, shared by its templates.
        mixture_tasks: pre-training datasets (local source) and the number of routing rows.
        checkpoint_every, resume: pre-training checkpoints.
        output_dir: where everything is written.
    """

    method: str
    mode: str
    preset: dict[str, Any]
    model: str | None
    adapter: dict[str, Any]
    tasks: list[str]
    seeds: list[int]
    data_dir: str | None
    source: str
    eval_max_rows: int | None
    task_mode: str
    per_dataset_cap: int
    checkpoint_every: int | None
    resume: bool
    output_dir: str
    mixture_tasks: list[str] = field(default_factory=list)
    n_pretrain_tasks: int = 0
    hold_out: list[str] = field(default_factory=list)
    hold_out_pools: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def recipe_parser(method: str) -> argparse.ArgumentParser:
    """`t0_recipes.cli.base_parser` plus the pre-training and few-shot arguments of ``method``."""
    parser = base_parser(f"{METHOD_LABELS[method]} on the T0 held-out tasks: multi-task pre-training, "
                         "few-shot adaptation, rank classification")
    parser.add_argument("--mode", choices=modes_of(method), default="full",
                        help="few-shot training mode: full (routing and modules), routing_only (z), "
                             "modules_only (mu: skills averaged)")
    parser.add_argument("--pretrain-steps", type=int, default=None,
                        help="override the preset's pre-training steps (0: no pre-training)")
    parser.add_argument("--task-mode", choices=TASK_MODES, default=None,
                        help="pre-training tasks: every template ('templates', T0's 313) or every dataset")
    parser.add_argument("--per-dataset-cap", type=int, default=P3_PER_DATASET_CAP,
                        help="pre-training examples per dataset, shared out over its templates (T0: 500000)")
    parser.add_argument("--checkpoint-every", type=int, default=None, help="pre-training steps between checkpoints")
    parser.add_argument("--resume", action="store_true", help="continue pre-training from the latest checkpoint")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even where a GPU is visible")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete what --output-dir holds before the run (default: refuse a non-empty folder)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not just its one line")
    parser.add_argument("--zero-shot", action="store_true",
                        help="also evaluate every held-out task before few-shot training (a fresh routing row: "
                             "the skills averaged; T-REX: the prior of the seed's unlabelled inputs), first seed only")
    parser.add_argument("--zero-shot-routing", nargs="+", default=[], choices=sorted(ROUTINGS), metavar="ROUTING",
                        help="also evaluate every held-out task from the pre-trained model routed without training "
                             "(Poly, MHR, TensorPoly-I / -II): arrow (every token by Arrow, first seed only), "
                             "arrow_task (a routing row from each seed's few-shot inputs, labels unused); "
                             "records <stem>_zeroshot_<ROUTING>.run.json (t0_recipes.training.zero_shot_routing)")
    parser.add_argument("--arrow-top-k", type=int, default=None,
                        help="skills per token of --zero-shot-routing (default: all, softmax over every skill, mttl's)")
    return parser


def _preset(args: argparse.Namespace) -> Preset:
    preset = preset_from_args(args)
    changes: dict[str, Any] = {}
    if args.pretrain_steps is not None:
        changes["steps"] = args.pretrain_steps
    if args.task_mode is not None:
        changes["task_mode"] = args.task_mode
    if changes:
        preset = dataclasses.replace(preset, pretrain=dataclasses.replace(preset.pretrain, **changes))
    return preset


def run_recipe(method: str, args: argparse.Namespace) -> dict[str, Path]:
    """Run every stage (module docstring) for ``method``; returns the written files by kind.

    Raises:
        One of `RECIPE_ERRORS` when the model or the data cannot be had (`main` prints its line).
    """
    import tensoradapt

    from t0_recipes.training.fewshot import FewShotAdapter
    from t0_recipes.data.mixture import load_mixture
    from t0_recipes.training.pretrain import pretrain
    from t0_recipes.protocol import run_protocol
    from t0_recipes.reporting.report import build_report, write_report
    from t0_recipes.training.loop import make_accelerator

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    check_mode(method, args.mode)
    start = time.perf_counter()
    preset = _preset(args)
    apply_threads(preset)
    hp = preset.pretrain
    tasks = evaluated_tasks(args)
    check_routing_method(method, args.zero_shot_routing)
    if args.zero_shot_routing and hp.steps == 0:
        raise ValueError("--zero-shot-routing routes the skills of a pre-trained model; it needs --pretrain-steps > 0")
    pools: dict[str, dict[str, int]] = {}
    if args.source == "local":  # every file the run will read, read and rendered before anything trains
        pretrains = hp.steps > 0 or method == "trex"
        checked = check_data(args.data_dir, mixture_tasks=None if pretrains else (), eval_tasks=tasks,
                             hold_out=args.hold_out, seeds=args.seeds, missing="skip")
        logger.info("data: %s", checked.summary())
        pools = checked.pools
    model, tokenizer = load_model(preset, args.model)
    out = Path(args.output_dir)
    stem = f"{method}_{preset.name}" if args.mode == "full" else f"{method}_{args.mode}_{preset.name}"
    routed = routes_by_task(method)

    mixture, index = [], None
    if hp.steps > 0 or method == "trex":
        mixture, index = load_mixture(
            args.source, args.data_dir, task_mode=hp.task_mode, exclude=tasks, per_dataset_cap=args.per_dataset_cap,
            max_rows_per_task=hp.max_rows_per_task, seed=preset.seed,
        )
    n_tasks = len(index) if routed and index is not None and len(index) else 1
    adapter = adapter_config_for(method, preset.name if preset.name in ADAPTER_SIZES else "tiny", n_tasks=n_tasks)
    with torch.random.fork_rng(devices=[]):  # the adapter's init comes from the run's seed, nothing else
        torch.manual_seed(preset.seed)
        tensoradapt.inject(model, adapter)
    scorer = get_scorer(preset.scorer)
    protocol = protocol_from_args(args, preset)
    config = RecipeConfig(
        method=method, mode=args.mode, preset=preset.to_json(), model=args.model, adapter=adapter.to_dict(),
        tasks=tasks, seeds=list(args.seeds), data_dir=args.data_dir, source=args.source,
        eval_max_rows=protocol.eval_max_rows, task_mode=hp.task_mode,
        per_dataset_cap=args.per_dataset_cap, checkpoint_every=args.checkpoint_every, resume=args.resume,
        output_dir=str(out), mixture_tasks=sorted({e.task for e in mixture}), n_pretrain_tasks=len(index or ()),
        hold_out=list(args.hold_out), hold_out_pools=pools,
    )

    trex_prior = None
    if method == "trex":
        from tensoradapt.trex import set_task_prior

        from t0_recipes.training.trex_prior import fit_prior, task_prior_table

        trex_prior = fit_prior(mixture, adapter.trex_n_clusters, seed=preset.seed)
        set_task_prior(model, task_prior_table(trex_prior, mixture, n_tasks))

    accelerator = make_accelerator(mixed_precision=preset.fewshot.precision, cpu=args.cpu)
    collator = scorer.collator(tokenizer, hp.max_length)
    pretrain_info: dict[str, Any] = {"steps": hp.steps, "examples": len(mixture), "tasks": len(index or ())}
    phases_s: dict[str, float | None] = {"setup": time.perf_counter() - start, "pretrain": None, "zero_shot": None}
    if hp.steps > 0:
        result = pretrain(
            model, mixture, collator, hp, accelerator=accelerator, with_task_ids=routed, scorer=scorer,
            output_dir=out / f"pretrain_{method}_{preset.name}", checkpoint_every=args.checkpoint_every,
            resume=args.resume, seed=preset.seed, progress=not args.quiet,
        )
        pretrain_info |= {
            "resumed_from_step": result.start_step,
            "final_loss": result.losses[-1] if result.losses else None,
            "checkpoint": str(result.checkpoint) if result.checkpoint else None,
            "wall_time_s": result.wall_time_s,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        }
        phases_s["pretrain"] = result.wall_time_s

    adapt = FewShotAdapter(method, args.mode, preset.fewshot, accelerator=accelerator,
                           route=tensoradapt.use_routing if routed else None, trex_prior=trex_prior,
                           scorer=scorer, progress=not args.quiet)
    zero_shot_results = None
    if args.zero_shot:
        clock = time.perf_counter()
        zero_shot = dataclasses.replace(protocol, seeds=list(protocol.seeds)[:1], skipped={})
        zero_shot_results = run_protocol(lambda: copy.deepcopy(model), tokenizer, zero_shot, adapt=adapt.open_only,
                                         route=adapt.route, scorer=scorer, progress=not args.quiet)
        phases_s["zero_shot"] = time.perf_counter() - clock
    routing_results = {}
    for routing in args.zero_shot_routing:
        clock = time.perf_counter()
        routing_results[routing] = evaluate_zero_shot_routing(
            model, tokenizer, protocol, method=method, routing=routing, scorer=scorer, top_k=args.arrow_top_k,
            progress=not args.quiet)
        phases_s[f"zero_shot_{routing}"] = time.perf_counter() - clock
    clock = time.perf_counter()
    results = run_protocol(lambda: copy.deepcopy(model), tokenizer, protocol, adapt=adapt,
                           route=adapt.route, scorer=scorer, progress=not args.quiet)
    phases_s["fewshot"] = time.perf_counter() - clock
    logger.info("seconds per phase: %s", ", ".join(f"{k} {v:.1f}" for k, v in phases_s.items() if v is not None))
    if not accelerator.is_main_process:
        return {}
    report = build_report(
        results, method=method, preset=preset.name, params=adapt.params or _counts(model),
        wall_time_s=time.perf_counter() - start, random_init=preset.random_init,
        notes=_notes(args.mode, preset, protocol, pretrain_info),
    )
    report |= {"mode": args.mode, "pretrain": pretrain_info, "config": asdict(config), "phases_s": phases_s}
    out.mkdir(parents=True, exist_ok=True)
    paths = write_report(report, out, stem=stem)
    paths["config"] = out / f"{stem}_config.json"
    atomic_write(paths["config"], lambda temporary: Path(temporary).write_text(config.to_json(), encoding="utf-8"))
    variant = "fewshot" if hp.steps > 0 else "no_pretrain"
    paths["run"] = write_run_record(out / f"{stem}.run.json", method=method, variant=variant, mode=args.mode,
                                    results=results, wall_time_s=report["wall_time_s"], config=asdict(config),
                                    phases_s=phases_s)
    if zero_shot_results is not None:
        paths["zero_shot_run"] = write_run_record(
            out / f"{stem}_zeroshot.run.json", method=method, variant="zeroshot" if hp.steps > 0 else "no_pretrain_zeroshot",
            mode=args.mode, results=zero_shot_results, wall_time_s=None, config=asdict(config), phases_s=phases_s)
    for routing, routing_result in routing_results.items():
        paths[f"{ROUTINGS[routing]}_run"] = write_run_record(
            out / f"{stem}_{ROUTINGS[routing]}.run.json", method=method, variant=ROUTINGS[routing], mode=args.mode,
            results=routing_result, wall_time_s=phases_s[f"zero_shot_{routing}"],
            config=asdict(config) | {"zero_shot_routing": {"routing": routing, "top_k": args.arrow_top_k,
                                                          "temperature": 1.0}},
            phases_s=phases_s)
    _log_summary(report, paths)
    return paths


def _counts(model: nn.Module) -> dict[str, int]:
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters())}


def _notes(mode: str, preset: Preset, protocol, pretrain_info: dict[str, Any]) -> list[str]:
    notes = [f"Few-shot mode: {mode}; {preset.fewshot.steps} steps, batch {preset.fewshot.batch_size}, "
             f"lr {preset.fewshot.lr}; evaluation rows per task capped at {protocol.eval_max_rows}."]
    if pretrain_info["steps"]:
        notes.append(f"Pre-training: {pretrain_info['steps']} steps on {pretrain_info['examples']} examples "
                     f"of {pretrain_info['tasks']} tasks (final LM loss {pretrain_info.get('final_loss') or float('nan'):.3f}).")
    else:
        notes.append("No multi-task pre-training (--pretrain-steps 0).")
    notes.append("Evaluated checkpoint: the last one of every few-shot run (no selection on evaluation rows).")
    return notes + [f"Skipped {name}: {why}" for name, why in protocol.skipped.items()]


def _log_summary(report: dict[str, Any], paths: dict[str, Path]) -> None:
    summary = report["summary"]
    for task, entry in summary["tasks"].items():
        logger.info("%-12s median accuracy %.1f %%", task, 100 * entry["median"])
    logger.info("mean over %d tasks: %.1f %%", summary["n_tasks"], 100 * summary["mean"])
    if report["random_init"]:
        logger.warning("the tiny preset's backbone is random-init: accuracy is near chance by design; "
                       "the run checks the pipeline, not the method")
    for kind, path in paths.items():
        logger.info("wrote %s %s", kind, path)


def main(method: str, argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Parse ``argv`` (default ``sys.argv[1:]``) and `run_recipe`."""
    parser = recipe_parser(method)
    args = parser.parse_args(argv)
    for name in ("pretrain_steps", "steps"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "pretrain_steps" else 1):
            parser.error(f"--{name.replace('_', '-')} {value} is too small: pre-training takes >= 0 steps, few-shot >= 1")
    if args.arrow_top_k is not None and args.arrow_top_k < 1:
        parser.error(f"--arrow-top-k {args.arrow_top_k} must be at least 1")
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        parser.error(f"--checkpoint-every {args.checkpoint_every} must be at least 1")
    try:  # a task without evaluation rows stops here, before any file or model is touched
        evaluated_tasks(args)
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    # Under `accelerate launch` every process runs this; the main one (RANK 0) holds the folder.
    main_process = int(os.environ.get("RANK", "0")) == 0
    try:
        with claim_output_dir(args.output_dir, resume=args.resume, overwrite=args.overwrite) if main_process \
                else nullcontext():
            return run_recipe(method, args)
    except RECIPE_ERRORS as error:
        if args.debug:
            raise
        parser.exit(2, f"{parser.prog}: error: {error}\n")
