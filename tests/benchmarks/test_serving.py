"""Smoke test of benchmarks/serving.py: --quick serves a mixed-task batch three ways with equal outputs (never timings)."""

import json
import math

import pytest


def test_quick_run_writes_throughput_and_equal_outputs(load_benchmark, tmp_path):
    benchmark = load_benchmark("serving")
    path = tmp_path / "serving.json"
    returned = benchmark.main(["--quick", "--peft-adapters", "all", "--json", str(path)])
    written = json.loads(path.read_text())
    assert written == json.loads(json.dumps(returned))
    methods = written["settings"]["methods"]
    assert set(methods) == set(benchmark.ROUTED)
    names = {"base"} | set(methods) | {f"{way}_{m}" for m in methods for way in ("peft", "merged")}
    assert set(written["tokens_per_s"]) == set(written["median_s"]) == names
    assert all(math.isfinite(value) and value > 0 for value in written["tokens_per_s"].values())
    for key in ("speedup_vs_peft", "speedup_vs_merged", "time_vs_base"):
        assert set(written[key]) == set(methods)
        assert all(math.isfinite(value) and value > 0 for value in written[key].values())
    assert written["settings"]["requests"] <= written["settings"]["n_tasks"]
    for method in methods:
        check = written["checks"][method]
        assert check["adapter_effect"] > 1e-2, method  # the adapters change the output, so equality says something
        for way in ("peft", "merged"):
            assert check[way]["token_agreement"] == 1.0, (method, way)
            assert check[way]["max_abs_logit_diff"] <= written["settings"]["tolerance"] * check[way]["logit_scale"]
        assert written["setup_s"][method]["peft_adapters"] == written["settings"]["n_tasks"]
    assert {"platform", "cpu_count", "torch", "device"} <= set(written["environment"])
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ours / PEFT" in path.with_suffix(".md").read_text()


@pytest.mark.parametrize("way", ["peft", "merged"])
def test_a_wrong_task_fails_the_equality_check(load_benchmark, tmp_path, monkeypatch, way):
    """Serve every request with its neighbour's task: the benchmark refuses to time it."""
    benchmark = load_benchmark("serving")
    serve = getattr(benchmark, f"serve_{way}")

    def shifted(model, request, new_tokens):
        wrong = benchmark.Request(request.input_ids, request.attention_mask, request.tasks.roll(1))
        return serve(model, wrong, new_tokens)

    monkeypatch.setattr(benchmark, f"serve_{way}", shifted)
    with pytest.raises(benchmark.OutputMismatch, match=f"{way}_"):
        benchmark.main(["--quick", "--methods", "poly", "--json", str(tmp_path / "serving.json")])
    assert not (tmp_path / "serving.json").exists()
