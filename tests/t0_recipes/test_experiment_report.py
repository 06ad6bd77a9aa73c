"""Experiment report: medians, means, paired-bootstrap intervals, validation, the three files."""

import json
import math
import statistics

import numpy as np
import pytest

from t0_recipes.reporting.experiment import (
    bootstrap_counts,
    load_run_records,
    main,
    markdown_table,
    paired_mean_difference,
    plot_experiment,
    summarize_experiment,
    write_experiment,
)
from tensoradapt.config import METHOD_LABELS, METHODS

SEEDS = (42, 1024, 0, 1, 32)


def _vector(accuracy, n=10):
    """0/1 outcomes with ``round(accuracy * n)`` ones first."""
    ones = round(accuracy * n)
    return [1] * ones + [0] * (n - ones)


def _record(method, variant, per_task, seeds=SEEDS):
    """``per_task``: ``{task: [correct vector per seed]}``."""
    results = [
        {"task": task, "seed": seed, "accuracy": sum(c) / len(c), "n": len(c), "correct": list(c)}
        for task, vectors in per_task.items()
        for seed, c in zip(seeds, vectors)
    ]
    return {"method": method, "variant": variant, "mode": "full", "results": results, "wall_time_s": 60.0, "config": {}}


# Made-up accuracies per seed (n = 10 examples each).
RTE = [0.5, 0.7, 0.6, 0.9, 0.1]  # median 0.6
CB = [0.3, 0.4, 0.5, 0.6, 0.7]  # median 0.5


def _basic_records():
    lora = _record("lora", "fewshot", {"rte": [_vector(a) for a in RTE], "cb": [_vector(a) for a in CB]})
    poly = _record("poly", "fewshot", {"rte": [_vector(a) for a in (0.8, 0.8, 0.9, 0.7, 1.0)],
                                       "cb": [_vector(a) for a in (0.2, 0.2, 0.2, 0.2, 0.2)]})
    return [lora, poly]


def test_medians_spread_and_means_by_hand():
    summary = summarize_experiment(_basic_records(), n_boot=200)
    assert summary["tasks"] == ["rte", "cb"]  # Table-1 order
    assert summary["methods"] == ["lora", "poly"]
    lora = summary["runs"]["fewshot"]["lora"]
    rte = lora["tasks"]["rte"]
    assert rte["median"] == pytest.approx(0.6)
    assert (rte["min"], rte["max"]) == pytest.approx((0.1, 0.9))
    assert (rte["q25"], rte["q75"], rte["iqr"]) == pytest.approx((0.5, 0.7, 0.2))
    assert rte["std"] == pytest.approx(statistics.stdev(RTE))
    assert rte["n_seeds"] == 5 and rte["n_examples"] == 10
    assert rte["seeds"]["1"] == pytest.approx(0.9)
    assert lora["tasks"]["cb"]["median"] == pytest.approx(0.5)
    assert lora["mean"] == pytest.approx(0.55)
    assert lora["spread_mean"]["min"] == pytest.approx((0.1 + 0.3) / 2)
    poly = summary["runs"]["fewshot"]["poly"]
    assert poly["mean"] == pytest.approx((0.8 + 0.2) / 2)
    # Δ point estimates: poly's medians minus LoRA's, per task and for the mean.
    assert poly["delta"]["per_task"]["rte"]["estimate"] == pytest.approx(0.2)
    assert poly["delta"]["per_task"]["cb"]["estimate"] == pytest.approx(-0.3)
    assert poly["delta"]["mean"]["estimate"] == pytest.approx(-0.05)
    assert lora["delta"] is None
    assert summary["chance"] == pytest.approx({"rte": 0.5, "cb": 1 / 3})
    custom = summarize_experiment(_basic_records(), n_boot=10, n_choices={"rte": 4})
    assert custom["chance"]["rte"] == 0.25 and custom["chance"]["cb"] is None


def test_a_method_identical_to_the_baseline_has_the_interval_0_0():
    rng = np.random.default_rng(0)
    per_task = {task: [(rng.random(50) < 0.6).astype(int).tolist() for _ in SEEDS] for task in ("rte", "cb", "copa")}
    records = [_record("lora", "fewshot", per_task), _record("mhr", "fewshot", per_task)]
    delta = summarize_experiment(records, n_boot=500)["runs"]["fewshot"]["mhr"]["delta"]
    assert (delta["mean"]["estimate"], delta["mean"]["low"], delta["mean"]["high"]) == (0.0, 0.0, 0.0)
    for task in ("rte", "cb", "copa"):
        assert (delta["per_task"][task]["low"], delta["per_task"][task]["high"]) == (0.0, 0.0)


def test_right_wherever_the_baseline_is_wrong_lies_above_0():
    rng = np.random.default_rng(1)
    lora = {task: [(rng.random(60) < 0.5).astype(int).tolist() for _ in SEEDS] for task in ("rte", "wic")}
    better = {task: [[1] * 60 for _ in SEEDS] for task in lora}  # right on every example, so wherever LoRA is wrong
    summary = summarize_experiment([_record("lora", "fewshot", lora), _record("tlora", "fewshot", better)], n_boot=1000)
    delta = summary["runs"]["fewshot"]["tlora"]["delta"]
    assert delta["mean"]["low"] > 0
    assert all(delta["per_task"][task]["low"] > 0 for task in lora)


def test_the_interval_is_paired():
    # Both methods near 50 %, agreeing on all but 10 of 200 examples, where only mhr is right.
    n = 200
    lora = [1] * 100 + [0] * 100
    mhr = [1] * 110 + [0] * 90
    records = [_record("lora", "fewshot", {"rte": [lora] * 5}), _record("mhr", "fewshot", {"rte": [mhr] * 5})]
    delta = summarize_experiment(records, n_boot=2000, seed=3)["runs"]["fewshot"]["mhr"]["delta"]["mean"]
    assert delta["estimate"] == pytest.approx(0.05)
    # Paired: the difference only moves with how many of the 10 examples a draw holds, a
    # Binomial(200, 10/200) count: the interval is its 2.5 / 97.5 % quantiles over 200.
    assert delta["low"] > 0 and delta["high"] - delta["low"] < 0.08
    cdf = np.cumsum([math.comb(n, k) * 0.05**k * 0.95 ** (n - k) for k in range(n + 1)])
    low_count, high_count = np.searchsorted(cdf, 0.025), np.searchsorted(cdf, 0.975)  # 4 and 16
    assert abs(n * delta["low"] - low_count) <= 1 + 1e-9 and abs(n * delta["high"] - high_count) <= 1 + 1e-9
    # Resampling each method on its own draw would give a wide interval straddling 0.
    rng = np.random.default_rng(0)
    unpaired = (np.asarray(mhr)[rng.integers(0, n, (2000, n))].mean(1)
                - np.asarray(lora)[rng.integers(0, n, (2000, n))].mean(1))
    low, high = np.percentile(unpaired, [2.5, 97.5])
    assert low < 0 < high and high - low > 0.15


def test_intervals_are_reproducible_and_seeded():
    rng = np.random.default_rng(2)
    per = lambda p: {t: [(rng.random(40) < p).astype(int).tolist() for _ in SEEDS] for t in ("rte", "cb")}  # noqa: E731
    records = [_record("lora", "fewshot", per(0.5)), _record("poly", "fewshot", per(0.6))]
    first = summarize_experiment(records, n_boot=300, seed=5)["runs"]["fewshot"]["poly"]["delta"]
    again = summarize_experiment(records, n_boot=300, seed=5)["runs"]["fewshot"]["poly"]["delta"]
    other = summarize_experiment(records, n_boot=300, seed=6)["runs"]["fewshot"]["poly"]["delta"]
    assert first == again
    assert first["mean"]["estimate"] == other["mean"]["estimate"] and first["mean"]["low"] != other["mean"]["low"]


def _full_records(tasks=("rte", "cb", "copa"), n=20):
    rng = np.random.default_rng(4)
    records = []
    for i, method in enumerate(METHODS):
        for variant in ("fewshot", "zeroshot", "no_pretrain"):
            if variant == "zeroshot":  # one evaluation repeated for every seed
                per = {t: [(rng.random(n) < 0.5).astype(int).tolist()] * 5 for t in tasks}
                if method == "trex":  # or one seed only
                    records.append(_record(method, variant, {t: v[:1] for t, v in per.items()}, seeds=(42,)))
                    continue
            else:
                per = {t: [(rng.random(n) < 0.5 + 0.03 * i).astype(int).tolist() for _ in SEEDS] for t in tasks}
            records.append(_record(method, variant, per))
    return records


def test_zero_shot_repeated_or_single_seed():
    summary = summarize_experiment(_full_records(), n_boot=100)
    zero = summary["runs"]["zeroshot"]
    assert zero["poly"]["tasks"]["rte"]["n_seeds"] == 5 and zero["poly"]["tasks"]["rte"]["n_distinct"] == 1
    assert zero["poly"]["tasks"]["rte"]["iqr"] == 0.0
    assert zero["trex"]["tasks"]["rte"]["n_seeds"] == 1 and zero["trex"]["delta"] is not None


def test_markdown_names_every_method_task_and_the_method(tmp_path):
    summary = summarize_experiment(_full_records(), n_boot=100)
    text = markdown_table(summary)
    sections = {part.split("\n", 1)[0]: part for part in text.split("\n## ")[1:]}
    assert list(sections) == [
        "Headline",
        "Few-shot (pre-trained, then few-shot)",
        "Zero-shot (pre-trained, no few-shot training)",
        "No pre-training (few-shot from a fresh adapter)",
        "Runs",
    ]
    for section in sections.values():  # every method in every table
        for method in METHODS:
            assert f"\n| {METHOD_LABELS[method]} |" in section
    assert "| method | zero-shot mean | few-shot mean | no pre-training mean | few-shot Δ vs LoRA [95 % CI] |" in text
    assert text.count("| method | RTE | CB | COPA | mean | Δ vs LoRA [95 % CI] |") == 3  # one table per variant
    assert "paired bootstrap over evaluation examples" in text and "n_boot = 100" in text
    assert "median over the seeds" in text and "5 seeds" in text
    assert "| chance | 50.0 | 33.3 | 50.0 | 44.4 | |" in text


def test_write_experiment_and_the_png(tmp_path):
    summary = summarize_experiment(_full_records(), n_boot=50)
    png = plot_experiment(summary, tmp_path / "alone.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    paths = write_experiment(summary, tmp_path / "out", stem="proxy")
    assert sorted(p.name for p in paths.values()) == ["proxy.json", "proxy.md", "proxy.png"]
    assert json.loads(paths["json"].read_text())["runs"]["fewshot"]["lora"]["mean"] == summary["runs"]["fewshot"]["lora"]["mean"]
    assert paths["markdown"].read_text() == markdown_table(summary)
    assert paths["png"].stat().st_size > 1000
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def _dump(folder, name, record):
    path = folder / name
    path.write_text(json.dumps(record))
    return path


def test_a_record_without_correct_names_the_file_and_the_key(tmp_path):
    lora, poly = _basic_records()
    del poly["results"][3]["correct"]
    _dump(tmp_path, "lora_fewshot.run.json", lora)
    _dump(tmp_path, "poly_fewshot.run.json", poly)
    with pytest.raises(ValueError, match=r"poly_fewshot\.run\.json.*results\[3\].*lacks key 'correct'"):
        load_run_records(tmp_path)
    del lora["variant"]
    with pytest.raises(ValueError, match=r"broken\.run\.json: run record lacks key 'variant'"):
        load_run_records([_dump(tmp_path, "broken.run.json", lora)])


def test_other_schema_errors(tmp_path):
    lora, poly = _basic_records()
    poly["results"][0]["accuracy"] = 0.99
    with pytest.raises(ValueError, match="'accuracy' is 0.99 but the mean of 'correct'"):
        summarize_experiment([lora, poly])
    lora, poly = _basic_records()
    poly["results"][0]["n"] = 11
    with pytest.raises(ValueError, match="'n' is 11"):
        summarize_experiment([lora, poly])
    with pytest.raises(ValueError, match="a second run record for method 'lora'"):
        summarize_experiment([lora, lora])
    with pytest.raises(ValueError, match="no \\*.run.json under"):
        load_run_records(tmp_path)
    (tmp_path / "bad.run.json").write_text("{")
    with pytest.raises(ValueError, match="bad.run.json: not valid JSON"):
        load_run_records(tmp_path)


def test_correct_lengths_must_pair_across_methods():
    lora, poly = _basic_records()
    poly["results"][2]["correct"] = [1] * 12
    poly["results"][2]["accuracy"] = 1.0
    poly["results"][2]["n"] = 12
    with pytest.raises(ValueError, match="task 'rte' has 12 entries in 'correct' but .* has 10"):
        summarize_experiment([lora, poly])


def test_cli_reads_every_run_record_under_the_folder(tmp_path):
    runs = tmp_path / "runs" / "nested"
    runs.mkdir(parents=True)
    for record in _basic_records():
        _dump(runs, f"{record['method']}.run.json", record)
    _dump(runs, "ignored.json", {"not": "a record"})
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--n-boot", "50"]) == 0
    summary = json.loads((tmp_path / "out" / "t0_proxy.json").read_text())
    assert summary["methods"] == ["lora", "poly"] and summary["n_boot"] == 50
    assert (tmp_path / "out" / "t0_proxy.png").stat().st_size > 0
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "out2")]) == 2


def _cluster_records():
    """LoRA and Poly, few-shot, on rte and cb and on the topic cluster held out of t0_train."""
    cluster = {"ag_news": [_vector(0.8)] * 5, "trec": [_vector(0.6)] * 5}
    lora = _record("lora", "fewshot", {"rte": [_vector(a) for a in RTE], "cb": [_vector(a) for a in CB]} | cluster)
    poly = _record("poly", "fewshot", {"rte": [_vector(0.5)] * 5, "cb": [_vector(0.5)] * 5,
                                       "ag_news": [_vector(0.3)] * 5, "trec": [_vector(0.2)] * 5})
    return [lora, poly]


def test_a_held_out_cluster_is_labelled_and_averaged_apart_from_the_t0_tasks(tmp_path):
    summary = summarize_experiment(_cluster_records(), n_boot=200)
    assert summary["tasks"] == ["rte", "cb", "ag_news", "trec"]
    assert summary["t0_tasks"] == ["rte", "cb"] and summary["cluster_tasks"] == ["ag_news", "trec"]
    assert summary["chance"] == pytest.approx({"rte": 1 / 2, "cb": 1 / 3, "ag_news": 1 / 4, "trec": 1 / 6})
    assert summary["chance_mean_t0"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert summary["chance_mean"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4 + 1 / 6) / 4)
    lora, poly = (summary["runs"]["fewshot"][m] for m in ("lora", "poly"))
    assert (lora["t0"]["mean"], lora["t0"]["n_tasks"]) == (pytest.approx(0.55), 2)
    assert (lora["mean"], lora["n_tasks"]) == (pytest.approx((0.6 + 0.5 + 0.8 + 0.6) / 4), 4)
    assert poly["delta"]["t0"]["estimate"] == pytest.approx(0.5 - 0.55)
    assert poly["delta"]["mean"]["estimate"] == pytest.approx((0.5 + 0.5 + 0.3 + 0.2) / 4 - 0.625)
    text = markdown_table(summary)
    assert "| method | few-shot T0 mean | few-shot all-task mean | few-shot Δ vs LoRA, T0 tasks [95 % CI] | " \
           "few-shot Δ vs LoRA, all tasks [95 % CI] |" in text
    assert "T0 mean: the 2 T0 held-out tasks; all-task mean: those and AG, TREC, a held-out cluster from t0_train " \
           "(not a T0 task)." in text
    assert "| LoRA | 55.0 | 62.5 | (baseline) | (baseline) |" in text and "| chance | 41.7 | 31.2 | | |" in text
    assert "| method | RTE | CB | AG ‡ | TREC ‡ | T0 mean | all-task mean | Δ vs LoRA, T0 tasks [95 % CI] | " \
           "Δ vs LoRA, all tasks [95 % CI] |" in text
    assert "‡ held-out cluster from t0_train (not a T0 task): AG (ag_news, chance 25.0 %), " \
           "TREC (trec, chance 16.7 %)." in text
    assert "| LoRA | 60.0 | 50.0 | 80.0 | 60.0 | 55.0 | 62.5 | (baseline) | (baseline) |" in text
    assert "| chance | 50.0 | 33.3 | 25.0 | 16.7 | 41.7 | 31.2 | | |" in text
    paths = write_experiment(summary, tmp_path)
    assert paths["png"].stat().st_size > 1000
    assert json.loads(paths["json"].read_text())["cluster_tasks"] == ["ag_news", "trec"]
    plain = markdown_table(summarize_experiment(_basic_records(), n_boot=10))
    assert "‡" not in plain and "T0 mean" not in plain  # no cluster: one mean, as before


def test_the_paired_mean_difference_weighs_tasks_equally_and_resamples_each_alone():
    same = {"a": [1, 0, 1], "b": [0, 1]}
    assert paired_mean_difference(same, same) == {"estimate": 0.0, "low": 0.0, "high": 0.0}
    ones, zeros = {"a": [1, 1, 1], "b": [1, 1]}, {"a": [0, 0, 0], "b": [0, 0]}
    assert paired_mean_difference(ones, zeros) == {"estimate": 1.0, "low": 1.0, "high": 1.0}
    # Tasks weigh equally whatever their size: (1/4 + 1/1) / 2, not 2/5 pooled.
    ours, reference = {"a": [1, 0, 0, 0], "b": [1]}, {"a": [0, 0, 0, 0], "b": [0]}
    interval = paired_mean_difference(ours, reference, n_boot=4000)
    assert interval["estimate"] == pytest.approx(0.625)
    # A resample of task a holds X ~ Binomial(4, 1/4) hits: P(X = 0) = 0.32 and P(X = 4) = 0.004 < 2.5 % <
    # P(X >= 3) = 0.05, so the interval is (0 / 4 + 1) / 2 to (3 / 4 + 1) / 2.
    assert (interval["low"], interval["high"]) == pytest.approx((0.5, 0.875))
    with pytest.raises(ValueError, match="'a': 3 outcomes against the reference's 4"):
        paired_mean_difference({"a": [1, 0, 1]}, {"a": [1, 0, 1, 1]})


def test_one_run_per_side_gets_the_experiments_own_interval():
    """The library benchmark's Δ is the proxy's: one seed per method, the same replicates, the same interval."""
    rng = np.random.default_rng(7)
    outcomes = {name: {task: rng.integers(0, 2, size).tolist() for task, size in (("rte", 30), ("cb", 17))}
                for name in ("lora", "poly")}
    records = [_record(name, "fewshot", {task: [c] for task, c in per_task.items()}, seeds=(0,))
               for name, per_task in outcomes.items()]
    delta = summarize_experiment(records, n_boot=500, seed=5)["runs"]["fewshot"]["poly"]["delta"]["mean"]
    assert paired_mean_difference(outcomes["poly"], outcomes["lora"], n_boot=500, seed=5) == pytest.approx(delta, abs=1e-12)


def test_bootstrap_counts_are_one_stream_per_task_and_size():
    counts = bootstrap_counts("rte", 9, n_boot=300, seed=2)
    assert counts.shape == (300, 9) and counts.dtype == np.float64
    assert (counts.sum(axis=1) == 9).all() and (counts >= 0).all()
    assert (bootstrap_counts("rte", 9, n_boot=300, seed=2) == counts).all()
    for other in (bootstrap_counts("cb", 9, n_boot=300, seed=2), bootstrap_counts("rte", 9, n_boot=300, seed=3)):
        assert (other != counts).any()
