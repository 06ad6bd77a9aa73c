"""The model lifecycle, one trap per test: ``save_pretrained`` / ``from_pretrained`` round trips
(T-REX's task prior, calibration and centroids included), ``model.save_pretrained`` refused,
``load_adapter`` into a merged model refused, checkpoint integrity (sha256, corrupt files named),
numpy task ids everywhere, ``print_trainable_parameters``, nested ``disable_adapters``, and
configs too large to materialise refused.

Exact claims (a round trip, numpy ids against ints) compare float64 logits bit for bit.
"""

import hashlib
import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import tensoradapt as ta
from tensoradapt import (
    AdapterConfig,
    adapted_layers,
    adapter_config,
    disable_adapters,
    export_peft_lora,
    inject,
    load_adapter,
    merge,
    save_adapter,
    task_lora_matrices,
    unmerge,
    use_routing,
)
from tensoradapt.checkpoint import WEIGHTS_NAME
from tensoradapt.config import CONFIG_NAME
from tensoradapt.testing import TINY_METHOD_CONFIGS, perturb_adapters, tiny_batch, tiny_method_config, tiny_model
from tensoradapt.trex import calibrate_routing, set_task_prior, token_routers

METHODS = tuple(TINY_METHOD_CONFIGS)
MERGEABLE = tuple(m for m in METHODS if m != "trex")  # T-REX routes per token: it never merges


def adapted(method: str, model_name: str = "t5", seed: int = 0, **overrides) -> nn.Module:
    """A float64 tiny model with random adapters; T-REX also gets a task prior and a calibration."""
    model = inject(tiny_model(model_name), tiny_method_config(method, **overrides))
    perturb_adapters(model, seed).eval().double()
    if method == "trex":
        generator = torch.Generator().manual_seed(seed + 100)
        config = adapter_config(model)
        set_task_prior(model, torch.randn(config.n_tasks, config.trex_n_clusters, generator=generator).double())
        with calibrate_routing(model):
            model(**tiny_batch(model, batch=2, seed=9), task_ids=0)
    return model


def logits(model: nn.Module, batch: dict, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch, **kwargs).logits


def all_task_logits(model: nn.Module, batch: dict) -> list[torch.Tensor]:
    return [logits(model, batch, task_ids=task) for task in range(adapter_config(model).n_tasks)]


def a_task(model: nn.Module) -> int:
    return 1 if adapter_config(model).n_tasks > 1 else 0


# --- model.save_pretrained of an injected model ---------------------------------------------------


@pytest.mark.parametrize("model_name", ["t5", "gpt2"])
def test_hf_save_pretrained_of_an_injected_model_is_refused_naming_the_right_call(tmp_path, model_name):
    """Before: it wrote the adapted layers under ``<module>.base.weight`` keys, which
    ``from_pretrained`` does not know and silently re-initialises (36 tensors on the tiny T5)."""
    model = adapted("lora", model_name)
    with pytest.raises(ValueError, match=r"tensoradapt\.save_pretrained\(model, directory\)") as error:
        model.save_pretrained(tmp_path / "ckpt")
    assert "tensoradapt.from_pretrained" in str(error.value)
    assert not (tmp_path / "ckpt").exists(), "a refused save writes nothing"


# --- save_pretrained / from_pretrained ------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_save_pretrained_then_from_pretrained_gives_the_same_model(tmp_path, method):
    model = adapted(method)
    assert ta.save_pretrained(model, tmp_path) == tmp_path
    loaded = ta.from_pretrained(tiny_model("t5").double(), tmp_path)
    assert adapter_config(loaded) == adapter_config(model)
    batch = tiny_batch(model, batch=2)
    for got, want in zip(all_task_logits(loaded, batch), all_task_logits(model, batch)):
        assert torch.equal(got, want)
    # inference by default, as PEFT's is_trainable=False
    assert not any(parameter.requires_grad for parameter in loaded.parameters())
    assert not loaded.training
    for name, layer in adapted_layers(loaded).items():  # export reads the calibration (T-REX)
        for got, want in zip(task_lora_matrices(layer, 0), task_lora_matrices(adapted_layers(model)[name], 0)):
            assert torch.equal(got, want)


def test_trex_task_prior_and_calibration_survive_save_adapter_and_load_adapter(tmp_path):
    """Before: both are non-persistent buffers (kept out of ``state_dict``, which a fresh model
    without them could not load strictly), so no checkpoint held them and a loaded T-REX model
    routed without its task prior."""
    model = adapted("trex")
    save_adapter(model, tmp_path)
    fresh = inject(tiny_model("t5"), AdapterConfig.from_json(tmp_path)).eval().double()
    load_adapter(fresh, tmp_path)
    for name, router in token_routers(fresh).items():
        assert torch.equal(router.task_prior, token_routers(model)[name].task_prior)
        assert torch.equal(router.calibrated, token_routers(model)[name].calibrated)
    batch = tiny_batch(model, batch=2)
    for got, want in zip(all_task_logits(fresh, batch), all_task_logits(model, batch)):
        assert torch.equal(got, want)


def test_loading_a_checkpoint_without_a_task_prior_clears_the_models(tmp_path):
    """The model ends as the checkpoint was saved: no prior there, none after the load."""
    model = adapted("trex")
    save_adapter(inject(tiny_model("t5"), tiny_method_config("trex")).double(), tmp_path)
    load_adapter(model, tmp_path)
    assert all(router.task_prior is None and router.calibrated is None for router in token_routers(model).values())


def test_trex_centroids_round_trip_with_the_model(tmp_path):
    from tensoradapt.routing.semantic_prior import SemanticPrior

    model = adapted("trex")
    prior = SemanticPrior(centroids=torch.randn(4, 6), encoder_name=str(tmp_path / "some-encoder"), seed=3)
    ta.save_pretrained(model, tmp_path / "ckpt", semantic_prior=prior)
    manifest = json.loads((tmp_path / "ckpt" / CONFIG_NAME).read_text())["sha256"]
    assert set(manifest) == {WEIGHTS_NAME, "semantic_prior.safetensors", "semantic_prior.json"}
    loaded = ta.from_pretrained(tiny_model("t5").double(), tmp_path / "ckpt")
    restored = ta.trex.semantic_prior(loaded)
    assert torch.equal(restored.centroids, prior.centroids)
    assert (restored.encoder_name, restored.seed) == (prior.encoder_name, prior.seed)
    # saved again without naming it: the prior the model carries goes with it
    ta.save_pretrained(loaded, tmp_path / "again")
    assert torch.equal(ta.trex.semantic_prior(ta.from_pretrained(tiny_model("t5"), tmp_path / "again")).centroids,
                       prior.centroids)
    with pytest.raises(ValueError, match="trex_n_clusters"):
        ta.trex.set_semantic_prior(loaded, SemanticPrior(centroids=torch.randn(5, 6)))


@pytest.mark.parametrize("method", ["poly", "trex"])
def test_from_pretrained_is_trainable_trains_what_the_saved_mode_trains(tmp_path, method):
    model = adapted(method)
    ta.set_training_mode(model, "routing_only")
    ta.save_pretrained(model, tmp_path)
    loaded = ta.from_pretrained(tiny_model("t5"), tmp_path, is_trainable=True)
    expected = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert {name for name, parameter in loaded.named_parameters() if parameter.requires_grad} == expected


def test_a_failed_from_pretrained_leaves_the_base_model_untouched(tmp_path):
    ta.save_pretrained(adapted("lora", "gpt2"), tmp_path)
    base = tiny_model("t5")
    before = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    with pytest.raises(ValueError, match="is missing from checkpoint"):
        ta.from_pretrained(base, tmp_path)
    assert not adapted_layers(base)
    assert base.state_dict().keys() == before.keys()
    assert all(torch.equal(tensor, before[name]) for name, tensor in base.state_dict().items())
    ta.from_pretrained(base, _saved(adapted("lora", "t5"), tmp_path / "t5"))  # the model can still be injected


def _saved(model, directory):
    ta.save_pretrained(model, directory)
    return directory


def test_from_pretrained_into_an_injected_model_names_load_adapter(tmp_path):
    model = adapted("poly")
    ta.save_pretrained(model, tmp_path)
    with pytest.raises(ValueError, match=r"tensoradapt\.load_adapter\(model, directory\)"):
        ta.from_pretrained(model, tmp_path)


# --- print_trainable_parameters, disable_adapters ------------------------------------------------


def test_print_trainable_parameters_prints_peft_s_line(capsys):
    peft = pytest.importorskip("peft")
    targets = r".*(SelfAttention|EncDecAttention)\.(q|v)"
    ours = inject(tiny_model("t5"), AdapterConfig(method="lora", lora_rank=2, target_modules=targets))
    theirs = peft.get_peft_model(tiny_model("t5"), peft.LoraConfig(r=2, target_modules=targets))
    theirs.print_trainable_parameters()
    expected = capsys.readouterr().out
    assert ta.print_trainable_parameters(ours) is None
    assert capsys.readouterr().out == expected
    assert re.fullmatch(r"trainable params: [\d,]+ \|\| all params: [\d,]+ \|\| trainable%: \d+\.\d{4}\n", expected)


@pytest.mark.parametrize("method", METHODS)
def test_nested_disable_adapters_keeps_the_outer_block_disabled(method):
    """Before: the inner block's exit re-enabled every adapter inside the outer block."""
    model = adapted(method)
    batch = tiny_batch(model, batch=2)
    task = a_task(model)
    base = logits(tiny_model("t5").double(), batch)
    adapted_logits = logits(model, batch, task_ids=task)
    with disable_adapters(model) as same:
        assert same is model
        with disable_adapters(model):
            assert torch.equal(logits(model, batch, task_ids=task), base)
        assert torch.equal(logits(model, batch, task_ids=task), base)
    assert torch.equal(logits(model, batch, task_ids=task), adapted_logits)


def test_disable_adapters_on_a_merged_model_runs_any_task_ids():
    """While disabled the merged weights are out, so no task is merged: other ids must not raise."""
    model = adapted("poly")
    batch = tiny_batch(model, batch=2)
    merge(model, 1)
    with disable_adapters(model):
        assert torch.equal(logits(model, batch, task_ids=2), logits(tiny_model("t5").double(), batch))
    with pytest.raises(ValueError, match="merged for task 1"):
        model(**batch, task_ids=2)


# --- load_adapter into a merged model ------------------------------------------------------------


@pytest.mark.parametrize("method", MERGEABLE)
def test_load_adapter_into_a_merged_model_is_refused(tmp_path, method):
    """Before: the load replaced the adapters but the base weights kept the old task's delta, so
    the merged model answered with stale outputs (0.03 to 0.28 off on the tiny T5) and no error."""
    save_adapter(adapted(method, seed=1), tmp_path)
    model = adapted(method, seed=0)
    task = a_task(model)
    merge(model, task)
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"merged for task .*tensoradapt\.unmerge\(model\)"):
        load_adapter(model, tmp_path)
    assert all(torch.equal(tensor, weights[name]) for name, tensor in model.state_dict().items()), "untouched"
    # the documented way: unmerge, load, merge again
    unmerge(model)
    load_adapter(model, tmp_path)
    merge(model, task)
    batch = tiny_batch(model, batch=2)
    reference = adapted(method, seed=1)
    torch.testing.assert_close(logits(model, batch), logits(reference, batch, task_ids=task), atol=1e-10, rtol=1e-10)


# --- integrity ------------------------------------------------------------------------------------


def test_the_weights_sha256_is_recorded_in_the_config(tmp_path):
    save_adapter(adapted("tensorpoly_ii"), tmp_path)
    recorded = json.loads((tmp_path / CONFIG_NAME).read_text())["sha256"]
    assert recorded == {WEIGHTS_NAME: hashlib.sha256((tmp_path / WEIGHTS_NAME).read_bytes()).hexdigest()}
    assert AdapterConfig.from_json(tmp_path) == AdapterConfig.from_dict(
        {k: v for k, v in json.loads((tmp_path / CONFIG_NAME).read_text()).items() if k != "sha256"}
    )


@pytest.mark.parametrize("method", METHODS)
def test_overwritten_payload_bytes_are_refused(tmp_path, method):
    """Before: the file still parsed (header intact), so the changed weights loaded silently."""
    model = adapted(method)
    save_adapter(model, tmp_path)
    path = tmp_path / WEIGHTS_NAME
    data = bytearray(path.read_bytes())
    data[-8:] = bytes(8)  # the last tensor's last bytes
    path.write_bytes(bytes(data))
    load_file(path)  # still a well-formed safetensors file: only the hash can tell
    fresh = adapted(method, seed=1)
    before = {name: tensor.clone() for name, tensor in ta.adapter_state_dict(fresh).items()}
    with pytest.raises(ValueError) as error:
        load_adapter(fresh, tmp_path)
    assert str(path) in str(error.value) and "sha256" in str(error.value)
    assert isinstance(error.value, ta.CheckpointError) and error.value.path == path
    assert all(torch.equal(tensor, before[name]) for name, tensor in ta.adapter_state_dict(fresh).items())


@pytest.mark.parametrize(
    ("damage", "file", "message"),
    [
        (lambda text: text[: len(text) // 2], CONFIG_NAME, "not valid JSON"),
        (lambda text: "[1, 2]", CONFIG_NAME, "not a JSON object"),
        (lambda text: text.replace('"lora_rank"', '"lora_rnak"'), CONFIG_NAME, "lora_rnak"),
        (lambda text: text.replace('"lora_rank": 2', '"lora_rank": 0'), CONFIG_NAME, "lora_rank must be"),
        (lambda data: data[:20], WEIGHTS_NAME, "not a valid safetensors file"),
        (lambda data: b"\xff" * 8 + data[8:], WEIGHTS_NAME, "not a valid safetensors file"),
    ],
)
def test_a_corrupt_file_is_named_with_what_is_wrong(tmp_path, damage, file, message):
    model = adapted("poly")
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    path = tmp_path / file
    if file == CONFIG_NAME:
        path.write_text(damage(path.read_text()))
    else:
        path.write_bytes(damage(path.read_bytes()))
        # the header damage must be reported as such, not only as a hash mismatch
        config.pop("sha256")
        (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    for load in (lambda: load_adapter(adapted("poly", seed=1), tmp_path),
                 lambda: ta.from_pretrained(tiny_model("t5"), tmp_path)):
        with pytest.raises(ValueError) as error:
            load()
        assert str(path) in str(error.value) and message in str(error.value)
        assert isinstance(error.value, ta.CheckpointError)


def test_a_checkpoint_without_sha256_still_loads(tmp_path):
    """Checkpoints written before the hash existed load (unverified, with a warning in the log)."""
    model = adapted("mhr")
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    del config["sha256"]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    loaded = load_adapter(adapted("mhr", seed=1), tmp_path)
    batch = tiny_batch(model, batch=2)
    assert all(torch.equal(a, b) for a, b in zip(all_task_logits(loaded, batch), all_task_logits(model, batch)))


# --- numpy task ids --------------------------------------------------------------------------------


def _numpy_scalars(task: int) -> list:
    return [np.int64(task), np.int32(task), np.uint8(task), np.array(task), np.array(task, dtype=np.int16)]


@pytest.mark.parametrize("method", METHODS)
def test_numpy_task_ids_work_like_ints_and_long_tensors_in_forward(method):
    """Before: ``ValueError: task_ids must be an int or a LongTensor (batch,), got int64``."""
    model = adapted(method, "gpt2")
    batch = tiny_batch(model, batch=3)
    task = a_task(model)
    expected = logits(model, batch, task_ids=task)
    for ids in _numpy_scalars(task):
        assert torch.equal(logits(model, batch, task_ids=ids), expected), repr(ids)
        with use_routing(model, task_ids=ids):
            assert torch.equal(logits(model, batch), expected), repr(ids)
    per_example = np.array([task, 0, task])
    expected = logits(model, batch, task_ids=torch.tensor([task, 0, task]))
    assert torch.equal(logits(model, batch, task_ids=per_example), expected)
    assert torch.equal(logits(model, batch, task_ids=per_example[::-1][::-1]), expected)  # a view
    assert torch.equal(logits(model, batch, task_ids=per_example.astype(np.int32)), expected)


@pytest.mark.parametrize("method", METHODS)
def test_numpy_task_ids_work_in_generate(method):
    model = adapted(method, "t5")
    input_ids = tiny_batch(model, batch=2, length=4)["input_ids"]
    settings = dict(max_new_tokens=3, do_sample=False, num_beams=2)
    task = a_task(model)
    assert torch.equal(model.generate(input_ids=input_ids, task_ids=np.int64(task), **settings),
                       model.generate(input_ids=input_ids, task_ids=task, **settings))
    assert torch.equal(model.generate(input_ids=input_ids, task_ids=np.array([task, 0]), **settings),
                       model.generate(input_ids=input_ids, task_ids=torch.tensor([task, 0]), **settings))


@pytest.mark.parametrize("method", MERGEABLE)
def test_numpy_task_ids_work_in_merge(method):
    expected = adapted(method, "gpt2")
    task = a_task(expected)
    merge(expected, task)
    for ids in _numpy_scalars(task):
        model = adapted(method, "gpt2")
        merge(model, ids)
        assert all(torch.equal(layer.base.weight, adapted_layers(expected)[name].base.weight)
                   for name, layer in adapted_layers(model).items()), repr(ids)
        unmerge(model)
    with pytest.raises(ValueError, match="one task id"):
        merge(adapted(method, "gpt2"), np.array([0, 0]))


@pytest.mark.parametrize("method", METHODS)
def test_numpy_task_ids_work_in_export(tmp_path, method):
    model = adapted(method, "gpt2")
    task = a_task(model)
    export_peft_lora(model, tmp_path / "int", task=task)
    for index, ids in enumerate(_numpy_scalars(task)):
        export_peft_lora(model, tmp_path / str(index), task=ids)
        assert (tmp_path / str(index) / WEIGHTS_NAME).read_bytes() == (tmp_path / "int" / WEIGHTS_NAME).read_bytes()
    for name, layer in adapted_layers(model).items():
        for got, want in zip(task_lora_matrices(layer, np.int64(task)), task_lora_matrices(layer, task)):
            assert torch.equal(got, want), name


@pytest.mark.parametrize(
    ("task_ids", "message"),
    [
        (np.float64(1.0), "must be an int"),
        (np.array([0.0, 1.0]), "must hold integers"),
        (np.array([True, False]), "must hold integers"),
        (np.bool_(True), "must be an int"),
        (np.zeros((2, 1), dtype=np.int64), "0-d or \\(batch,\\)"),
        (np.int64(3), "out of range"),
        (np.array([0, -1]), "out of range"),
    ],
    ids=repr,
)
def test_bad_numpy_task_ids_raise_like_bad_tensors(task_ids, message):
    model = adapted("poly", "gpt2")
    with pytest.raises(ValueError, match=message):
        model(**tiny_batch(model, batch=2), task_ids=task_ids)


# --- configs too large to materialise --------------------------------------------------------------


def test_an_order_no_memory_can_hold_is_refused_by_the_config():
    """Before: ``AdapterConfig(order=40)`` was accepted and the first forward tried to allocate
    8.8 TB (``2 * 2**40`` float32 entries for one side of one layer of the tiny T5)."""
    with pytest.raises(ValueError, match=r"^order=40 materialises at least .* \(17\.6 TB, .*order <= 26") as error:
        AdapterConfig(method="tlora", lora_rank=2, order=40)
    assert "bytes" in str(error.value)
    AdapterConfig(method="lora", order=40)  # order is not read by LoRA
    AdapterConfig(method="tlora", lora_rank=2, order=26)  # the largest order the limit lets through


def test_a_layer_too_wide_for_its_order_is_refused_at_inject():
    """Dims are only known at inject: ``d_in = 2**18 + 1`` needs leaves of 3 at order 18, and
    ``3**18`` entries per column; the meta device keeps the test free."""
    model = nn.Sequential(nn.Linear(2**18 + 1, 2, device="meta"))
    config = AdapterConfig(method="tlora", lora_rank=2, order=18, target_modules="0")
    with pytest.raises(ValueError, match=r"^module '0' .*order=18 materialises .* \(3\.1 GB, .*order <= 17"):
        inject(model, config)
    assert isinstance(model[0], nn.Linear) and not adapted_layers(model), "nothing injected"


def test_t0_3b_sized_configs_pass_the_limit():
    from transformers import T5ForConditionalGeneration

    from tensoradapt.testing import t0_3b_config

    with torch.device("meta"):
        model = T5ForConditionalGeneration(t0_3b_config())
    inject(model, AdapterConfig(method="tensorpoly_ii", lora_rank=16, tensor_rank=16, order=4, n_tasks=36))
    assert len(adapted_layers(model)) == 24 * 7 + 24 * 11
