"""What compressing a library of LoRAs costs in accuracy, on the real-model proxy (all-MiniLM-L6-v2).

    python benchmarks/t0_proxy_library.py --data-dir ../shared/data            # make proxy-library
    python benchmarks/t0_proxy_library.py --data-dir ../shared/data --tasks ag_news trec --steps 20

1. **The library.** One LoRA per task of ``--tasks`` (default: AG News, TREC, IMDB, Rotten
   Tomatoes, SST-2), the proxy's LoRA (`t0_recipes.methods`, ``minilm``: rank 8 on every BERT
   linear), no parameter shared between tasks: they train together with the scoring head, which
   becomes part of the base every LoRA belongs to (`train_library`; with the head frozen at its
   random init MiniLM's LoRAs learn topic and nothing else), on the tasks' shot pools
   (`t0_recipes.data.holdout.split_pools`: up to 500 rows each, one random template per row),
   ``--steps`` AdamW steps of ``--batch-size`` at ``--lr``. Each is written as a PEFT LoRA folder
   (`tensoradapt.export_lora_library`) and read back like anyone's.
2. **The reference.** Each LoRA alone on the base (``from_lora_library(..., "lora")``), on
   ``--eval-rows`` rows of its task's evaluation pool (rows nothing trained on; one seeded template
   per row, the proxy's protocol).
3. **The imports.** `tensoradapt.from_lora_library` into a fresh MiniLM, once per compression,
   then every task through its task id on the same rows:

   * ``poly``: exact (each LoRA a skill, one-hot rows); it must give the reference's outcome on
     every example, and the run fails (after writing what it measured) if it does not;
   * ``poly`` with ``--shared-skills S``: ``S`` skills shared by all LoRAs (`tensoradapt.shared_skills`);
   * ``tensorpoly_i`` at each ``--tensor-ranks R`` (order ``--order``): each LoRA's columns as
     entangled tensors of rank ``R``;
   * ``tensorpoly_ii``: each column one simple tensor;
   * ``tlora`` at ``--tlora-rank R``: each LoRA imported alone (one model per task).

4. **The report.** Per compression: adapter parameters against the library's, the relative error
   of the task updates (`LibraryImport`: over all layers, largest layer, per task), accuracy per
   task and its mean, the mean's difference from the reference with a paired bootstrap 95 %
   interval (examples resampled within each task), and the share of the LoRAs' gain over the
   model without adapter (also a row) that it keeps. ``<out>/lora_library.{json,md,png}``.

``--loras-from DIR`` skips step 1 and measures the PEFT LoRAs in ``DIR/<task>`` (a run's
``--loras-dir``, or any LoRAs of the same base).

Cost on one core (MiniLM, 64-token pairs): training is ~1 s per step of 8 examples; one
evaluation of all five tasks at 256 rows is ~2 min; the default run took 38 minutes.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import logging
import random
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(REPO) not in sys.path:  # t0_recipes/ sits at the repository root, outside the installed package
    sys.path.insert(0, str(REPO))

from common import RESULTS_DIR, environment, markdown_table, write_outputs  # noqa: E402

logger = logging.getLogger("t0_proxy_library")

#: Topic and sentiment ``t0_train`` tasks (on this budget MiniLM's LoRAs learn AG News far above chance, the
#: others little: docs/results/lora_library.md).
LIBRARY_TASKS = ("ag_news", "trec", "imdb", "rotten_tomatoes", "sst2")
RESULTS = RESULTS_DIR / "lora_library"


@dataclasses.dataclass(frozen=True)
class Compression:
    """One way of importing the library.

    Attributes:
        name: its label in the report (``poly``, ``poly_s2``, ``tensorpoly_i_r4``, ...).
        method: the `tensoradapt.from_lora_library` method.
        options: its other keyword arguments (``n_skills``, ``tensor_rank``, ``order``).
        per_task: import each LoRA alone (``tlora`` holds one LoRA).
    """

    name: str
    method: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    per_task: bool = False


def compressions(args: argparse.Namespace, n_tasks: int) -> list[Compression]:
    """The imports of a run, in report order: exact first, then by how much they keep."""
    out = [Compression("poly", "poly")]
    out += [Compression(f"poly_s{s}", "poly", {"n_skills": s, "fit_steps": args.fit_steps})
            for s in sorted(args.shared_skills) if s < n_tasks]
    out += [Compression(f"tensorpoly_i_r{r}", "tensorpoly_i", {"tensor_rank": r, "order": args.order})
            for r in sorted(args.tensor_ranks)]
    out.append(Compression("tensorpoly_ii", "tensorpoly_ii", {"order": args.order}))
    if args.tlora_rank:
        out.append(Compression(f"tlora_r{args.tlora_rank}", "tlora", {"tensor_rank": args.tlora_rank,
                                                                         "order": args.order}, per_task=True))
    return out


# ------------------------------------------------------------------------------------------- rows


def library_examples(data_dir: str, tasks: Sequence[str], *, eval_rows: int, seed: int):
    """``(train, evaluation)``: per task its shot pool and its capped evaluation pool, rendered.

    Task ``i`` of ``tasks`` carries task id ``i`` (the imported library's order). Training rows get
    one template each from ``random.Random(seed)``; evaluation rows are the proxy's
    (`t0_recipes.protocol.eval_examples`: a ``random.Random(0)`` subset, one seeded template each).
    """
    from t0_recipes.data.holdout import split_pools
    from t0_recipes.data.rows import TaskIndex, load_train_rows, sample_template_examples
    from t0_recipes.protocol import ProtocolConfig, eval_examples

    index = TaskIndex("datasets")
    train, evaluation = {}, {}
    for task in tasks:
        task_id = index.add(task)
        pool, _ = split_pools(load_train_rows(data_dir, task), task)
        rendered = sample_template_examples(pool, task, index=TaskIndex("datasets"), rng=random.Random(seed))
        train[task] = [dataclasses.replace(e, task_id=task_id) for e in rendered]
        config = ProtocolConfig(tasks=[task], seeds=[seed], data_dir=data_dir, hold_out=[task],
                                eval_templates="random", eval_max_rows=eval_rows)
        evaluation[task] = [dataclasses.replace(e, task_id=task_id) for e in eval_examples(config, task)]
    return train, evaluation


# ------------------------------------------------------------------------------------------ models


def train_library(base: torch.nn.Module, train: Mapping[str, list], collator, args: argparse.Namespace,
                  output_dir: Path):
    """One LoRA per task and the base's scoring head, trained together on the tasks' shot pools.

    The LoRAs share no parameter: a Poly model with one skill per task (the proxy's LoRA size: rank 8
    on every BERT linear), identity routing fixed at one-hot rows, so task ``t``'s examples move only
    skill ``t``. The head trains alongside (a frozen random head leaves MiniLM's LoRAs unable to learn
    anything but topic). `t0_recipes.training.pretrain.pretrain` runs it, as the proxy's multi-task
    pre-training: AdamW at ``--lr``, ``--steps`` steps of ``--batch-size`` examples drawn from all
    tasks, its checkpoint written under ``output_dir``.

    Returns:
        ``(model, head)``: the trained model and its head's state (the base every LoRA belongs to).
    """
    import tensoradapt
    from t0_recipes.methods import adapter_config_for
    from t0_recipes.presets import PretrainHParams
    from t0_recipes.scoring.cross_encoder import HEAD_NAME
    from t0_recipes.scoring.scorers import get_scorer
    from t0_recipes.training.loop import make_accelerator
    from t0_recipes.training.pretrain import pretrain

    tasks = list(train)
    model = copy.deepcopy(base)
    config = adapter_config_for("poly", "minilm", n_tasks=len(tasks), n_skills=len(tasks),
                                routing_normalization="identity")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        tensoradapt.inject(model, config)
    for layer in tensoradapt.adapted_layers(model).values():
        with torch.no_grad():
            layer.combiner.logits.copy_(torch.eye(len(tasks)))
    for parameter in tensoradapt.parameter_groups(model)["routing"]:
        parameter.requires_grad_(False)
    hparams = PretrainHParams(optimizer="adamw", lr_modules=args.lr, steps=args.steps, batch_size=args.batch_size,
                              precision="fp32", max_length=args.max_length)
    result = pretrain(model, [example for task in tasks for example in train[task]], collator, hparams,
                      accelerator=make_accelerator(cpu=True), with_task_ids=True, scorer=get_scorer("cross_encoder"),
                      output_dir=output_dir, seed=args.seed, progress=not args.quiet)
    logger.info("library: %d steps, final loss %.4f in %.0f s", args.steps, result.losses[-1], result.wall_time_s)
    head = {key: value.detach().clone() for key, value in getattr(model, HEAD_NAME).state_dict().items()}
    return model.eval(), head


def evaluate(model: torch.nn.Module, examples, collator, args: argparse.Namespace, *, routed: bool,
             desc: str) -> list[int]:
    """0/1 outcome per example (rank classification, the examples' task ids routed when ``routed``)."""
    import tensoradapt
    from t0_recipes.scoring.rank import evaluate_examples
    from t0_recipes.scoring.scorers import get_scorer

    result = evaluate_examples(model.eval(), examples, collator, batch_size=args.eval_batch_size,
                               route=tensoradapt.use_routing if routed else None,
                               rank_fn=get_scorer("cross_encoder").rank_scores, desc=desc, progress=not args.quiet)
    return [int(p == g) for p, g in zip(result.predictions, result.golds)]


def import_library(base: torch.nn.Module, folders: Mapping[str, Path], compression: Compression):
    """``[(tasks, LibraryImport)]``: one import of the whole library, or one per task (``per_task``)."""
    import tensoradapt

    groups = [[task] for task in folders] if compression.per_task else [list(folders)]
    return [(group, tensoradapt.from_lora_library(copy.deepcopy(base), {t: folders[t] for t in group},
                                                  compression.method, **compression.options))
            for group in groups]


# ------------------------------------------------------------------------------------------ report


def _adapter_parameters(imports) -> int:
    import tensoradapt

    return sum(tensoradapt.count_parameters(result.model)["adapter"] for _, result in imports)


def _relative_error(imports) -> dict[str, Any]:
    """Errors of the imports: over all layers and tasks, the largest layer's, and per task."""
    from tensoradapt.library import combined_error

    per_task = {task: error for _, result in imports for task, error in result.task_errors.items()}
    norms = {task: norm for _, result in imports for task, norm in result.update_norms.items()}
    return {"overall": combined_error(per_task, norms), "max_layer": max(r.max_layer_error for _, r in imports),
            "per_task": per_task}


def summarize(outcomes: Mapping[str, Mapping[str, list[int]]], reference: Mapping[str, list[int]],
              details: Mapping[str, Mapping[str, Any]], tasks: Sequence[str]) -> dict[str, Any]:
    """Accuracy per task and mean, and the paired difference from the reference, per compression.

    With a `BASE` row (the model without adapter), ``gain_kept`` is each row's share of the LoRAs'
    gain over it: ``(mean - base mean) / (LoRAs' mean - base mean)``. ``delta``: the proxy's paired
    bootstrap (`paired_mean_difference`: every task resampled alone, tasks weigh equally).
    """
    from t0_recipes.reporting.experiment import paired_mean_difference

    rows = {}
    for name, per_task in {"lora": reference, **outcomes}.items():
        accuracy = {task: float(np.mean(per_task[task])) for task in tasks}
        rows[name] = {
            **details.get(name, {}),
            "accuracy": accuracy,
            "mean": float(np.mean(list(accuracy.values()))),
            "delta": None if name == "lora" else paired_mean_difference(per_task, reference),
            "outcomes_equal_reference": sum(int(a == b) for t in tasks for a, b in zip(per_task[t], reference[t])),
        }
    if BASE in rows:
        gain = rows["lora"]["mean"] - rows[BASE]["mean"]
        for row in rows.values():
            row["gain_kept"] = (row["mean"] - rows[BASE]["mean"]) / gain if gain > 0 else None
    return rows


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def markdown(payload: Mapping[str, Any]) -> str:
    tasks, rows = payload["tasks"], payload["rows"]
    n_examples = sum(payload["n_eval"].values())
    lines = [
        "# What compressing a LoRA library costs: all-MiniLM-L6-v2",
        "",
        f"{len(tasks)} LoRAs (rank {payload['lora_rank']}, every BERT linear), {payload['loras']}, imported into one model by `tensoradapt.from_lora_library` and evaluated "
        f"through each task's id on {payload['settings']['eval_rows']} held-out rows per task "
        f"({n_examples} examples). Accuracy in %; the error is the relative Frobenius error of the task updates "
        "(all layers and tasks, and the largest layer); Δ is the mean accuracy minus the LoRAs' with a paired "
        "bootstrap 95 % interval; gain kept is the share of the LoRAs' gain over the model without adapter; "
        "parameters are the adapter's, as a share of the library's.",
        "",
    ]
    headers = ["import", "adapter params", "share", "error", "worst layer", *tasks, "mean", "Δ vs LoRAs",
               "gain kept", "same outcome"]
    table = []
    library = rows["lora"]["adapter_parameters"]
    for name, row in rows.items():
        error = row.get("error")
        delta = row["delta"]
        table.append([
            row["label"], f"{row['adapter_parameters']:,}", f"{row['adapter_parameters'] / library:.2f}",
            "–" if error is None else f"{error['overall']:.3f}", "–" if error is None else f"{error['max_layer']:.3f}",
            *(_pct(row["accuracy"][t]) for t in tasks), _pct(row["mean"]),
            "baseline" if delta is None else
            f"{100 * delta['estimate']:+.1f} [{100 * delta['low']:+.1f}, {100 * delta['high']:+.1f}]",
            "–" if row.get("gain_kept") is None else f"{100 * row['gain_kept']:.0f} %",
            f"{row['outcomes_equal_reference']}/{n_examples}",
        ])
    lines.append(markdown_table(headers, table, align=["l"] + ["r"] * (len(headers) - 1)))
    chance = ", ".join(f"{task} {_pct(payload['chance'][task])}" for task in tasks)
    norms = ", ".join(f"{task} {payload['update_norms'][task]:.3g}" for task in tasks)
    lines += ["", f"Chance: {chance}. Each LoRA's update norm over all layers, sqrt(sum ||s A B||_F^2): {norms}.",
              "", "Per-task relative error of the fitted imports:", ""]
    fitted = [(name, row) for name, row in rows.items() if row.get("error") is not None]
    lines.append(markdown_table(["import", *tasks],
                                [[row["label"], *(f"{row['error']['per_task'][t]:.3f}" for t in tasks)]
                                 for _, row in fitted], align=["l"] + ["r"] * len(tasks)))
    lines += ["", f"Command: `python benchmarks/t0_proxy_library.py {payload['command']}`; "
              f"{payload['wall_time_s'] / 60:.0f} min, {payload['environment']['torch_threads']} thread(s)."]
    if payload.get("delta_recomputed"):  # the intervals of a later evaluation of the same LoRAs (sha256 equal)
        lines += ["", f"Δ intervals: {payload['delta_recomputed']}"]
    return "\n".join(lines) + "\n"


def plot(payload: Mapping[str, Any], path: Path) -> Path:
    """Accuracy Δ against the reconstruction error, one point per fitted import (interval bars)."""
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    library = payload["rows"]["lora"]["adapter_parameters"]
    shown = [(name, row) for name, row in payload["rows"].items() if row["delta"] is not None and name != BASE]
    markers = "osD^vP*Xhp<>"
    for index, (name, row) in enumerate(shown):
        delta = row["delta"]
        bars = [[100 * (delta["estimate"] - delta["low"])], [100 * (delta["high"] - delta["estimate"])]]
        # one colour and marker per import in both panels, named in one legend: imports that coincide
        # (TLoRA per task and TensorPoly-I of the same R) stay told apart, where labels on the points overlapped
        style = {"fmt": markers[index % len(markers)], "color": plt.cm.tab20(index % 20), "capsize": 3,
                 "markersize": 6, "alpha": 0.85}
        error = row["error"]["overall"] if row.get("error") else 0.0
        left.errorbar([error], [100 * delta["estimate"]], yerr=bars, label=row["label"], **style)
        right.errorbar([row["adapter_parameters"] / library], [100 * delta["estimate"]], yerr=bars, **style)
    left.set_xlabel("relative error of the task updates (all layers)")
    right.set_xlabel("adapter parameters / the LoRA library's")
    right.set_xscale("log")
    base = payload["rows"].get(BASE)
    for axis in (left, right):
        axis.axhline(0.0, color="0.5", linewidth=0.8)
        if base is not None:
            axis.axhline(100 * base["delta"]["estimate"], color="0.5", linestyle="--", linewidth=0.8,
                         label="no adapter" if axis is left else None)
        axis.set_ylabel("mean accuracy − the LoRAs' (points)")
    figure.legend(loc="center left", bbox_to_anchor=(0.8, 0.5), fontsize=8, frameon=False)
    figure.suptitle(f"Compressing {len(payload['tasks'])} MiniLM LoRAs: accuracy cost (95 % paired bootstrap)")
    figure.tight_layout(rect=(0, 0, 0.8, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


#: The trained scoring head, saved beside the LoRA folders (the base model every LoRA belongs to).
HEAD_FILE = "head.safetensors"
#: The row of the model without adapter.
BASE = "base"
LABELS = {"lora": "the LoRAs (reference)", "poly": "Poly, exact", BASE: "no adapter (the base model)"}


def _label(compression: Compression) -> str:
    if compression.name in LABELS:
        return LABELS[compression.name]
    options = compression.options
    if compression.method == "poly":
        return f"Poly, {options['n_skills']} shared skills"
    if compression.method == "tensorpoly_i":
        return f"TensorPoly-I, R={options['tensor_rank']}, N={options['order']}"
    if compression.method == "tensorpoly_ii":
        return f"TensorPoly-II, N={options['order']}"
    return f"TLoRA per task, R={options['tensor_rank']}, N={options['order']}"


# -------------------------------------------------------------------------------------------- run


def _sha256(folder: Path) -> str:
    return hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()


def run(args: argparse.Namespace, argv: Sequence[str],
        load: Callable[[], tuple[torch.nn.Module, Any]] | None = None) -> dict[str, Any]:
    """The whole experiment (module docstring); returns the payload it wrote."""
    from safetensors.torch import load_file, save_file

    import tensoradapt
    from t0_recipes.data.tasks import get_task
    from t0_recipes.scoring.cross_encoder import HEAD_NAME, load_cross_encoder
    from t0_recipes.scoring.scorers import get_scorer
    from tensoradapt.peft_lora import read_peft_lora

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    base, tokenizer = (load or (lambda: load_cross_encoder(args.model)))()
    collator = get_scorer("cross_encoder").collator(tokenizer, args.max_length)
    train, evaluation = library_examples(args.data_dir, args.tasks, eval_rows=args.eval_rows, seed=args.seed)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        loras_dir = Path(args.loras_dir) if args.loras_dir else Path(scratch)
        if args.loras_from:
            folders = {task: Path(args.loras_from) / task for task in args.tasks}
            head_file = Path(args.loras_from) / HEAD_FILE
            if head_file.is_file():
                getattr(base, HEAD_NAME).load_state_dict(load_file(head_file))
            timings["train"] = 0.0
        else:
            clock = time.perf_counter()
            trained, head = train_library(base, train, collator, args, Path(scratch) / "pretrain")
            timings["train"] = time.perf_counter() - clock
            folders = tensoradapt.export_lora_library(trained, loras_dir, names=list(args.tasks)).paths
            getattr(base, HEAD_NAME).load_state_dict(head)
            save_file(head, loras_dir / HEAD_FILE)
            del trained
        reference, hashes = {}, {}
        for task in tqdm(args.tasks, desc="each LoRA alone", unit="LoRA", disable=args.quiet):
            model = tensoradapt.from_lora_library(copy.deepcopy(base), {task: folders[task]}, "lora").model
            reference[task] = evaluate(model, evaluation[task], collator, args, routed=False, desc=f"{task} LoRA")
            hashes[task] = _sha256(folders[task])
            logger.info("%s: LoRA accuracy %.3f", task, np.mean(reference[task]))
        loras = {task: read_peft_lora(folder) for task, folder in folders.items()}
        outcomes = {BASE: {task: evaluate(base, evaluation[task], collator, args, routed=False, desc=f"{task} base")
                           for task in args.tasks}}
        library_parameters = sum(m.down.numel() + m.up.numel() for lora in loras.values()
                                 for m in lora.modules.values())

        details = {"lora": {"label": LABELS["lora"], "adapter_parameters": library_parameters},
                   BASE: {"label": LABELS[BASE], "adapter_parameters": 0, "error": None}}
        for compression in tqdm(compressions(args, len(args.tasks)), desc="imports", unit="import",
                                disable=args.quiet):
            clock = time.perf_counter()
            imports = import_library(base, folders, compression)
            fit_s = time.perf_counter() - clock
            per_task = {}
            for group, result in imports:
                routed = tensoradapt.adapter_config(result.model).is_routed
                for task in group:
                    examples = [dataclasses.replace(e, task_id=result.task_id(task)) for e in evaluation[task]]
                    per_task[task] = evaluate(result.model, examples, collator, args, routed=routed,
                                              desc=f"{task} {compression.name}")
            outcomes[compression.name] = per_task
            if compression.name == "poly":
                update_norms = dict(imports[0][1].update_norms)
            details[compression.name] = {
                "label": _label(compression), "method": compression.method, "options": dict(compression.options),
                "adapter_parameters": _adapter_parameters(imports), "fit_s": fit_s,
                "error": None if imports[0][1].exact else _relative_error(imports),
            }
            timings[compression.name] = time.perf_counter() - clock
            logger.info("%s: mean accuracy %.3f (%.0f s)", compression.name,
                        np.mean([np.mean(v) for v in per_task.values()]), timings[compression.name])

    outcomes[BASE] = outcomes.pop(BASE)  # the last row
    rows = summarize(outcomes, reference, details, args.tasks)
    exact = rows["poly"]["outcomes_equal_reference"]
    n_examples = sum(len(v) for v in evaluation.values())
    payload = {
        "benchmark": "t0_proxy_library",
        "command": " ".join(argv),
        "tasks": list(args.tasks),
        "lora_rank": max(lora.max_rank for lora in loras.values()),
        "loras": f"read from {args.loras_from}" if args.loras_from else
        f"one per task, no parameter shared, trained with the scoring head on the tasks' shot pools ({args.steps} "
        f"steps of {args.batch_size} examples from all tasks, AdamW lr {args.lr:g})",
        "n_eval": {task: len(evaluation[task]) for task in args.tasks},
        "n_train": {task: len(train[task]) for task in args.tasks},
        "chance": {task: 1.0 / get_task(task).n_choices for task in args.tasks},
        "settings": {key: value for key, value in vars(args).items() if key not in ("quiet",)},
        "lora_sha256": hashes,
        "update_norms": update_norms,
        "rows": rows,
        "timings_s": timings,
        "wall_time_s": time.perf_counter() - start,
        "environment": environment(torch.device("cpu")),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_outputs(out / "lora_library.json", payload, markdown(payload))
    plot(payload, out / "lora_library.png")
    if exact != n_examples:
        raise SystemExit(f"the exact Poly import gives the LoRAs' outcome on {exact} of {n_examples} examples; "
                         f"an exact import must give it on every one (the results in {out} are not to be used)")
    return payload


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parse.add_argument("--data-dir", required=True, help="folder with t0_train/<task>/train.jsonl")
    parse.add_argument("--tasks", nargs="+", default=list(LIBRARY_TASKS), help="one LoRA per task (t0_train tasks)")
    parse.add_argument("--model", default=None, help="a BERT-like encoder folder (default: all-MiniLM-L6-v2's wheel)")
    parse.add_argument("--out", default=str(RESULTS), help="where lora_library.{json,md,png} go")
    parse.add_argument("--loras-dir", default=None, help="keep the trained LoRA folders here (default: deleted)")
    parse.add_argument("--loras-from", default=None,
                       help="measure these PEFT LoRAs instead of training: <dir>/<task> per task of --tasks, and "
                            f"<dir>/{HEAD_FILE} as the scoring head if present (a run's --loras-dir, or anyone's "
                            "LoRAs of the same base)")
    parse.add_argument("--steps", type=int, default=300, help="training steps of the library (all tasks together)")
    parse.add_argument("--batch-size", type=int, default=8)
    parse.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of the LoRAs and the head")
    parse.add_argument("--max-length", type=int, default=64, help="tokens per (prompt, choice) pair")
    parse.add_argument("--eval-rows", type=int, default=256, help="evaluation rows per task")
    parse.add_argument("--eval-batch-size", type=int, default=64)
    parse.add_argument("--shared-skills", nargs="*", type=int, default=[1, 2, 3, 4],
                       help="Poly imports with S shared skills (each S below the number of tasks)")
    parse.add_argument("--tensor-ranks", nargs="*", type=int, default=[1, 4, 16],
                       help="TensorPoly-I imports at these tensor ranks per LoRA")
    parse.add_argument("--tlora-rank", type=int, default=4, help="TLoRA import per task at this rank (0: none)")
    parse.add_argument("--order", type=int, default=2, help="tensor order of the fitted imports")
    parse.add_argument("--fit-steps", type=int, default=200, help="L-BFGS steps of the shared-skill fit per layer")
    parse.add_argument("--seed", type=int, default=0, help="the LoRAs' init, the batches and the training templates")
    parse.add_argument("--threads", type=int, default=1, help="torch threads")
    parse.add_argument("--quiet", action="store_true", help="no progress bars")
    return parse


def main(argv: Sequence[str] | None = None, load: Callable[[], tuple[torch.nn.Module, Any]] | None = None) -> dict:
    """Parse ``argv`` and `run`; ``load`` replaces the encoder loading (tests pass a tiny BERT)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    for flag, values in (("--shared-skills", args.shared_skills), ("--tensor-ranks", args.tensor_ranks),
                         ("--steps", [args.steps]), ("--eval-rows", [args.eval_rows]), ("--order", [args.order])):
        if any(value < 1 for value in values):
            parser().error(f"{flag} {values}: every value must be at least 1")
    if len(set(args.tasks)) != len(args.tasks) or len(args.tasks) < 2:
        parser().error(f"--tasks {args.tasks}: a library needs at least two different tasks")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    payload = run(args, argv, load)
    print(f"wrote {Path(args.out) / 'lora_library.md'}")
    return payload


if __name__ == "__main__":
    main()
