"""Export one task as a plain PEFT LoRA checkpoint, loaded back by ``peft`` itself."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tensoradapt import (
    AdapterConfig,
    adapted_layers,
    adapter_config,
    export_peft_lora,
    inject,
    task_lora_matrices,
)
from tensoradapt.testing import TINY_METHOD_CONFIGS, perturb_adapters, tiny_batch, tiny_method_config, tiny_model

peft = pytest.importorskip("peft")

METHODS = tuple(TINY_METHOD_CONFIGS)


def adapted(method, model_name, **overrides):
    model = inject(tiny_model(model_name), tiny_method_config(method, **overrides))
    return perturb_adapters(model).eval()


def _task(model) -> int:
    return 2 if adapter_config(model).n_tasks > 2 else 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model_name", ["t5", "gpt2", "llama"])
def test_peft_loads_the_export_and_gives_the_same_logits(tmp_path, model_name, method):
    # An exact claim (the export is the task's adapter), so both sides run in float64.
    model = adapted(method, model_name).double()
    if any(layer.combiner.token_routed for layer in adapted_layers(model).values()):
        pytest.skip("token-routed adapters export a routing-averaged LoRA, not their exact output")
    task = _task(model)
    export_peft_lora(model, tmp_path, task=task)
    base = tiny_model(model_name).double()
    batch = tiny_batch(model, batch=2)
    with torch.no_grad():
        base_logits = base(**batch).logits
    loaded = peft.PeftModel.from_pretrained(base, tmp_path, autocast_adapter_dtype=False).eval().double()
    with torch.no_grad():
        ours = model(**batch, task_ids=task).logits
        theirs = loaded(**batch).logits
    assert not torch.allclose(ours, base_logits, atol=1e-4), "the adapter must change the output"
    torch.testing.assert_close(theirs, ours, atol=1e-10, rtol=1e-10)
    lora_layers = [m for m in loaded.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    assert len(lora_layers) == len(adapted_layers(model))


@pytest.mark.parametrize("method", ["poly", "mhr", "tensorpoly_i", "tensorpoly_ii"])
def test_every_task_exports_its_own_adapter(tmp_path, method):
    model = adapted(method, "gpt2")
    batch = tiny_batch(model, batch=2)
    previous = None
    for task in range(adapter_config(model).n_tasks):
        export_peft_lora(model, tmp_path / str(task), task=task)
        loaded = peft.PeftModel.from_pretrained(tiny_model("gpt2"), tmp_path / str(task)).eval()
        with torch.no_grad():
            theirs = loaded(**batch).logits
            torch.testing.assert_close(theirs, model(**batch, task_ids=task).logits, atol=1e-5, rtol=1e-5)
        if previous is not None:
            assert not torch.allclose(theirs, previous, atol=1e-4)
        previous = theirs


def test_export_files_and_config(tmp_path):
    model = adapted("mhr", "gpt2")
    export_peft_lora(model, tmp_path, task=1, base_model_name_or_path="tiny/gpt2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    rank = adapter_config(model).lora_rank
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", rank, rank)
    assert config["fan_in_fan_out"] is True
    assert config["base_model_name_or_path"] == "tiny/gpt2"
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert len(tensors) == 2 * len(adapted_layers(model))
    for name, layer in adapted_layers(model).items():
        down, up = task_lora_matrices(layer, 1)
        a = tensors[f"base_model.model.{name}.lora_A.weight"]
        b = tensors[f"base_model.model.{name}.lora_B.weight"]
        assert a.shape == (rank, layer.d_in) and b.shape == (layer.d_out, rank)
        torch.testing.assert_close(a, down.T)
        torch.testing.assert_close(b, up.T)
        # The exported pair is the task's dense update: A B (scaling folded into B).
        torch.testing.assert_close(down @ up, layer.delta_weight(1), atol=1e-6, rtol=1e-5)


def test_task_lora_matrices_use_eval_routing_in_train_mode():
    model = adapted("poly", "gpt2").train()
    layer = next(iter(adapted_layers(model).values()))
    first = task_lora_matrices(layer, 1)
    second = task_lora_matrices(layer, 1)
    assert all(torch.equal(a, b) for a, b in zip(first, second)), "no routing noise in an export"
    assert layer.combiner.training, "the layer's mode is restored"


def test_export_task_errors(tmp_path):
    model = adapted("poly", "gpt2")
    with pytest.raises(ValueError, match="out of range"):
        export_peft_lora(model, tmp_path, task=3)
    with pytest.raises(ValueError, match="task_ids are missing"):
        export_peft_lora(model, tmp_path, task=None)
    assert not (tmp_path / "adapter_model.safetensors").exists()


def test_unrouted_export_needs_no_task(tmp_path):
    model = adapted("tlora", "gpt2")
    export_peft_lora(model, tmp_path)
    loaded = peft.PeftModel.from_pretrained(tiny_model("gpt2"), tmp_path).eval()
    batch = tiny_batch(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, atol=1e-5, rtol=1e-5)


def test_export_of_a_custom_target_set(tmp_path):
    model = inject(tiny_model("llama"), AdapterConfig(method="poly", n_tasks=2, n_skills=2, lora_rank=3,
                                                       target_modules=r".*\.(v_proj|down_proj)"))
    perturb_adapters(model).eval()
    export_peft_lora(model, tmp_path, task=1)
    loaded = peft.PeftModel.from_pretrained(tiny_model("llama"), tmp_path).eval()
    batch = tiny_batch(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch, task_ids=1).logits, atol=1e-5, rtol=1e-5)
