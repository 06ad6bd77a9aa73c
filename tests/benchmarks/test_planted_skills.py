"""The demo (benchmarks/planted_skills.py, `make demo`) in its quick sizes: every method runs, every
figure it writes is computed in the run, and the same seed gives the same numbers."""

import json

import pytest
import torch

METHODS = {"lora_scratch", "lora", "tlora", "poly", "mhr", "tensorpoly_i", "tensorpoly_ii", "trex"}
TASK_ROUTED = {"poly", "mhr", "tensorpoly_i", "tensorpoly_ii"}
THREADS = ("--threads", str(torch.get_num_threads()))  # leave the test process's setting as it is


@pytest.fixture(scope="module")
def quick_run(load_benchmark, tmp_path_factory):
    demo = load_benchmark("planted_skills")
    out = tmp_path_factory.mktemp("demo")
    returned = demo.main(["--quick", "--output-dir", str(out), "--no-param-table", *THREADS])
    return demo, out, returned


def test_quick_run_writes_json_markdown_and_pngs(quick_run):
    _, out, returned = quick_run
    written = json.loads((out / "planted_skills.json").read_text())
    assert written == json.loads(json.dumps(returned))
    assert set(written["worlds"]) == {"poly", "tensor", "rank_one"}
    for png in ("results.png", "routing_poly.png", "routing_tensor.png", "routing_rank_one.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert "Planted skills" in (out / "planted_skills.md").read_text()


def test_every_method_reports_errors_parameters_and_recovery(quick_run):
    _, _, output = quick_run
    for kind, world in output["worlds"].items():
        assert set(world["methods"]) == METHODS, kind
        for name, entry in world["methods"].items():
            modes = {"routing_only", "modules_only", "full"} if name in TASK_ROUTED else {"full"}
            assert set(entry["fewshot"]) == modes, (kind, name)
            for result in entry["fewshot"].values():
                assert result["error"] >= 0 and result["trainable"] > 0
                assert len(result["per_task"]) == output["settings"]["world"]["n_heldout_tasks"]
            if name in TASK_ROUTED:
                recovery = entry["recovery"]
                assert -1.0 <= recovery["score"] <= 1.0 and -1.0 <= recovery["chance"] <= 1.0
            else:
                assert entry["recovery"] is None
        # routing only trains fewer parameters than the full few-shot run
        poly = world["methods"]["poly"]["fewshot"]
        assert poly["routing_only"]["trainable"] < poly["full"]["trainable"]


def test_same_seed_gives_the_same_figures(quick_run, tmp_path):
    demo, _, first = quick_run
    second = demo.main(["--quick", "--output-dir", str(tmp_path), "--no-param-table", "--worlds", "poly", *THREADS])
    for name, entry in second["worlds"]["poly"]["methods"].items():
        assert entry["fewshot"] == first["worlds"]["poly"]["methods"][name]["fewshot"], name


def test_trex_runs_with_a_task_level_prior(quick_run):
    """T-REX gets one prior row per training task (centroids of the tasks' mean inputs)."""
    _, _, output = quick_run
    n_train = output["settings"]["world"]["n_train_tasks"]
    for world in output["worlds"].values():
        config = world["methods"]["trex"]["config"]
        assert config["n_tasks"] == n_train and config["trex_n_clusters"] == n_train
