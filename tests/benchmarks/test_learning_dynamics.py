"""Smoke test of benchmarks/learning_dynamics.py: --quick without the real model writes the init and isolated-layer parts."""

import json
import math


def test_quick_run_without_tasks_writes_init_scale_and_isolated_fits(load_benchmark, tmp_path):
    benchmark = load_benchmark("learning_dynamics")
    path = tmp_path / "learning_dynamics.json"
    returned = benchmark.main(["--quick", "--tasks", "", "--threads", "1", "--json", str(path)])
    written = json.loads(path.read_text())
    assert written == json.loads(json.dumps(returned))
    assert written["tasks"] == {} and written["isolated"] and written["init_scale"]
    scale = {(e["name"], e["variant"], e["dim"]): e for e in written["init_scale"]}
    # the new defaults start TLoRA's A at LoRA's scale and move its B at LoRA's pace; the old ones do not
    lora_a = scale[("LoRA", "new", 384)]["a_std"]
    new, old = scale[("TLoRA N=2", "new", 384)], scale[("TLoRA N=2", "old", 384)]
    assert math.isclose(new["a_std"], lora_a, rel_tol=0.2) and new["b_std"] == 0
    assert 0.5 < new["b_first_step_vs_lora"] < 2 and old["b_first_step_vs_lora"] < 0.2
    assert all(0 <= e["relative_error"] <= 1.5 for e in written["isolated"])
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Real model: skipped" in path.with_suffix(".md").read_text()
