"""Save / load: ``adapter_config.json`` + ``adapter_model.safetensors``, round trips, mismatches
named by key, and atomic writes."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tensoradapt.checkpoint as checkpoint
from tensoradapt import (
    AdapterConfig,
    adapter_config,
    adapter_state_dict,
    add_task,
    inject,
    load_adapter,
    reset_routing,
    save_adapter,
    set_training_mode,
)
from tensoradapt.checkpoint import WEIGHTS_NAME
from tensoradapt.config import CONFIG_NAME
from tensoradapt.testing import TINY_METHOD_CONFIGS, perturb_adapters, tiny_batch, tiny_method_config, tiny_model

METHODS = tuple(TINY_METHOD_CONFIGS)


def adapted(method, model_name="gpt2", seed=0, **overrides):
    model = inject(tiny_model(model_name), tiny_method_config(method, **overrides))
    return perturb_adapters(model, seed).eval()


def outputs(model, batch):
    n_tasks = adapter_config(model).n_tasks
    with torch.no_grad():
        return [model(**batch, task_ids=t).logits for t in range(n_tasks)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model_name", ["t5", "llama", "bert", "gpt2"])
def test_save_load_round_trip_gives_equal_outputs(tmp_path, model_name, method):
    model = adapted(method, model_name, seed=0)
    save_adapter(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    fresh = adapted(method, model_name, seed=1)  # same base weights, other adapters
    batch = tiny_batch(model, batch=2)
    expected, before = outputs(model, batch), outputs(fresh, batch)
    assert not torch.allclose(before[0], expected[0], atol=1e-4), "the fresh adapters must differ"
    assert load_adapter(fresh, tmp_path) is fresh
    for got, want in zip(outputs(fresh, batch), expected):
        assert torch.equal(got, want)
    saved, live = load_file(tmp_path / WEIGHTS_NAME), adapter_state_dict(model)
    assert saved.keys() == live.keys()
    assert all(torch.equal(saved[key], live[key]) for key in saved)


@pytest.mark.parametrize("method", METHODS)
def test_saved_config_is_the_models_config(tmp_path, method):
    model = adapted(method)
    save_adapter(model, tmp_path)
    assert AdapterConfig.from_json(tmp_path) == adapter_config(model)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["method"] == method


def test_equal_adapters_save_to_equal_bytes(tmp_path):
    """Same seed, same run: the weights file (and the sha256 the config records) is the same every save.
    With two metadata keys safetensors wrote them in a random order: 12 saves agreeing by chance has
    probability 2 / 2**12."""
    model = adapted("poly")
    digests = set()
    for attempt in range(12):
        save_adapter(model, tmp_path / str(attempt))
        digests.add(json.loads((tmp_path / str(attempt) / CONFIG_NAME).read_text())["sha256"][WEIGHTS_NAME])
        assert (tmp_path / str(attempt) / WEIGHTS_NAME).read_bytes() == (tmp_path / "0" / WEIGHTS_NAME).read_bytes()
    assert len(digests) == 1


def test_loading_into_a_model_built_from_the_saved_config(tmp_path):
    model = adapted("mhr", "t5")
    save_adapter(model, tmp_path)
    fresh = inject(tiny_model("t5"), AdapterConfig.from_json(tmp_path))
    load_adapter(fresh, tmp_path).eval()
    batch = tiny_batch(model, batch=2)
    assert all(torch.equal(a, b) for a, b in zip(outputs(fresh, batch), outputs(model, batch)))


def test_few_shot_edits_are_saved(tmp_path):
    model = adapted("poly")
    reset_routing(model, n_tasks=1)
    add_task(model)
    set_training_mode(model, "routing_only")
    save_adapter(model, tmp_path)
    saved = AdapterConfig.from_json(tmp_path)
    assert (saved.n_tasks, saved.mode) == (2, "routing_only")
    fresh = inject(tiny_model("gpt2"), saved)
    load_adapter(fresh, tmp_path).eval()
    batch = tiny_batch(model)
    assert all(torch.equal(a, b) for a, b in zip(outputs(fresh, batch), outputs(model, batch)))


def _first_mismatch(saved: dict, expected: dict) -> str:
    """The first key (sorted) that is missing, unexpected or of another shape."""
    for key in sorted(set(saved) | set(expected)):
        if key not in saved or key not in expected or saved[key].shape != expected[key].shape:
            return key
    raise AssertionError("no mismatch")


@pytest.mark.parametrize(
    ("method", "overrides"),
    [
        ("lora", dict(lora_rank=3)),
        ("tlora", dict(tensor_rank=3)),
        ("tlora", dict(order=3)),
        ("poly", dict(n_skills=2)),
        ("poly", dict(n_tasks=2)),
        ("mhr", dict(n_heads=4)),
        ("tensorpoly_i", dict(tensor_rank=2)),
        ("tensorpoly_ii", dict(order=3)),
    ],
)
def test_loading_into_a_model_of_other_shapes_names_the_first_mismatching_key(tmp_path, method, overrides):
    save_adapter(adapted(method), tmp_path)
    other = adapted(method, seed=1, **overrides)
    before = {k: v.clone() for k, v in adapter_state_dict(other).items()}
    key = _first_mismatch(load_file(tmp_path / WEIGHTS_NAME), adapter_state_dict(other))
    with pytest.raises(ValueError, match="has shape") as error:
        load_adapter(other, tmp_path)
    assert repr(key) in str(error.value)
    after = adapter_state_dict(other)
    assert all(torch.equal(before[k], after[k]) for k in before), "a failed load must not change the model"


@pytest.mark.parametrize(
    ("saved_pattern", "loaded_pattern", "message"),
    [
        (r".*attn\.c_attn", r".*(attn\.c_attn|mlp\.c_fc)", "is missing from checkpoint"),
        (r".*(attn\.c_attn|mlp\.c_fc)", r".*attn\.c_attn", "has no parameter in the model"),
        (r".*h\.0\.attn\.c_attn", r".*h\.1\.attn\.c_attn", "has no parameter in the model"),
    ],
)
def test_loading_into_a_model_with_other_targets_names_the_first_mismatching_key(
    tmp_path, saved_pattern, loaded_pattern, message
):
    model = perturb_adapters(inject(tiny_model("gpt2"), AdapterConfig(method="lora", target_modules=saved_pattern)))
    save_adapter(model, tmp_path)
    other = inject(tiny_model("gpt2"), AdapterConfig(method="lora", target_modules=loaded_pattern))
    key = _first_mismatch(load_file(tmp_path / WEIGHTS_NAME), adapter_state_dict(other))
    with pytest.raises(ValueError, match=message) as error:
        load_adapter(other, tmp_path)
    assert repr(key) in str(error.value)


@pytest.mark.parametrize(("saved", "loaded"), [("poly", "mhr"), ("lora", "poly"), ("tensorpoly_i", "tensorpoly_ii"),
                                               ("tlora", "lora")])
def test_loading_another_method_names_both_methods(tmp_path, saved, loaded):
    save_adapter(adapted(saved), tmp_path)
    with pytest.raises(ValueError, match=f"holds method='{saved}' but the model has '{loaded}'"):
        load_adapter(adapted(loaded), tmp_path)


@pytest.mark.parametrize(("saved", "loaded"), [(dict(lora_alpha=4.0), dict()), (dict(), dict(lora_alpha=8.0))])
def test_loading_with_another_scaling_raises(tmp_path, saved, loaded):
    """Same shapes, other ``lora_alpha``: loading would silently change every output."""
    save_adapter(adapted("lora", **saved), tmp_path)
    with pytest.raises(ValueError, match="lora_alpha"):
        load_adapter(adapted("lora", seed=1, **loaded), tmp_path)


def test_loading_with_another_normalize_outer_raises(tmp_path):
    save_adapter(adapted("tlora", normalize_outer=True), tmp_path)
    with pytest.raises(ValueError, match="normalize_outer"):
        load_adapter(adapted("tlora", seed=1), tmp_path)


@pytest.mark.parametrize("method", ["tlora", "tensorpoly_i", "tensorpoly_ii"])
def test_loading_with_another_init_raises(tmp_path, method):
    """``init='matched'`` scales every leaf by a constant the weights do not hold: loading a matched
    checkpoint into a ``reference`` model (same shapes) would silently change every output."""
    save_adapter(adapted(method), tmp_path)
    with pytest.raises(ValueError, match="init='matched'.*init='reference'"):
        load_adapter(adapted(method, seed=1, init="reference"), tmp_path)


def test_loading_a_missing_checkpoint_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_adapter(adapted("lora"), tmp_path / "nowhere")


def _failing_save_file(written: list):
    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a safetensors header")  # a partial write, then the crash
        written.append(filename)
        raise OSError("disk full")

    return save_file


def test_a_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(checkpoint, "save_file", _failing_save_file(written))
    with pytest.raises(OSError, match="disk full"):
        save_adapter(adapted("poly"), tmp_path / "ckpt")
    assert written, "the fake save_file must have run"
    assert list((tmp_path / "ckpt").iterdir()) == []


@pytest.mark.parametrize("method", ["lora", "mhr", "tensorpoly_ii"])
def test_a_failed_save_keeps_the_earlier_checkpoint_intact(tmp_path, monkeypatch, method):
    model = adapted(method)
    save_adapter(model, tmp_path)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    perturb_adapters(model, seed=4)
    written = []
    monkeypatch.setattr(checkpoint, "save_file", _failing_save_file(written))
    with pytest.raises(OSError, match="disk full"):
        save_adapter(model, tmp_path)
    assert written and not Path(written[0]).exists()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files
    monkeypatch.undo()
    fresh = adapted(method, seed=0)
    load_adapter(fresh, tmp_path)
    batch = tiny_batch(fresh, batch=2)
    assert all(torch.equal(a, b) for a, b in zip(outputs(fresh, batch), outputs(adapted(method, seed=0), batch)))


def test_a_failed_config_write_keeps_the_earlier_config(tmp_path, monkeypatch):
    model = adapted("poly")
    save_adapter(model, tmp_path)
    config_text = (tmp_path / CONFIG_NAME).read_text()
    add_task(model)

    def failing_write_text(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", failing_write_text)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(model, tmp_path)
    monkeypatch.undo()
    assert (tmp_path / CONFIG_NAME).read_text() == config_text
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


def test_atomic_write_replaces_in_one_step(tmp_path):
    from tensoradapt.atomic import atomic_write

    target = tmp_path / "sub" / "file.txt"
    atomic_write(target, lambda tmp: Path(tmp).write_text("one"))
    atomic_write(target, lambda tmp: Path(tmp).write_text("two"))
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]
