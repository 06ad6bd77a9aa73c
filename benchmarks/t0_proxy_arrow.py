"""Zero-shot routing of the proxy's held-out tasks, from its pre-trained checkpoints: Arrow, no training.

    python benchmarks/t0_proxy_arrow.py --proxy-out benchmarks/results/t0_proxy          # after make proxy
    python benchmarks/t0_proxy_arrow.py --proxy-out /tmp/proxy_out --methods poly mhr --jobs 2

For every routed method with skills (Poly, MHR, TensorPoly-I, TensorPoly-II) it rebuilds the
pre-trained model of ``<proxy-out>/runs/<method>/`` (`t0_recipes.training.pretrained`: no
pre-training again), checks it against the run's own zero-shot record (the first task re-evaluated
with uniform averaging must give the same 0/1 outcome on every example), then evaluates every held-out
task routed without a gradient step (`t0_recipes.training.zero_shot_routing`):

* ``arrow``: every token by Arrow over the skills, ``--top-k`` of them (default: all, mttl's);
* ``arrow_task``: a routing row per seed from the seed's 32 shots, labels unused.

It writes ``<method>_minilm_zeroshot_arrow[_task].run.json`` next to the run's records (holding
the run folder's lock), then, unless ``--no-report``, re-aggregates every record under
``<proxy-out>/runs`` into ``<proxy-out>/t0_proxy.{json,md,png}``, whose section "Zero-shot routing
of a new task" compares them with uniform averaging and few-shot training.

Cost: one zero-shot evaluation per task for ``arrow`` and one per (task, seed) for
``arrow_task``, about four times the run's zero-shot phase (``phases_s["zero_shot"]``).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # t0_recipes/ sits at the repository root, outside the installed package
    sys.path.insert(0, str(REPO))

from t0_recipes.training.zero_shot_routing import ARROW_METHODS, ROUTINGS  # noqa: E402

logger = logging.getLogger("t0_proxy_arrow")


def check_uniform(run, record_path: Path) -> str:
    """Re-evaluate the first task of the run's zero-shot record with uniform averaging; raise unless equal.

    Returns:
        The task checked.
    """
    import copy
    import dataclasses

    import tensoradapt
    from t0_recipes.protocol import run_protocol
    from t0_recipes.training.fewshot import open_new_task

    record = json.loads(record_path.read_text(encoding="utf-8"))
    first = record["results"][0]
    protocol = dataclasses.replace(run.protocol, tasks=[first["task"]], seeds=[first["seed"]], skipped={})
    method = run.config["method"]

    def uniform(model, examples, collator, seed):  # FewShotAdapter.open_only of the recipe
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            open_new_task(model, method, run.config["mode"], examples)
        return model

    (result,) = run_protocol(lambda: copy.deepcopy(run.model), run.tokenizer, protocol, adapt=uniform,
                             route=tensoradapt.use_routing, scorer=run.scorer, progress=False)
    if list(result.correct) != list(first["correct"]):
        raise SystemExit(f"{record_path}: the rebuilt model scores {first['task']} at {result.accuracy:.4f}, the run "
                         f"recorded {first['accuracy']:.4f}; the checkpoint does not give the run's model")
    return first["task"]


def run_method(method: str, args: argparse.Namespace) -> list[Path]:
    """Every routing of ``args.routings`` for one method; returns the records written."""
    import torch

    from t0_recipes.reporting.report import write_run_record
    from t0_recipes.run_dir import claim_output_dir
    from t0_recipes.training.pretrained import load_pretrained_run
    from t0_recipes.training.zero_shot_routing import evaluate_zero_shot_routing

    torch.set_num_threads(args.threads)
    folder = Path(args.proxy_out) / "runs" / method
    written = []
    with claim_output_dir(folder, resume=True):
        clock = time.perf_counter()
        run = load_pretrained_run(folder, data_dir=args.data_dir)
        phases = {"load": time.perf_counter() - clock}
        if not args.no_check:
            clock = time.perf_counter()
            task = check_uniform(run, folder / f"{run.stem}_zeroshot.run.json")
            phases["check"] = time.perf_counter() - clock
            logger.info("%s: the rebuilt model reproduces the run's uniform zero-shot on %s", method, task)
        for routing in args.routings:
            clock = time.perf_counter()
            results = evaluate_zero_shot_routing(run.model, run.tokenizer, run.protocol, method=method,
                                                 routing=routing, scorer=run.scorer, top_k=args.top_k,
                                                 progress=not args.quiet)
            phases[routing] = time.perf_counter() - clock
            variant = ROUTINGS[routing]
            config = run.config | {"zero_shot_routing": {"routing": routing, "top_k": args.top_k, "temperature": 1.0,
                                                         "checkpoint": str(run.checkpoint)}}
            path = write_run_record(folder / f"{run.stem}_{variant}.run.json", method=method, variant=variant,
                                    mode=run.config["mode"], results=results, wall_time_s=phases[routing],
                                    config=config, phases_s=phases)
            mean = sum(r.accuracy for r in results) / len(results)
            logger.info("%s %s: %.1f s, mean accuracy over (task, seed) %.1f %% -> %s", method, routing,
                        phases[routing], 100 * mean, path)
            written.append(path)
    return written


def _run_jobs(args: argparse.Namespace, passed: list[str]) -> None:
    """One process per method, ``--jobs`` at a time (one torch thread each)."""
    pending, running = list(args.methods), []
    while pending or running:
        while pending and len(running) < args.jobs:
            method = pending.pop(0)
            command = [sys.executable, __file__, *passed, "--methods", method, "--jobs", "1", "--no-report"]
            running.append((method, subprocess.Popen(command, cwd=REPO)))
        time.sleep(1.0)
        for method, process in list(running):
            if process.poll() is None:
                continue
            running.remove((method, process))
            if process.returncode != 0:
                for _, other in running:
                    other.terminate()
                raise SystemExit(f"{method} failed (exit {process.returncode})")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy-out", default=str(REPO / "benchmarks" / "results" / "t0_proxy"),
                        help="the proxy's --out: <proxy-out>/runs/<method>/ holds each pre-trained run")
    parser.add_argument("--methods", nargs="+", default=list(ARROW_METHODS), choices=ARROW_METHODS)
    parser.add_argument("--routings", nargs="+", default=list(ROUTINGS), choices=list(ROUTINGS))
    parser.add_argument("--top-k", type=int, default=None, help="Arrow's skills per token (default: all, mttl's)")
    parser.add_argument("--data-dir", default=None, help="where the rows are now (default: the run's --data-dir)")
    parser.add_argument("--jobs", type=int, default=1, help="methods at a time, each in its own process")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each process")
    parser.add_argument("--no-check", action="store_true",
                        help="skip re-evaluating the first task with uniform averaging against the run's record")
    parser.add_argument("--no-report", action="store_true", help="write the records only, not t0_proxy.{json,md,png}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.top_k is not None and args.top_k < 1:
        parser.error(f"--top-k {args.top_k} must be at least 1")
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs} must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    start = time.perf_counter()
    if args.jobs > 1 and len(args.methods) > 1:
        passed = []  # the command line without --methods / --jobs / --no-report, for the per-method processes
        skip = False
        for arg in argv:
            if arg in ("--methods", "--jobs"):
                skip = True
                continue
            if skip and not arg.startswith("--"):
                continue
            skip = False
            if arg != "--no-report":
                passed.append(arg)
        _run_jobs(args, passed)
    else:
        for method in args.methods:
            run_method(method, args)
    logger.info("zero-shot routing of %s: %.0f s", ", ".join(args.methods), time.perf_counter() - start)
    if args.no_report:
        return

    from t0_recipes.reporting.experiment import load_run_records, summarize_experiment, write_experiment

    out = Path(args.proxy_out)
    summary = summarize_experiment(load_run_records(out / "runs"))
    for kind, path in write_experiment(summary, out).items():
        print(f"wrote {kind}: {path}")


if __name__ == "__main__":
    main()
