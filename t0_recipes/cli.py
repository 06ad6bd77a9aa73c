"""Command-line plumbing shared by the per-method scripts (``python -m t0_recipes.<method>``).

Every script takes the same arguments (``--preset``, ``--model``, ``--data-dir``, ``--tasks``,
``--hold-out``, ``--seeds``, ``--output-dir``, ...). `t0_recipes.pipeline` adds the adapter recipes' arguments
and stages; `run` here is the zero-shot path: it runs the protocol on the backbone as it is and
writes ``<output-dir>/<method>_<preset>.{json,md,png}``.

The default preset is ``paper`` (T0-3B): without a local copy and without network it stops at
once with a message naming ``--model PATH`` and ``--preset tiny``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from t0_recipes.data.hub import HubUnavailableError
from t0_recipes.scoring.seq2seq import RouteFn
from t0_recipes.presets import PRESETS, ModelUnavailableError, Preset, get_preset, load_model
from t0_recipes.protocol import AdaptFn, ProtocolConfig, run_protocol
from t0_recipes.reporting.report import build_report, write_report
from t0_recipes.data.holdout import HOLD_OUT_SHOTS, TOPIC_CLUSTER, check_evaluated_tasks
from t0_recipes.data.tasks import FEWSHOT_SEEDS, HELD_OUT, TASKS, TRAINING

__all__ = ["apply_threads", "base_parser", "evaluated_tasks", "preset_from_args", "protocol_from_args", "run"]

logger = logging.getLogger(__name__)


def base_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every T0 recipe script accepts."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                        help="'paper': T0-3B and the paper's hyper-parameters; 'minilm': a pretrained encoder as a "
                             "cross-encoder on CPU (the proxy that can fail); 'tiny': a random-init toy T5 on CPU")
    parser.add_argument("--model", metavar="PATH", default=None, help="local checkpoint folder overriding the preset's model")
    parser.add_argument("--data-dir", default=None,
                        help="folder with t0_fewshot/ and t0_validation/ (or one of them); default $TENSORADAPT_T0_DATA")
    parser.add_argument("--source", choices=["local", "hub"], default="local", help="rows from --data-dir or the hub")
    parser.add_argument("--tasks", nargs="+", default=list(HELD_OUT), choices=sorted(TASKS), metavar="TASK",
                        help="tasks to run (default: the eleven held-out tasks; a pre-training task only with "
                             f"--hold-out); known: {', '.join(sorted(TASKS))}")
    parser.add_argument("--hold-out", nargs="+", default=[], choices=TRAINING, metavar="TASK",
                        help="pre-training tasks of t0_train to hold out of the mixture and evaluate next to --tasks "
                             f"({HOLD_OUT_SHOTS} shots per seed from a fixed shot pool, evaluation rows from the rest), "
                             f"e.g. {' '.join(TOPIC_CLUSTER)}; known: {', '.join(TRAINING)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(FEWSHOT_SEEDS), help="few-shot subset seeds")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's few-shot steps")
    parser.add_argument("--lr", type=float, default=None, help="override the preset's few-shot learning rate of the modules")
    parser.add_argument("--lr-routing", type=float, default=None,
                        help="override the preset's few-shot learning rate of the routing parameters")
    parser.add_argument("--eval-max-rows", type=int, default=None, help="cap evaluation rows per task")
    parser.add_argument("--output-dir", "--out", dest="output_dir", default="t0_results",
                        help="output folder of the report (and of the checkpoints)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: the preset's; tiny uses 1, paper torch's default)")
    return parser


def preset_from_args(args: argparse.Namespace) -> Preset:
    """The preset with the command line's overrides applied."""
    preset = get_preset(args.preset)
    overrides = {name: value for name, value in
                 (("steps", args.steps), ("lr", args.lr), ("lr_routing", args.lr_routing)) if value is not None}
    for name, value in overrides.items():
        if value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if overrides:
        preset = dataclasses.replace(preset, fewshot=dataclasses.replace(preset.fewshot, **overrides))
    if args.threads is not None:
        preset = dataclasses.replace(preset, cpu_threads=args.threads)
    return preset


def apply_threads(preset: Preset) -> None:
    """``torch.set_num_threads(preset.cpu_threads)`` where the preset sets it."""
    if preset.cpu_threads is not None:
        if preset.cpu_threads < 1:
            raise ValueError(f"--threads must be at least 1, got {preset.cpu_threads}")
        torch.set_num_threads(preset.cpu_threads)


def evaluated_tasks(args: argparse.Namespace) -> list[str]:
    """``--tasks`` then every ``--hold-out`` task not among them: the tasks a run evaluates.

    Raises:
        ValueError: one line naming the task and the fix: a pre-training task in ``--tasks``
            that is not held out (it has no evaluation rows), or ``--hold-out`` with
            ``--source hub`` (P3's mixture cannot leave a task out).
    """
    if args.hold_out and args.source != "local":
        raise ValueError(f"--hold-out {' '.join(args.hold_out)} reads t0_train/<task>/train.jsonl and leaves the "
                         "task out of the local mixture; it needs --source local")
    tasks = list(dict.fromkeys([*args.tasks, *args.hold_out]))
    check_evaluated_tasks(tasks, args.hold_out)
    return tasks


def protocol_from_args(args: argparse.Namespace, preset: Preset) -> ProtocolConfig:
    """The protocol settings of the command line."""
    return ProtocolConfig(
        tasks=evaluated_tasks(args),
        hold_out=list(args.hold_out),
        seeds=args.seeds,
        data_dir=args.data_dir,
        source=args.source,
        eval_max_rows=args.eval_max_rows if args.eval_max_rows is not None else preset.fewshot.eval_max_examples,
        eval_batch_size=preset.fewshot.eval_batch_size,
        eval_templates=preset.fewshot.eval_templates,
        max_length=preset.fewshot.max_length,
    )


def run(
    args: argparse.Namespace,
    *,
    method: str,
    make_adapt: Callable[[Preset], AdaptFn | None],
    count_params: Callable[[nn.Module], dict[str, int]] | None = None,
    route: RouteFn | None = None,
    prepare: Callable[[nn.Module, Preset], nn.Module] | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Load the model, run the protocol, write the report; exits with a message on missing model / data.

    Args:
        method: the report's name for the run.
        make_adapt: ``preset -> adapt`` (``None`` for zero-shot).
        count_params: ``model -> {"trainable": n, "total": n}`` of the model as adapted.
        prepare: applied once to the loaded model (e.g. inject adapters) before copies are made.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        evaluated_tasks(args)
    except ValueError as error:
        sys.exit(str(error))
    preset = preset_from_args(args)
    apply_threads(preset)
    start = time.perf_counter()
    try:
        model, tokenizer = load_model(preset, args.model)
    except ModelUnavailableError as error:
        sys.exit(str(error))
    if prepare is not None:
        model = prepare(model, preset)
    config = protocol_from_args(args, preset)
    adapt = make_adapt(preset)
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()} if adapt is not None else None

    def make_model() -> nn.Module:
        if state is not None:  # every seed starts from the same weights
            model.load_state_dict(state)
        return model

    try:
        results = run_protocol(make_model, tokenizer, config, adapt=adapt, route=route, progress=not args.quiet)
    except (HubUnavailableError, FileNotFoundError) as error:
        sys.exit(str(error))
    params: dict[str, Any] = count_params(model) if count_params is not None else {
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in model.parameters()),
    }
    skipped = [f"Skipped {name}: {why}" for name, why in config.skipped.items()]
    report = build_report(
        results,
        method=method,
        preset=preset.name,
        params=params,
        wall_time_s=time.perf_counter() - start,
        random_init=preset.random_init,
        notes=[*notes, f"Few-shot steps: {preset.fewshot.steps}; eval rows cap: {config.eval_max_rows}.", *skipped],
    )
    paths = write_report(report, args.output_dir, stem=f"{method}_{preset.name}")
    for kind, path in paths.items():
        logger.info("wrote %s %s", kind, path)
    return paths
