"""Model surgery at model level: task ids, routing scopes, generate, merge / unmerge, and the
equalities between methods (one-skill Poly == LoRA, one-head MHR == Poly, order-1 TLoRA == LoRA)."""

import copy

import pytest
import torch

from tensoradapt import (
    AdapterConfig,
    adapted_layers,
    disable_adapters,
    inject,
    merge,
    unmerge,
    use_routing,
)
from tensoradapt.layers import is_conv1d
from tensoradapt.testing import (
    TINY_METHOD_CONFIGS,
    perturb_adapters,
    tiny_batch,
    tiny_method_config,
    tiny_model,
)

METHODS = tuple(TINY_METHOD_CONFIGS)
ROUTED = tuple(m for m in METHODS if AdapterConfig(method=m).is_routed)
MODELS = ("t5", "llama", "bert", "gpt2")
ATOL = 1e-5


def adapted(model_name: str, method: str, seed: int = 0, **overrides):
    """A tiny model with random adapters of ``method``, in eval mode."""
    model = inject(tiny_model(model_name), tiny_method_config(method, **overrides))
    return perturb_adapters(model, seed).eval()


def logits(model, batch, **kwargs):
    with torch.no_grad():
        return model(**batch, **kwargs).logits


def n_tasks(model):
    from tensoradapt import adapter_config

    return adapter_config(model).n_tasks


def token_routed(model) -> bool:
    return any(layer.combiner.token_routed for layer in adapted_layers(model).values())


# --- task ids -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ROUTED)
@pytest.mark.parametrize("model_name", MODELS)
def test_mixed_task_batch_equals_each_task_alone(model_name, method):
    # float64: the per-example and the one-task paths sum in different orders (fp32 rounding ~1e-5).
    model = adapted(model_name, method).double()
    batch = tiny_batch(model, batch=4)
    ids = torch.tensor([2, 0, 1, 2])
    mixed = logits(model, batch, task_ids=ids)
    per_task = {t: logits(model, batch, task_ids=t) for t in range(n_tasks(model))}
    for row, task in enumerate(ids.tolist()):
        torch.testing.assert_close(mixed[row], per_task[task][row], atol=1e-10, rtol=1e-10)
    # The tasks really route differently (otherwise the equality above proves nothing).
    assert not torch.allclose(per_task[0], per_task[1], atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_int_id_tensor_id_and_0d_tensor_agree(method):
    model = adapted("gpt2", method)
    batch = tiny_batch(model, batch=3)
    task = 1 if n_tasks(model) > 1 else 0
    reference = logits(model, batch, task_ids=task)
    torch.testing.assert_close(logits(model, batch, task_ids=torch.tensor(task)), reference, atol=ATOL, rtol=0)
    torch.testing.assert_close(logits(model, batch, task_ids=torch.full((3,), task)), reference, atol=ATOL, rtol=0)
    torch.testing.assert_close(
        logits(model, batch, task_ids=torch.full((3,), task, dtype=torch.int32)), reference, atol=ATOL, rtol=0
    )


@pytest.mark.parametrize(
    ("task_ids", "message"),
    [
        (3, "out of range"),
        (-1, "out of range"),
        (torch.tensor([0, 3]), "out of range"),
        (torch.tensor([-1, 0]), "out of range"),
        (torch.tensor(5), "out of range"),
        (torch.tensor([0.0, 1.0]), "must hold integers"),
        (torch.tensor([True, False]), "must hold integers"),
        (torch.zeros(2, 1, dtype=torch.long), "0-d or \\(batch,\\)"),
        (1.0, "must be an int"),
        (True, "must be an int"),
        ([0, 1], "must be an int"),
    ],
    ids=lambda value: repr(value) if not isinstance(value, str) else None,
)
def test_bad_task_ids_raise_clear_value_errors(task_ids, message):
    model = adapted("t5", "poly")
    with pytest.raises(ValueError, match=message):
        model(**tiny_batch(model, batch=2), task_ids=task_ids)


@pytest.mark.parametrize("method", ROUTED)
def test_missing_task_ids_with_several_tasks_raises(method):
    model = adapted("llama", method)
    with pytest.raises(ValueError, match="task_ids are missing"):
        model(**tiny_batch(model))


@pytest.mark.parametrize("method", ROUTED)
def test_missing_task_ids_with_one_task_uses_task_zero(method):
    model = adapted("llama", method, n_tasks=1)
    batch = tiny_batch(model)
    torch.testing.assert_close(logits(model, batch), logits(model, batch, task_ids=0), atol=0, rtol=0)


def test_ids_of_wrong_batch_size_raise():
    model = adapted("gpt2", "poly")
    with pytest.raises(ValueError, match="task_ids has 3 rows but the layer sees a batch of 4"):
        model(**tiny_batch(model, batch=4), task_ids=torch.tensor([0, 1, 2]))


def test_cpu_task_ids_on_a_cpu_model_are_fine():
    model = adapted("gpt2", "mhr")
    ids = torch.tensor([0, 2], device="cpu")
    out = logits(model, tiny_batch(model, batch=2), task_ids=ids)
    assert out.shape[0] == 2 and torch.isfinite(out).all()


# --- routing scopes ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ROUTED)
def test_use_routing_routes_every_call_in_the_block(method):
    model = adapted("t5", method)
    batch = tiny_batch(model, batch=2)
    ids = torch.tensor([2, 1])
    with use_routing(model, task_ids=1) as same:
        assert same is model
        torch.testing.assert_close(logits(model, batch), logits(model, batch, task_ids=1), atol=0, rtol=0)
        # An explicit task_ids overrides the block for that call only.
        torch.testing.assert_close(
            logits(model, batch, task_ids=ids), logits(copy.deepcopy(model), batch, task_ids=ids), atol=ATOL, rtol=0
        )
        with use_routing(model, task_ids=ids):
            inner = logits(model, batch)
        torch.testing.assert_close(logits(model, batch), logits(model, batch, task_ids=1), atol=0, rtol=0)
    torch.testing.assert_close(inner, logits(model, batch, task_ids=ids), atol=0, rtol=0)
    with pytest.raises(ValueError, match="task_ids are missing"):
        model(**batch)


def test_use_routing_validates_and_unwinds_on_errors():
    model = adapted("gpt2", "poly")
    batch = tiny_batch(model, batch=2)
    with pytest.raises(ValueError, match="out of range"):
        with use_routing(model, task_ids=7):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with use_routing(model, task_ids=1):
            raise RuntimeError("boom")
    with pytest.raises(ValueError, match="task_ids are missing"):
        model(**batch)


def test_a_failed_call_inside_use_routing_keeps_the_block_routing():
    model = adapted("gpt2", "poly")
    batch = tiny_batch(model, batch=2)
    expected = logits(model, batch, task_ids=2)
    with use_routing(model, task_ids=2):
        with pytest.raises(ValueError, match="out of range"):
            model(**batch, task_ids=9)
        torch.testing.assert_close(logits(model, batch), expected, atol=0, rtol=0)


def test_a_failed_forward_does_not_leak_its_task_ids():
    model = adapted("gpt2", "poly")
    with pytest.raises(Exception):
        model(input_ids=torch.full((1, 100), 5), task_ids=1)  # longer than n_positions
    with pytest.raises(ValueError, match="task_ids are missing"):
        model(**tiny_batch(model))


# --- generate ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ROUTED)
@pytest.mark.parametrize("model_name", ["t5", "llama"])
def test_beam_search_with_per_example_ids_equals_each_example_alone(model_name, method):
    model = adapted(model_name, method)
    batch = {"input_ids": tiny_batch(model, batch=3, length=4, seed=1)["input_ids"]}
    ids = torch.tensor([2, 0, 1])
    settings = dict(num_beams=3, max_new_tokens=5, min_new_tokens=5, do_sample=False, early_stopping=False,
                    pad_token_id=model.config.pad_token_id, return_dict_in_generate=True, output_scores=True)
    together = model.generate(**batch, task_ids=ids, **settings)
    for row in range(3):
        alone = model.generate(input_ids=batch["input_ids"][row : row + 1], task_ids=int(ids[row]), **settings)
        length = alone.sequences.shape[1]
        assert torch.equal(together.sequences[row, :length], alone.sequences[0]), f"example {row}"
        torch.testing.assert_close(together.sequences_scores[row], alone.sequences_scores[0], atol=ATOL, rtol=1e-5)
    # Routing matters here: other tasks' ids give other beam scores.
    others = model.generate(**batch, task_ids=(ids + 1) % 3, **settings)
    assert not torch.allclose(others.sequences_scores, together.sequences_scores, atol=1e-3)


def test_generate_inside_use_routing_equals_generate_with_ids():
    model = adapted("t5", "mhr")
    input_ids = tiny_batch(model, batch=2, length=4)["input_ids"]
    settings = dict(num_beams=2, max_new_tokens=4, do_sample=False)
    with use_routing(model, task_ids=torch.tensor([1, 2])):
        scoped = model.generate(input_ids=input_ids, **settings)
    assert torch.equal(scoped, model.generate(input_ids=input_ids, task_ids=torch.tensor([1, 2]), **settings))


def test_generate_rejects_bad_ids_before_decoding():
    model = adapted("llama", "poly")
    with pytest.raises(ValueError, match="out of range"):
        model.generate(input_ids=tiny_batch(model, batch=1)["input_ids"], task_ids=5, max_new_tokens=2)


@pytest.mark.parametrize("clone", ["deepcopy", "pickle"])
def test_generate_of_a_copied_model_runs_the_copy(clone):
    import pickle

    model = adapted("t5", "poly")
    copied = copy.deepcopy(model) if clone == "deepcopy" else pickle.loads(pickle.dumps(model))
    with torch.no_grad():
        for layer in adapted_layers(copied).values():
            layer.bank.up.mul_(-3.0)  # the copy now computes something else
    input_ids = tiny_batch(model, batch=2, length=4)["input_ids"]
    settings = dict(num_beams=2, max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_scores=True)
    with use_routing(copied, task_ids=1):
        expected = type(copied).generate(copied, input_ids=input_ids, **settings).sequences_scores
    original = model.generate(input_ids=input_ids, task_ids=1, **settings).sequences_scores
    assert not torch.allclose(expected, original, atol=1e-4)
    got = copied.generate(input_ids=input_ids, task_ids=1, **settings).sequences_scores
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


# --- merge / unmerge ---------------------------------------------------------------------------


def _task(model) -> int:
    return 1 if n_tasks(model) > 1 else 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model_name", MODELS)
def test_merge_equals_unmerged_and_unmerge_restores_bit_for_bit(model_name, method):
    # float64: merged and unmerged differ only by rounding, so the tolerance can be tight.
    model = adapted(model_name, method).double()
    if token_routed(model):
        pytest.skip("token-routed adapters do not merge")
    batch = tiny_batch(model, batch=2)
    task = _task(model)
    base_weights = {name: layer.base.weight.detach().clone() for name, layer in adapted_layers(model).items()}
    unmerged = logits(model, batch, task_ids=task)
    with disable_adapters(model):
        base = logits(model, batch)
    assert not torch.allclose(unmerged, base, atol=1e-4), "the adapters must change the output"

    merge(model, task)
    assert all(layer.merged for layer in adapted_layers(model).values())
    assert any(not torch.equal(layer.base.weight, base_weights[n]) for n, layer in adapted_layers(model).items())
    torch.testing.assert_close(logits(model, batch, task_ids=task), unmerged, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(logits(model, batch), unmerged, atol=1e-10, rtol=1e-10)

    unmerge(model)
    for name, layer in adapted_layers(model).items():
        assert not layer.merged
        assert torch.equal(layer.base.weight, base_weights[name]), name
    torch.testing.assert_close(logits(model, batch, task_ids=task), unmerged, atol=0, rtol=0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model_name", ["t5", "gpt2"])
def test_merged_forward_equals_base_model_with_updated_weights(model_name, method):
    model = adapted(model_name, method)
    if token_routed(model):
        pytest.skip("token-routed adapters do not merge")
    task = _task(model)
    reference = tiny_model(model_name)
    with torch.no_grad():
        for name, layer in adapted_layers(model).items():
            # The dense update through the forward path: delta(I) = scaling * A_t B_t, (d_in, d_out).
            layer.combiner.eval()
            update = layer.delta(torch.eye(layer.d_in, dtype=layer.weight.dtype).unsqueeze(0), task)[0]
            target = reference.get_submodule(name)
            target.weight.add_(update if is_conv1d(target) else update.T)
    merge(model, task)
    batch = tiny_batch(model, batch=2)
    torch.testing.assert_close(logits(model, batch), logits(reference, batch), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("method", ROUTED)
def test_merge_in_train_mode_uses_eval_routing(method):
    model = adapted("gpt2", method)
    batch = tiny_batch(model, batch=2)
    expected = logits(model, batch, task_ids=2)
    model.train()
    merge(model, 2)
    model.eval()
    torch.testing.assert_close(logits(model, batch), expected, atol=ATOL, rtol=1e-5)


def test_merge_errors():
    model = adapted("gpt2", "poly")
    with pytest.raises(ValueError, match="task_ids are missing"):
        merge(model)
    with pytest.raises(ValueError, match="out of range"):
        merge(model, 3)
    with pytest.raises(ValueError, match="one task id"):
        merge(model, torch.tensor([0, 1]))
    merge(model, 0)
    with pytest.raises(RuntimeError, match="already merged"):
        merge(model, 1)
    unmerge(model)
    unmerge(model)  # nothing merged: a no-op


def test_merged_model_refuses_other_tasks():
    model = adapted("gpt2", "mhr")
    batch = tiny_batch(model, batch=2)
    expected = logits(model, batch, task_ids=1)
    merge(model, torch.tensor(1))
    torch.testing.assert_close(logits(model, batch, task_ids=1), expected, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(logits(model, batch, task_ids=torch.tensor([1, 1])), expected, atol=ATOL, rtol=1e-5)
    for other in (2, torch.tensor([1, 2])):
        with pytest.raises(ValueError, match="merged for task 1.*unmerge"):
            model(**batch, task_ids=other)
    with pytest.raises(ValueError, match="merged for task 1"):
        with use_routing(model, task_ids=0):
            pass
    unmerge(model)
    model(**batch, task_ids=2)


def test_merge_refuses_weights_tied_to_another_module():
    model = adapted("gpt2", "poly", target_modules=r".*(attn\.c_attn|lm_head)")
    assert model.lm_head.weight is model.transformer.wte.weight
    embeddings = model.transformer.wte.weight.detach().clone()
    with pytest.raises(ValueError, match="cannot merge lm_head: its weight is tied to \\['transformer.wte.weight'\\]"):
        merge(model, 1)
    assert torch.equal(model.transformer.wte.weight, embeddings)
    assert not any(layer.merged for layer in adapted_layers(model).values()), "all layers or none"


def test_untied_lm_head_merges():
    model = inject(tiny_model("llama"), tiny_method_config("poly", target_modules=r"lm_head|.*\.down_proj"))
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    perturb_adapters(model).eval()
    batch = tiny_batch(model, batch=2)
    expected = logits(model, batch, task_ids=2)
    merge(model, 2)
    torch.testing.assert_close(logits(model, batch), expected, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("model_name", ["t5", "gpt2"])
def test_disable_adapters_on_a_merged_model_gives_the_base_model(model_name):
    model = adapted(model_name, "tensorpoly_i")
    batch = tiny_batch(model, batch=2)
    base = logits(tiny_model(model_name), batch)
    merge(model, 1)
    merged_weights = {n: layer.base.weight.detach().clone() for n, layer in adapted_layers(model).items()}
    merged = logits(model, batch)
    with disable_adapters(model):
        torch.testing.assert_close(logits(model, batch), base, atol=0, rtol=0)
    assert all(layer.merged_task == 1 for layer in adapted_layers(model).values())
    assert all(torch.equal(layer.base.weight, merged_weights[n]) for n, layer in adapted_layers(model).items())
    torch.testing.assert_close(logits(model, batch), merged, atol=0, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_disable_adapters_gives_the_base_model(method):
    model = adapted("t5", method)
    batch = tiny_batch(model, batch=2)
    base = logits(tiny_model("t5"), batch)
    with disable_adapters(model):
        torch.testing.assert_close(logits(model, batch, task_ids=0), base, atol=0, rtol=0)
    assert not torch.allclose(logits(model, batch, task_ids=0), base, atol=1e-4)


@pytest.mark.parametrize("method", ["lora", "poly", "mhr"])
def test_fresh_lora_style_adapters_leave_the_output_unchanged(method):
    model = tiny_model("llama")
    batch = tiny_batch(model)
    base = logits(model, batch)
    inject(model, tiny_method_config(method))
    torch.testing.assert_close(logits(model, batch, task_ids=0), base, atol=0, rtol=0)


# --- equalities between methods ----------------------------------------------------------------


def _copy_parameters(source, target, convert):
    """Copy every adapted layer's parameters from ``source`` into ``target`` via ``convert(src_layer, dst_layer)``."""
    with torch.no_grad():
        for (name, src), (other, dst) in zip(adapted_layers(source).items(), adapted_layers(target).items()):
            assert name == other
            convert(src, dst)


@pytest.mark.parametrize("model_name", ["t5", "gpt2"])
def test_one_skill_poly_equals_plain_lora(model_name):
    # An exact identity: compared in float64, where no BLAS kernel's fp32 rounding can break it.
    lora = adapted(model_name, "lora", lora_rank=2).double()
    poly = inject(tiny_model(model_name), AdapterConfig(method="poly", lora_rank=2, n_skills=1, n_tasks=3))
    perturb_adapters(poly, seed=5).eval().double()  # random logits: any routing of one skill has weight 1

    def convert(src, dst):
        dst.bank.down.copy_(src.bank.down)
        dst.bank.up.copy_(src.bank.up)

    _copy_parameters(lora, poly, convert)
    batch = tiny_batch(lora, batch=3)
    expected = logits(lora, batch)
    # One skill's weight is s / (s + 1e-12), not 1: the identity holds to ~1e-10 on logits of O(1).
    for task in range(3):
        torch.testing.assert_close(logits(poly, batch, task_ids=task), expected, atol=1e-8, rtol=1e-8)
    mixed = logits(poly, batch, task_ids=torch.tensor([2, 0, 1]))
    torch.testing.assert_close(mixed, expected, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("model_name", ["t5", "gpt2"])
def test_one_head_mhr_equals_poly(model_name):
    poly = adapted(model_name, "poly")
    mhr = inject(tiny_model(model_name), tiny_method_config("mhr", n_heads=1)).eval()

    def convert(src, dst):
        dst.bank.down.copy_(src.bank.down)
        dst.bank.up.copy_(src.bank.up)
        dst.combiner.logits.copy_(src.combiner.logits.unsqueeze(1))  # (T, S) -> (T, 1, S)

    _copy_parameters(poly, mhr, convert)
    batch = tiny_batch(poly, batch=3)
    ids = torch.tensor([1, 2, 0])
    for task_ids in (0, 2, ids):
        torch.testing.assert_close(logits(mhr, batch, task_ids=task_ids), logits(poly, batch, task_ids=task_ids),
                                   atol=ATOL, rtol=1e-5)
    # Training-mode routing (Gumbel-sigmoid) draws the same noise with the same seed.
    poly.train()
    mhr.train()
    torch.manual_seed(11)
    noisy_poly = poly(**batch, task_ids=ids).logits
    torch.manual_seed(11)
    noisy_mhr = mhr(**batch, task_ids=ids).logits
    torch.testing.assert_close(noisy_mhr, noisy_poly, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("tensor_rank", [1, 2])
@pytest.mark.parametrize("model_name", ["t5", "gpt2"])
def test_order_one_tlora_equals_lora(model_name, tensor_rank):
    lora = adapted(model_name, "lora", lora_rank=2).double()  # an exact identity: float64
    tlora = inject(tiny_model(model_name), AdapterConfig(method="tlora", lora_rank=2, tensor_rank=tensor_rank, order=1))
    tlora.eval().double()
    shares = torch.linspace(1.0, 2.0, tensor_rank, dtype=torch.float64)
    shares = shares / shares.sum()  # the R order-1 simple tensors sum to LoRA's column / row

    def convert(src, dst):
        down, up = src.bank.down[0], src.bank.up[0]  # A (d_in, r), B (r, d_out)
        assert dst.bank.down.leaves.shape == (2, tensor_rank, 1, down.shape[0])
        # the stored leaves are the factors over the constant leaf_scale (1 at R = 1)
        dst.bank.down.leaves.copy_(down.T[:, None, None, :] * shares[None, :, None, None] / dst.bank.down.leaf_scale)
        dst.bank.up.leaves.copy_(up[:, None, None, :] * shares[None, :, None, None] / dst.bank.up.leaf_scale)

    _copy_parameters(lora, tlora, convert)
    batch = tiny_batch(lora, batch=3)
    torch.testing.assert_close(logits(tlora, batch), logits(lora, batch), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("method", ["tensorpoly_i", "tensorpoly_ii"])
def test_one_expert_tensorpoly_equals_tlora(method):
    tlora = adapted("gpt2", "tlora", tensor_rank=1)
    routed = inject(tiny_model("gpt2"), tiny_method_config(method, tensor_rank=1))
    perturb_adapters(routed, seed=3).eval()  # random logits: one expert always has weight 1

    def convert(src, dst):
        dst.bank.down.leaves.copy_(src.bank.down.leaves)
        dst.bank.up.leaves.copy_(src.bank.up.leaves)

    _copy_parameters(tlora, routed, convert)
    batch = tiny_batch(tlora, batch=3)
    for task_ids in (0, 2, torch.tensor([2, 1, 0])):
        torch.testing.assert_close(logits(routed, batch, task_ids=task_ids), logits(tlora, batch), atol=ATOL, rtol=1e-5)
