"""Smoke test of benchmarks/contraction.py: --quick writes the JSON, PNG and markdown it promises."""

import json


def test_quick_run_writes_results(load_benchmark, tmp_path):
    benchmark = load_benchmark("contraction")
    path = tmp_path / "contraction.json"
    returned = benchmark.main(["--quick", "--json", str(path)])
    written = json.loads(path.read_text())
    assert written == json.loads(json.dumps(returned))
    assert {"benchmark", "methods", "repeats", "environment", "results"} <= set(written)
    assert {row["order"] for row in written["results"]} == {2, 4}
    for row in written["results"]:
        assert {"order", "dim", "rank", "batch", "leaf_size", "pass_name", "planned_s", "naive_s", "pairwise_s",
                "speedup_naive_over_planned", "speedup_pairwise_over_planned"} <= set(row)
        assert row["planned_s"] > 0 and row["naive_s"] > 0
        assert abs(row["speedup_naive_over_planned"] - row["naive_s"] / row["planned_s"]) < 1e-9
    assert {row["pass_name"] for row in written["results"]} == {"forward", "forward+backward"}
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "naive / planned" in path.with_suffix(".md").read_text()
