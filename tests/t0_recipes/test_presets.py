"""Presets: the paper's hyper-parameters, the tiny model, and the fail-fast model loading."""

import time

import pytest
import torch

from t0_recipes.presets import PRESETS, ModelUnavailableError, get_preset, load_model


def test_paper_hyper_parameters():
    paper = get_preset("paper")
    assert paper.model_id == "bigscience/T0_3B"
    f = paper.fewshot
    assert (f.optimizer, f.lr, f.steps, f.batch_size, f.warmup_ratio, f.grad_clip, f.precision, f.max_length) == (
        "adafactor", 3e-3, 1000, 8, 0.06, 1.0, "bf16", 256)
    p = paper.pretrain
    assert (p.lr_modules, p.lr_routing, p.steps, p.batch_size) == (1e-3, 0.1, 100_000, 8)
    assert not paper.random_init and PRESETS["tiny"].random_init


def test_tiny_model_builds_offline_and_runs(tokenizer):
    model, tok = load_model("tiny")
    again, _ = load_model("tiny")
    assert tok.pad_token_id == 0 and tok.eos_token_id == 1
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p, q)  # seeded: the same random init every time
    ids = tok(["hello"], return_tensors="pt").input_ids
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape[-1] == 384 and torch.isfinite(out.loss)


def test_paper_preset_offline_stops_at_once_naming_the_alternatives(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache" / "hub"))
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as error:
        load_model("paper")
    assert time.perf_counter() - start < 10
    assert "--model PATH" in str(error.value) and "--preset tiny" in str(error.value)


def test_missing_model_path_is_refused(tmp_path):
    with pytest.raises(ModelUnavailableError, match="--preset tiny"):
        load_model("paper", tmp_path / "no_such_checkpoint")


def test_local_model_path_loads(tmp_path):
    model, tokenizer = load_model("tiny")
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    loaded, _ = load_model("paper", tmp_path / "ckpt")
    for p, q in zip(model.parameters(), loaded.parameters()):
        assert torch.equal(p, q)


def test_command_line_overrides_the_few_shot_rates():
    from t0_recipes.cli import base_parser, preset_from_args

    args = base_parser("x").parse_args(["--preset", "minilm", "--lr", "0.01", "--lr-routing", "0.5", "--steps", "7"])
    fewshot = preset_from_args(args).fewshot
    assert (fewshot.lr, fewshot.lr_routing, fewshot.steps) == (0.01, 0.5, 7)
    untouched = preset_from_args(base_parser("x").parse_args(["--preset", "minilm"])).fewshot
    assert untouched == get_preset("minilm").fewshot


@pytest.mark.parametrize("flag", ["--lr", "--lr-routing", "--steps"])
def test_a_rate_or_step_count_that_is_not_positive_is_refused(flag):
    from t0_recipes.cli import base_parser, preset_from_args

    with pytest.raises(ValueError, match=flag):
        preset_from_args(base_parser("x").parse_args(["--preset", "minilm", flag, "0"]))
