"""The real-model proxy of the T0 protocol: every method on a pretrained encoder, on a CPU.

    python benchmarks/t0_proxy.py --data-dir ../shared/data                 # the whole table (make proxy)
    python benchmarks/t0_proxy.py --data-dir ../shared/data --methods lora  # one method

For every method, two recipe runs of the ``minilm`` preset (`t0_recipes.presets`), each in its
own process:

1. multi-task pre-training on the mixture, a zero-shot evaluation of every held-out task (a
   fresh routing row: the skills averaged), then 32-shot adaptation with 5 seeds per task;
2. the same few-shot adaptation from a fresh adapter (``--pretrain-steps 0``).

Each run writes ``<method>_minilm[_zeroshot].run.json`` records into ``<out>/runs/<method>[_no_pretrain]/``;
`t0_recipes.reporting.experiment` then writes ``t0_proxy.{json,md,png}`` into ``<out>``: per
task and mean, the median over seeds, its spread, and a paired bootstrap 95 % interval of each
method's difference from LoRA.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parents[1]
METHODS = ("lora", "tlora", "poly", "mhr", "tensorpoly_i", "tensorpoly_ii", "trex")
HELD_OUT = ("rte", "cb", "copa", "wic", "wsc", "anli_r1", "anli_r2", "anli_r3", "winogrande")


def _run(method: str, variant_args: list[str], out: Path, args: argparse.Namespace) -> float:
    """One recipe run in its own process; returns its wall time in seconds."""
    command = [
        sys.executable, "-m", f"t0_recipes.{method}", "--preset", "minilm", "--data-dir", args.data_dir,
        "--tasks", *args.tasks, "--output-dir", str(out), "--quiet", *variant_args,
    ]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder with t0_train/, t0_fewshot/ and t0_validation/")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--tasks", nargs="+", default=list(HELD_OUT), help="held-out tasks (default: all nine with rows)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "t0_proxy"),
                        help="results folder (the run records go to <out>/runs/)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the no-pre-training runs")
    args = parser.parse_args(argv)

    out = Path(args.out)
    runs = out / "runs"
    plan = [(method, "fewshot") for method in args.methods]
    if not args.no_baseline:
        plan += [(method, "no_pretrain") for method in args.methods]
    for method, variant in tqdm(plan, desc="t0 proxy", unit="run"):
        if variant == "fewshot":
            seconds = _run(method, ["--zero-shot", "--overwrite"], runs / method, args)
        else:
            seconds = _run(method, ["--pretrain-steps", "0", "--overwrite"], runs / f"{method}_no_pretrain", args)
        tqdm.write(f"{method} {variant}: {seconds:.0f} s")

    from t0_recipes.reporting.experiment import load_run_records, summarize_experiment, write_experiment

    summary = summarize_experiment(load_run_records(runs))
    for kind, path in write_experiment(summary, out).items():
        print(f"wrote {kind}: {path}")


if __name__ == "__main__":
    main()
