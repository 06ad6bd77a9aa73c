"""Smoke test of benchmarks/step_time.py: --quick writes the ratios the issue names (never timings)."""

import json
import math

HEADLINE = ("tlora/lora", "tensorpoly_i/lora", "tensorpoly_ii/lora", "poly/peft_poly", "mhr/peft_mhr", "trex/lora")


def test_quick_run_writes_headline_ratios(load_benchmark, tmp_path):
    path = tmp_path / "step_time.json"
    returned = load_benchmark("step_time").main(["--quick", "--json", str(path)])
    written = json.loads(path.read_text())
    assert written == json.loads(json.dumps(returned))
    assert set(HEADLINE) <= set(written["ratios"])
    assert set(HEADLINE) <= set(written["ratios_single_task"])
    for ratios in (written["ratios"], written["ratios_single_task"]):
        assert all(math.isfinite(value) and value > 0 for value in ratios.values())
    assert {"platform", "cpu_count", "torch", "device"} <= set(written["environment"])
    for batch_kind in ("mixed", "single"):
        assert set(written["median_s"][batch_kind]) == set(written["settings"]["variants"])
        assert all(value > 0 for value in written["peak_memory_bytes"][batch_kind].values())
    assert written["adapter_parameters"]["trex"] > 0
    assert set(written["targets_met"]) <= set(written["targets"])
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "trex/lora" in path.with_suffix(".md").read_text()
