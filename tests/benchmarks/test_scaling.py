"""Smoke test of benchmarks/scaling.py: --quick writes one curve per (axis, method) with fits (never timings)."""

import json
import math

import pytest


def test_quick_run_writes_curves_and_fits(load_benchmark, tmp_path):
    benchmark = load_benchmark("scaling")
    path = tmp_path / "scaling.json"
    returned = benchmark.main(["--quick", "--json", str(path)])
    written = json.loads(path.read_text())
    assert written == json.loads(json.dumps(returned))
    expected = {(axis, method) for axis, (_, methods, _, _) in benchmark.AXES.items() for method in methods}
    assert {(c["axis"], c["method"]) for c in written["curves"]} == expected
    classes = {"negligible", "quadratic or worse"} | {name for _, name in benchmark.GROWTH_CLASSES}
    for curve in written["curves"]:
        n = len(curve["values"])
        assert n >= 2 and curve["values"] == sorted(curve["values"])
        for key in ("median_s", "ratio_to_lora", "overhead_s", "peak_memory_bytes", "adapter_parameters"):
            assert len(curve[key]) == n, key
        assert all(math.isfinite(r) and r > 0 for r in curve["ratio_to_lora"])
        for fit in (curve["time_fit"], curve["memory_fit"]):
            assert len(fit["local_slopes"]) == n - 1
            assert fit["growth"] in classes
    routing_rows = next(c for c in written["curves"] if c["axis"] == "tasks" and c["method"] == "poly")
    assert routing_rows["adapter_parameters"][-1] > routing_rows["adapter_parameters"][0]
    assert written["conclusions"] and {"platform", "cpu_count", "torch"} <= set(written["environment"])
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Conclusions (computed)" in path.with_suffix(".md").read_text()


@pytest.mark.parametrize(
    ("xs", "ys", "slope"),
    [((1, 2, 4, 8), (3, 3, 3, 3), 0.0), ((1, 2, 4, 8), (1, 2, 4, 8), 1.0), ((2, 4, 8), (4, 16, 64), 2.0)],
)
def test_loglog_slope_of_power_laws(load_benchmark, xs, ys, slope):
    assert load_benchmark("scaling").loglog_slope(xs, ys) == pytest.approx(slope, abs=1e-9)


def test_quadratic_onset_needs_a_steep_and_measurable_step(load_benchmark):
    benchmark = load_benchmark("scaling")
    xs = (1, 2, 4, 8)
    assert benchmark.quadratic_onset(xs, (1.0, 2.0, 8.0, 64.0), reference=10.0, min_share=0.1) == (2, 4)
    assert benchmark.quadratic_onset(xs, (1.0, 2.0, 4.0, 8.0), reference=10.0, min_share=0.1) is None
    assert benchmark.quadratic_onset(xs, (1e-4, 1e-3, 2.0, 4.0), reference=10.0, min_share=0.1) is None  # from ~0
    assert benchmark.growth_class(2.5) == "quadratic or worse" and benchmark.growth_class(1.0) == "about linear"
