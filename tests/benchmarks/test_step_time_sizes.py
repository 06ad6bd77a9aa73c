"""Smoke test of benchmarks/step_time.py's multi-size report: the headline size first, every size's ratio to LoRA."""

import json
import math

import pytest


def test_quick_run_reports_every_size_headline_first(load_benchmark, tmp_path):
    benchmark = load_benchmark("step_time")
    path = tmp_path / "step_time.json"
    variants = "lora,tlora,tensorpoly_i,trex,peft_lora"
    written = benchmark.main(["--quick", "--variants", variants, "--json", str(path)])
    assert json.loads(path.read_text()) == json.loads(json.dumps(written))
    assert written["sizes"] == ["micro:1", "micro"]
    runs = written["runs"]
    assert [run["settings"]["model_size"] for run in runs] == written["sizes"]
    assert written["ratios"] == runs[0]["ratios"]  # the top level is the headline size
    # micro:1 has micro's widths; the vocabulary keeps the LM head's share (1 of 1 block: unchanged)
    assert runs[0]["settings"]["shape"] == benchmark.model_shape("micro")
    for run in runs:
        for ratios in (run["ratios"], run["ratios_single_task"]):
            assert {"tlora/lora", "tensorpoly_i/lora", "trex/lora"} <= set(ratios)
            assert all(math.isfinite(value) and value > 0 for value in ratios.values())
        assert set(run["goals_met"]) <= set(run["goals"])
    text = path.with_suffix(".md").read_text()
    assert text.index("## micro:1") < text.index("## micro\n")
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_t0_shape_keeps_widths_and_cuts_depth_and_vocabulary(load_benchmark):
    benchmark = load_benchmark("step_time")
    shape = benchmark.model_shape("t0-3b:2")
    assert (shape["d_model"], shape["d_ff"], shape["num_heads"], shape["d_kv"]) == (2048, 5120, 32, 64)
    assert shape["num_layers"] == shape["num_decoder_layers"] == 2
    assert shape["vocab_size"] == round(32128 * 2 / 24)
    with pytest.raises(ValueError, match="blocks"):
        benchmark.model_shape("t0-3b:0")
    with pytest.raises(ValueError, match="unknown"):
        benchmark.model_shape("huge")


def test_goals_apply_where_the_issue_sets_them(load_benchmark):
    benchmark = load_benchmark("step_time")
    headline = benchmark.goals("t0-3b:1", compiled=False)
    assert all(headline[f"{m}/lora"] == 1.05 for m in benchmark.OURS if m != "lora")
    compiled_small = benchmark.goals("tiny", compiled=True)
    assert all(compiled_small[f"{m}/lora"] == 1.10 for m in benchmark.OURS if m != "lora")
    assert "trex/lora" not in benchmark.goals("tiny", compiled=False)
