"""The real-model proxy of the T0 protocol: every method on a pretrained encoder, on a CPU.

    python benchmarks/t0_proxy.py --data-dir ../shared/data                 # the whole table (make proxy)
    python benchmarks/t0_proxy.py --data-dir ../shared/data --methods lora  # one method

The tasks: the nine T0 held-out tasks with local rows (RTE, CB, COPA, WiC, WSC, ANLI R1-R3,
WinoGrande), where MiniLM stays at chance, and T0's topic cluster (AG News, 4 choices; TREC,
6 choices) held out of ``t0_train`` (``--hold-out``, `t0_recipes.data.holdout`): left out of the
pre-training mixture and evaluated like a held-out task, a task the encoder can learn from 32
shots, so a broken adapter shows. The report labels it a held-out cluster from t0_train, not a
T0 task, and gives the means over the T0 tasks and over all tasks apart.

For every method, two recipe runs of the ``minilm`` preset (`t0_recipes.presets`), each in its
own process, both with the same held-out cluster:

1. multi-task pre-training on the mixture, a zero-shot evaluation of every held-out task (a
   fresh routing row: the skills averaged), then 32-shot adaptation with 5 seeds per task;
2. the same few-shot adaptation from a fresh adapter (``--pretrain-steps 0``), with the first
   3 of those seeds (``--baseline-seeds``).

Cost, from the run records' ``phases_s`` and ``task_seed_s`` (one thread per run, 94 % of a
core): TensorPoly-I spends 203 s pre-training, ~60 s on the zero-shot evaluations and ~180 s per
few-shot seed over the 11 tasks (the preset's 15 steps; ~220 s at 20); T-REX's first run also
embeds the mixture for its prior (~340 s, cached on disk for the next). With ``--jobs 2`` that
projects ~105 min for the table and ~20 min for one method on two otherwise idle cores (5
baseline seeds and 20 steps: ~146 and ~23 min). A shared box is slower: at a load of 3 a run got
70 % of a core (~1.3x).

Each run writes ``<method>_minilm[_zeroshot].run.json`` records into ``<out>/runs/<method>[_no_pretrain]/``;
`t0_recipes.reporting.experiment` then writes ``t0_proxy.{json,md,png}`` into ``<out>``: per
task and mean, the median over seeds, its spread, and a paired bootstrap 95 % interval of each
method's difference from LoRA.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # t0_recipes/ sits at the repository root, outside the installed package
    sys.path.insert(0, str(REPO))
METHODS = ("lora", "tlora", "poly", "mhr", "tensorpoly_i", "tensorpoly_ii", "trex")
#: The T0 held-out tasks with local rows (HellaSwag and StoryCloze have none).
T0_TASKS = ("rte", "cb", "copa", "wic", "wsc", "anli_r1", "anli_r2", "anli_r3", "winogrande")
#: T0's topic cluster, held out of t0_train (`t0_recipes.data.holdout.TOPIC_CLUSTER`).
HOLD_OUT = ("ag_news", "trec")


def _command(method: str, variant_args: list[str], out: Path, args: argparse.Namespace,
             seeds: list[int]) -> list[str]:
    """One recipe run of the ``minilm`` preset (its own process), with the held-out cluster."""
    return [
        sys.executable, "-m", f"t0_recipes.{method}", "--preset", "minilm", "--data-dir", args.data_dir,
        "--tasks", *args.tasks, *(["--hold-out", *args.hold_out] if args.hold_out else []),
        "--seeds", *map(str, seeds), "--output-dir", str(out), "--quiet",
        "--threads", str(args.threads), "--overwrite", *variant_args,
        *(["--lr", str(args.lr)] if args.lr is not None else []),
        *(["--lr-routing", str(args.lr_routing)] if args.lr_routing is not None else []),
    ]


def _run_all(commands: list[tuple[str, list[str]]], jobs: int) -> None:
    """Run ``(name, command)`` pairs, ``jobs`` at a time; stop at the first failure (its log is printed)."""
    pending, running = list(commands), []
    with tqdm(total=len(commands), desc="t0 proxy", unit="run") as bar:
        while pending or running:
            while pending and len(running) < jobs:
                name, command = pending.pop(0)
                log = tempfile.TemporaryFile(mode="w+")
                running.append((name, subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT),
                                log, time.perf_counter()))
            time.sleep(1.0)
            for entry in list(running):
                name, process, log, start = entry
                if process.poll() is None:
                    continue
                running.remove(entry)
                if process.returncode != 0:
                    log.seek(0)
                    sys.stderr.write(log.read()[-5000:])
                    for _, other, _, _ in running:
                        other.terminate()
                    raise SystemExit(f"{name} failed (exit {process.returncode})")
                bar.update(1)
                tqdm.write(f"{name}: {time.perf_counter() - start:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder with t0_train/, t0_fewshot/ and t0_validation/")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--tasks", nargs="+", default=list(T0_TASKS),
                        help="T0 held-out tasks (default: the nine with local rows)")
    parser.add_argument("--hold-out", nargs="*", default=list(HOLD_OUT),
                        help="t0_train tasks held out of the mixture and evaluated in every run (default: the topic "
                             "cluster, ag_news trec; none: --hold-out alone)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "t0_proxy"),
                        help="results folder (the run records go to <out>/runs/)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 1024, 0, 1, 32], help="few-shot seeds (T-Few's five)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the no-pre-training runs")
    parser.add_argument("--baseline-seeds", type=int, default=3,
                        help="seeds of the no-pre-training runs: the first N of --seeds (default 3, for time)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="runs at a time (default 2: on 2 cores two one-thread runs beat one two-thread run)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    parser.add_argument("--lr", type=float, default=None, help="few-shot learning rate of the modules (default: the preset's)")
    parser.add_argument("--lr-routing", type=float, default=None,
                        help="few-shot learning rate of the routing parameters (default: the preset's)")
    args = parser.parse_args(argv)
    if args.baseline_seeds < 1:
        parser.error(f"--baseline-seeds {args.baseline_seeds} must be at least 1")

    out = Path(args.out)
    runs = out / "runs"
    commands = [(f"{m} pre-trained + zero-shot + few-shot", _command(m, ["--zero-shot"], runs / m, args, args.seeds))
                for m in args.methods]
    if not args.no_baseline:
        commands += [(f"{m} few-shot without pre-training",
                      _command(m, ["--pretrain-steps", "0"], runs / f"{m}_no_pretrain", args,
                               args.seeds[:args.baseline_seeds]))
                     for m in args.methods]
    _run_all(commands, args.jobs)

    from t0_recipes.reporting.experiment import load_run_records, summarize_experiment, write_experiment

    summary = summarize_experiment(load_run_records(runs))
    for kind, path in write_experiment(summary, out).items():
        print(f"wrote {kind}: {path}")


if __name__ == "__main__":
    main()
