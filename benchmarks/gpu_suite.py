"""One command for a GPU: the speed benchmarks of the T0-3B-shape headline, compiled steps and mixed-task serving.

Runs, in this order and each as a subprocess of its own benchmark, within one wall-clock budget:

1. ``step_time``: eager training-step time, T0-3B shapes first, then T5-small and tiny, every
   method and PEFT's LoRA / Poly / MHR (`step_time.py`);
2. ``serving``: a 313-task model answering a batch where every request has its own task, ours vs
   PEFT's mixed-adapter batch vs merged single-task (`serving.py`);
3. ``step_time_compiled``: compiled training steps of our seven methods, tiny and T5-small
   (`step_time.py --compile`).

Each part gets a share of the time still left (``SHARES``), so time a part leaves unused goes to
the ones after it; a part that outlives its share is stopped and recorded as ``timed_out`` (the
step-time benchmarks write their JSON after every model size, so what they measured is kept), and
the next part still runs (its output is in ``<out>/logs/``). Results go to ``<out>/<part><suffix>.{json,md,png}`` (``_cuda`` on a
GPU: the names the docs' results pages include when they exist) and a summary of the run to
``<out>/gpu_suite<suffix>.{json,md}``: each part's command, status, wall time and headline ratios.

Usage::

    python benchmarks/gpu_suite.py                          # CUDA, bf16, 300 s, into benchmarks/results/
    make bench-gpu                                          # the same, in the project's venv
    python benchmarks/gpu_suite.py --device cpu --dtype bf16 --quick --out /tmp/suite   # smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, markdown_table, write_outputs  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parent
#: The repository root: every part runs there, with paths relative to it where they can be.
ROOT = BENCHMARKS.parent


@dataclasses.dataclass(frozen=True)
class Part:
    """One benchmark of the suite: its script, its arguments, and its share of the budget."""

    name: str
    script: str  # beside this file, or an absolute path
    arguments: tuple[str, ...]
    share: float
    #: Arguments of the full run only: ``--quick`` picks its own sizes.
    full_run_arguments: tuple[str, ...] = ()


#: Our seven methods (the compiled part times only ours: PEFT's Poly / MHR break the graph).
OURS = "lora,tlora,tensorpoly_i,tensorpoly_ii,poly,mhr,trex"

#: The parts in the order they run. Shares: the eager steps are quick on a GPU, the compiled part
#: spends most of its time compiling (14 graphs per model size).
PARTS: tuple[Part, ...] = (
    Part("step_time", "step_time.py", (), 0.25),
    Part("serving", "serving.py", (), 0.25),
    Part("step_time_compiled", "step_time.py", ("--compile", "--variants", OURS), 0.5,
         full_run_arguments=("--model-size", "tiny,small")),
)


@dataclasses.dataclass
class PartResult:
    """What one part did: its command, how it ended and how long it took."""

    name: str
    command: list[str]
    status: str  # "ok", "failed", "timed_out" or "skipped"
    returncode: int | None
    wall_s: float
    timeout_s: float
    json: str | None
    complete: bool | None
    headline: dict


def part_command(part: Part, *, out: Path, suffix: str, device: str, dtype: str, quick: bool) -> list[str]:
    """The command line of ``part`` (run in ``ROOT``), writing ``out/<name><suffix>.json``."""
    command = ["python", _from_root(BENCHMARKS / part.script), *part.arguments, "--device", device, "--dtype", dtype,
               "--json", _from_root(out / f"{part.name}{suffix}.json")]
    return command + (["--quick"] if quick else list(part.full_run_arguments))


def _from_root(path: Path) -> str:
    """``path`` relative to the repository root when it lies inside it, else absolute."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def run_with_timeout(command: list[str], timeout_s: float, log_path: Path) -> tuple[int | None, float]:
    """Run ``command`` (output to ``log_path``); stop its whole process group after ``timeout_s``.

    Returns ``(returncode, wall_s)``, the return code ``None`` when it was stopped.
    """
    start = time.perf_counter()
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   cwd=ROOT, env=environment)
        try:
            returncode: int | None = process.wait(timeout=max(timeout_s, 0.0))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            returncode = None
    return returncode, time.perf_counter() - start


def headline_figures(name: str, payload: dict) -> dict:
    """The figures a reader wants first: step-time ratios to LoRA per size, serving speed-ups per method."""
    if name == "serving":
        return {"speedup_vs_peft": payload.get("speedup_vs_peft", {}),
                "speedup_vs_merged": payload.get("speedup_vs_merged", {})}
    return {run["settings"]["model_size"]: {kind: {key: value for key, value in ratios.items() if key.endswith("/lora")}
                                            for kind, ratios in (("mixed", run["ratios"]),
                                                                 ("single", run["ratios_single_task"]))}
            for run in payload.get("runs", [])}


def run_suite(parts: tuple[Part, ...], *, budget_s: float, out: Path, suffix: str, device: str, dtype: str,
              quick: bool, python: str = sys.executable, log=print) -> list[PartResult]:
    """Run ``parts`` in order within ``budget_s`` seconds, each for its share of the time left."""
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + budget_s
    results = []
    for index, part in enumerate(parts):
        command = part_command(part, out=out, suffix=suffix, device=device, dtype=dtype, quick=quick)
        left = deadline - time.perf_counter()
        timeout_s = left * part.share / sum(p.share for p in parts[index:])
        json_path = out / f"{part.name}{suffix}.json"
        json_path.unlink(missing_ok=True)  # a stale file from an earlier run must not pass for this one's
        if timeout_s < 1.0:
            results.append(PartResult(part.name, command, "skipped", None, 0.0, timeout_s, None, None, {}))
            log(f"[suite] {part.name}: skipped, the budget is spent")
            continue
        log(f"[suite] {part.name}: up to {timeout_s:.0f} s: {' '.join(command)}")
        (out / "logs").mkdir(exist_ok=True)
        log_path = out / "logs" / f"{part.name}{suffix}.log"
        returncode, wall_s = run_with_timeout([python, *command[1:]], timeout_s, log_path)
        status = "timed_out" if returncode is None else ("ok" if returncode == 0 else "failed")
        payload = json.loads(json_path.read_text()) if json_path.exists() else None
        results.append(PartResult(
            name=part.name, command=command, status=status, returncode=returncode, wall_s=round(wall_s, 1),
            timeout_s=round(timeout_s, 1), json=json_path.name if payload is not None else None,
            complete=None if payload is None else payload.get("complete", True),
            headline=headline_figures(part.name, payload) if payload is not None else {},
        ))
        log(f"[suite] {part.name}: {status} after {wall_s:.0f} s")
    return results


def markdown(payload: dict) -> str:
    """The summary table of a suite run."""
    rows = [(r["name"], r["status"], f"{r['wall_s']:.0f}", f"{r['timeout_s']:.0f}",
             f"`{r['json']}`" if r["json"] else "-", {None: "-", True: "yes", False: "**no**"}[r["complete"]])
            for r in payload["parts"]]
    lines = [
        f"# Speed benchmarks on {payload['device']} ({payload['dtype']}): one command",
        "",
        f"`python benchmarks/gpu_suite.py {payload['command']}`: {payload['wall_s']:.0f} s of a "
        f"{payload['budget_s']:.0f} s budget.",
        "",
        markdown_table(("part", "status", "wall s", "allowed s", "results", "complete"), rows,
                       align=("l", "l", "r", "r", "l", "l")),
    ]
    for result in payload["parts"]:
        if result["name"] != "serving":
            for size, kinds in result["headline"].items():
                ratios = sorted(set(kinds["mixed"]) | set(kinds["single"]))
                lines += ["", f"**{result['name']}, {size}** (time / LoRA):", "",
                          markdown_table(("ratio", "mixed", "single"),
                                         [(key, _number(kinds["mixed"].get(key)), _number(kinds["single"].get(key)))
                                          for key in ratios], align=("l", "r", "r"))]
        elif result["headline"]:
            methods = sorted(result["headline"]["speedup_vs_peft"])
            lines += ["", "**serving** (speed-up, > 1: ours faster):", "",
                      markdown_table(("method", "vs PEFT mixed batch", "vs merged single-task"),
                                     [(m, _number(result["headline"]["speedup_vs_peft"].get(m)),
                                       _number(result["headline"]["speedup_vs_merged"].get(m))) for m in methods],
                                     align=("l", "r", "r"))]
    return "\n".join(lines) + "\n"


def _number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke test")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--budget-s", type=float, default=300.0, help="wall-clock seconds for all parts together")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder of the results (default: %(default)s)")
    parser.add_argument("--suffix", help="file-name suffix of every result (default: _<device type>)")
    parser.add_argument("--parts", default=",".join(p.name for p in PARTS),
                        help="comma-separated subset of " + ",".join(p.name for p in PARTS))
    parser.add_argument("--quick", action="store_true", help="every part in its seconds-long smoke-test mode")
    args = parser.parse_args(argv)
    names = [name for name in args.parts.split(",") if name]
    unknown = sorted(set(names) - {p.name for p in PARTS})
    if unknown:
        parser.error(f"--parts: unknown {unknown}; choose from {[p.name for p in PARTS]}")
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: CUDA is not available here; use --device cpu for a smoke test")
    suffix = args.suffix if args.suffix is not None else "_" + args.device.split(":")[0]
    parts = tuple(p for p in PARTS if p.name in names)
    start = time.perf_counter()
    results = run_suite(parts, budget_s=args.budget_s, out=args.out, suffix=suffix, device=args.device,
                        dtype=args.dtype, quick=args.quick)
    payload = {
        "benchmark": "gpu_suite",
        "command": " ".join(argv if argv is not None else sys.argv[1:]),
        "device": args.device,
        "dtype": args.dtype,
        "budget_s": args.budget_s,
        "wall_s": round(time.perf_counter() - start, 1),
        "parts": [dataclasses.asdict(r) for r in results],
    }
    text = markdown(payload)
    print(text)
    write_outputs(args.out / f"gpu_suite{suffix}.json", payload, text)
    if any(r.status == "failed" for r in results):
        raise SystemExit(1)
    return payload


if __name__ == "__main__":
    main()
