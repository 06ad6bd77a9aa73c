"""benchmarks/gpu_suite.py: the budget is shared out, an overrunning part is stopped whole, results are collected."""

import json
import os
import sys
import textwrap
import time

import pytest

FAKE = textwrap.dedent('''
    """A stand-in benchmark: --sleep seconds in a child process, then --json written (unless --no-json)."""
    import argparse, json, pathlib, subprocess, sys
    parser = argparse.ArgumentParser()
    for flag in ("--device", "--dtype", "--json", "--pid-file"):
        parser.add_argument(flag)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--no-json", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({args.sleep})"])
    if args.pid_file:
        pathlib.Path(args.pid_file).write_text(str(child.pid))
    child.wait()
    if args.fail:
        sys.exit(3)
    if not args.no_json:
        run = {"settings": {"model_size": "tiny"}, "ratios": {"poly/lora": 1.25, "poly/peft_poly": 0.8},
               "ratios_single_task": {"poly/lora": 1.5}}
        pathlib.Path(args.json).write_text(json.dumps({"complete": True, "runs": [run], "device": args.device}))
''')


@pytest.fixture
def fake(tmp_path):
    path = tmp_path / "fake_benchmark.py"
    path.write_text(FAKE)
    return str(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child not yet reaped by its (killed) parent is a zombie: gone for our purposes
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_a_part_past_its_share_is_stopped_with_its_children_and_the_next_still_runs(load_benchmark, fake, tmp_path):
    suite = load_benchmark("gpu_suite")
    pid_file = tmp_path / "child.pid"
    parts = (suite.Part("slow", fake, ("--sleep", "60", "--pid-file", str(pid_file)), 1.0),
             suite.Part("fast", fake, (), 1.0))
    start = time.perf_counter()
    results = suite.run_suite(parts, budget_s=4.0, out=tmp_path / "out", suffix="_x", device="cpu", dtype="bf16",
                              quick=True, log=lambda _: None)
    assert time.perf_counter() - start < 15
    slow, fast = results
    assert slow.status == "timed_out" and slow.returncode is None and slow.json is None
    assert slow.timeout_s == pytest.approx(2.0, abs=0.3)  # half of the budget: two parts of equal share
    time.sleep(0.2)
    assert not _alive(int(pid_file.read_text())), "the part's child process outlived the part"
    assert fast.status == "ok" and fast.json == "fast_x.json" and fast.complete is True
    assert fast.headline == {"tiny": {"mixed": {"poly/lora": 1.25}, "single": {"poly/lora": 1.5}}}
    assert fast.command == ["python", fake, "--device", "cpu", "--dtype", "bf16",
                            "--json", str((tmp_path / "out" / "fast_x.json").resolve()), "--quick"]
    assert (tmp_path / "out" / "logs" / "slow_x.log").exists()


def test_time_a_part_leaves_goes_to_the_parts_after_it(load_benchmark, fake, tmp_path):
    suite = load_benchmark("gpu_suite")
    parts = (suite.Part("first", fake, (), 1.0), suite.Part("second", fake, (), 1.0))
    first, second = suite.run_suite(parts, budget_s=20.0, out=tmp_path, suffix="", device="cpu", dtype="fp32",
                                    quick=False, log=lambda _: None)
    assert first.timeout_s == pytest.approx(10.0, abs=0.5)
    assert second.timeout_s > 20.0 - first.wall_s - 1.0 > 10.5  # all that is left, not a fixed half


def test_a_stale_result_is_not_taken_for_this_runs_and_a_failure_is_reported(load_benchmark, fake, tmp_path):
    suite = load_benchmark("gpu_suite")
    (tmp_path / "quiet.json").write_text(json.dumps({"complete": True, "runs": []}))  # from an earlier run
    parts = (suite.Part("quiet", fake, ("--no-json",), 1.0), suite.Part("broken", fake, ("--fail",), 1.0))
    quiet, broken = suite.run_suite(parts, budget_s=20.0, out=tmp_path, suffix="", device="cpu", dtype="fp32",
                                    quick=False, log=lambda _: None)
    assert quiet.status == "ok" and quiet.json is None and quiet.headline == {}
    assert broken.status == "failed" and broken.returncode == 3


def test_bad_flags_are_refused(load_benchmark, tmp_path, capsys):
    suite = load_benchmark("gpu_suite")
    for argv, message in ((["--parts", "step_time,nope"], "unknown ['nope']"), (["--budget-s", "0"], "--budget-s")):
        with pytest.raises(SystemExit):
            suite.main(["--device", "cpu", "--out", str(tmp_path), *argv])
        assert message in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():  # the default device: refused before any part starts
        with pytest.raises(SystemExit):
            suite.main(["--out", str(tmp_path)])
        assert "CUDA is not available here; use --device cpu" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_quick_serving_on_the_cpu_writes_the_summary(load_benchmark, tmp_path):
    """The real benchmark through the suite (bf16, --quick): its results and the summary, under the device's suffix."""
    suite = load_benchmark("gpu_suite")
    payload = suite.main(["--device", "cpu", "--dtype", "bf16", "--quick", "--parts", "serving", "--budget-s", "300",
                          "--out", str(tmp_path)])
    (part,) = payload["parts"]
    assert part["status"] == "ok", (tmp_path / "logs" / "serving_cpu.log").read_text()
    written = json.loads((tmp_path / "serving_cpu.json").read_text())
    assert written["settings"]["dtype"] == "bf16"
    assert part["command"][:2] == ["python", "benchmarks/serving.py"]
    assert set(part["headline"]["speedup_vs_peft"]) == set(written["speedup_vs_peft"])
    assert json.loads((tmp_path / "gpu_suite_cpu.json").read_text()) == json.loads(json.dumps(payload))
    summary = (tmp_path / "gpu_suite_cpu.md").read_text()
    assert "| serving | ok |" in summary and "vs PEFT mixed batch" in summary
    assert (tmp_path / "serving_cpu.png").exists()


def test_commands_name_paths_from_the_repository_root_and_quick_runs_pick_their_own_sizes(load_benchmark, tmp_path):
    suite = load_benchmark("gpu_suite")
    parts = {part.name: part for part in suite.PARTS}
    assert list(parts) == ["step_time", "serving", "step_time_compiled"]
    eager = suite.part_command(parts["step_time"], out=suite.RESULTS_DIR, suffix="_cuda", device="cuda", dtype="bf16",
                               quick=False)
    assert eager == ["python", "benchmarks/step_time.py", "--device", "cuda", "--dtype", "bf16",
                     "--json", "benchmarks/results/step_time_cuda.json"]
    compiled = parts["step_time_compiled"]
    full = suite.part_command(compiled, out=tmp_path, suffix="", device="cuda", dtype="bf16", quick=False)
    quick = suite.part_command(compiled, out=tmp_path, suffix="", device="cuda", dtype="bf16", quick=True)
    assert full[2] == "--compile" and full[-2:] == ["--model-size", "tiny,small"]
    assert "--model-size" not in quick and quick[-1] == "--quick"


@pytest.mark.slow
def test_every_part_runs_for_real_in_bf16(load_benchmark, tmp_path):
    """All three parts through the suite on the CPU (--quick, bf16); the compiled part with two methods (minutes)."""
    import dataclasses

    suite = load_benchmark("gpu_suite")
    parts = tuple(dataclasses.replace(p, arguments=("--compile", "--variants", "lora,tensorpoly_i"))
                  if p.name == "step_time_compiled" else p for p in suite.PARTS)
    results = suite.run_suite(parts, budget_s=1800, out=tmp_path, suffix="_cpu", device="cpu", dtype="bf16",
                              quick=True, log=lambda _: None)
    assert [r.status for r in results] == ["ok", "ok", "ok"], [(tmp_path / "logs").iterdir()]
    for result in results:
        written = json.loads((tmp_path / result.json).read_text())
        assert written["settings"]["dtype"] == "bf16"
        assert result.complete is not False
    compiled = json.loads((tmp_path / "step_time_compiled_cpu.json").read_text())
    assert compiled["settings"]["compile"] is True
    assert set(results[2].headline) == {"micro:1", "micro"}
    assert set(results[2].headline["micro"]["mixed"]) == {"tensorpoly_i/lora"}


def test_results_are_written_whole_or_not_at_all(load_benchmark, tmp_path, monkeypatch):
    """A part stopped while writing its JSON (the suite's time limit) leaves the previous file, not half of one."""
    common = load_benchmark("common")
    path = tmp_path / "result.json"
    common.write_outputs(path, {"complete": True, "runs": [1, 2, 3]}, "# first")
    before = path.read_text(), path.with_suffix(".md").read_text()
    original = type(path).write_text

    def interrupted(self, text, *args, **kwargs):
        original(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt  # what a stop in the middle of the write looks like to Python

    monkeypatch.setattr(type(path), "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        common.write_outputs(path, {"complete": False, "runs": list(range(100))}, "# second")
    assert (path.read_text(), path.with_suffix(".md").read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json", "result.md"]  # no temporary file left
