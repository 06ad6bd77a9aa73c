"""Smoke test of benchmarks/inference.py: --quick writes the ratios and a merge that matches the unmerged model."""

import json
import math


def test_quick_run_writes_ratios_and_exact_merge(load_benchmark, tmp_path):
    benchmark = load_benchmark("inference")
    path = tmp_path / "inference.json"
    returned = benchmark.main(["--quick", "--json", str(path)])
    written = json.loads(path.read_text())
    assert written == json.loads(json.dumps(returned))
    methods = written["settings"]["methods"]
    assert set(methods) == set(benchmark.MERGEABLE)
    expected = {f"{m}_merged/base" for m in methods} | {f"{m}_unmerged/{m}_merged" for m in methods}
    assert expected | {"trex/lora_unmerged", "trex/base"} == set(written["ratios"])
    assert all(math.isfinite(value) and value > 0 for value in written["ratios"].values())
    assert set(written["median_s"]) == set(written["settings"]["variants"]) == set(written["peak_memory_bytes"])
    for method in methods:
        check = written["max_abs_diff"][method]
        assert check["adapter_effect"] > 1e-3, method  # the adapter changes the output ...
        scale = max(check["logit_scale"], check["adapter_effect"])
        assert check["merged_vs_unmerged"] <= 1e-4 * scale, method  # ... and merging keeps it (fp32 rounding)
        assert check["disabled_vs_base"] == 0.0, method
        assert check["unmerge_weight_change"] == 0.0, method
    assert written["adapter_parameters"]["base"] == 0 and written["adapter_parameters"]["trex"] > 0
    assert {"platform", "cpu_count", "torch", "device"} <= set(written["environment"])
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "merged / base" in path.with_suffix(".md").read_text()
