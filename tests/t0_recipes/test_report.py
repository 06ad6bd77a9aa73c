"""Medians, means and the three report files."""

import json

import pytest

from t0_recipes.reporting.report import SeedResult, build_report, markdown_report, summarize, write_report
from t0_recipes.data.tasks import PAPER_TABLE1


def _results():
    accuracies = {"rte": [0.5, 0.7, 0.6, 0.9, 0.1], "cb": [0.3, 0.4, 0.5, 0.6, 0.7]}
    return [
        SeedResult(task, seed, acc, 10, {f"{task}/a": acc})
        for task, values in accuracies.items()
        for seed, acc in zip((42, 1024, 0, 1, 32), values)
    ]


def test_median_per_task_and_mean_over_tasks():
    summary = summarize(_results())
    assert list(summary["tasks"]) == ["rte", "cb"]  # Table-1 order
    assert summary["tasks"]["rte"]["median"] == 0.6
    assert summary["tasks"]["cb"]["median"] == 0.5
    assert summary["mean"] == pytest.approx(0.55)
    with pytest.raises(ValueError, match="two results"):
        summarize(_results() + [SeedResult("rte", 42, 0.0, 1)])


def test_markdown_puts_the_paper_beside_ours_and_flags_tiny_models():
    report = build_report(_results(), method="tensorpoly_i", preset="tiny", params={"trainable": 10, "total": 1000},
                          wall_time_s=3.0, random_init=True)
    text = markdown_report(report)
    assert "Tiny random-init model" in text and "near chance" in text
    assert "| ours: tensorpoly_i | 60.0 | 50.0 | – |" in text
    assert "| paper: TensorPoly-I | 85.2 | 91.7 |" in text
    assert "| paper: T0-3B + (IA)3 (T-Few) | 78.0 | 87.5 |" in text
    assert "| chance | 50.0 | 33.3 |" in text
    assert "10 trainable of 1,000" in text
    same = (PAPER_TABLE1["tensorpoly_i"]["rte"] + PAPER_TABLE1["tensorpoly_i"]["cb"]) / 2
    assert f"{same:.1f}" in text
    plain = markdown_report(build_report(_results(), method="mine", preset="paper"))
    assert "Tiny random-init" not in plain and "paper: TensorPoly-I" not in plain


def test_write_report_files(tmp_path):
    report = build_report(_results(), method="lora", preset="tiny", random_init=True)
    paths = write_report(report, tmp_path, stem="lora_tiny")
    loaded = json.loads(paths["json"].read_text())
    assert loaded["summary"]["tasks"]["rte"]["median"] == 0.6
    assert loaded["paper"]["lora"]["mean"] == 66.8
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert markdown_report(loaded) == paths["markdown"].read_text()  # renders from the JSON too
    with pytest.raises(ValueError, match="Table 1"):
        build_report(_results(), method="x", preset="tiny", paper_row="nope")
