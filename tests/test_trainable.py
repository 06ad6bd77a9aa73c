"""Training modes (the paper's Table 4: full, routing only "z", modules only "mu"), their gradients,
few-shot routing resets, and parameter counts."""

import pytest
import torch

from tensoradapt import (
    AdapterConfig,
    adapted_layers,
    adapter_config,
    adapter_state_dict,
    add_task,
    count_parameters,
    inject,
    parameter_groups,
    reset_routing,
    set_training_mode,
    trainable_parameters,
)
from tensoradapt.testing import TINY_METHOD_CONFIGS, perturb_adapters, tiny_batch, tiny_method_config, tiny_model

METHODS = tuple(TINY_METHOD_CONFIGS)
#: Methods with task-routing logits (reset_routing / add_task / averaged "mu" mode apply).
ROUTED = tuple(m for m in METHODS if AdapterConfig(method=m).is_routed)
#: Methods with any routing parameter at all (what routing_only trains), read off a built model.
HAS_ROUTING = {
    m: bool(parameter_groups(inject(tiny_model("gpt2"), tiny_method_config(m)))["routing"]) for m in METHODS
}
UNROUTED = tuple(m for m in METHODS if not HAS_ROUTING[m])
MODES = ("full", "routing_only", "modules_only")


def adapted(method, model_name="gpt2", **overrides):
    model = inject(tiny_model(model_name), tiny_method_config(method, **overrides))
    return perturb_adapters(model)


def roles(model) -> dict[str, set[str]]:
    """Adapter parameter names by role, read off the modules (not via parameter_groups)."""
    names = {"routing": set(), "modules": set()}
    for layer_name, layer in adapted_layers(model).items():
        names["routing"] |= {f"{layer_name}.combiner.{n}" for n, _ in layer.combiner.named_parameters()}
        names["modules"] |= {f"{layer_name}.bank.{n}" for n, _ in layer.bank.named_parameters()}
    return names


def expected_trainable(model, mode) -> set[str]:
    role = roles(model)
    return {"full": role["routing"] | role["modules"], "routing_only": role["routing"],
            "modules_only": role["modules"]}[mode]


def requires_grad(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _valid(method, mode) -> bool:
    return not (mode == "routing_only" and method in UNROUTED)


CASES = [(method, mode) for method in METHODS for mode in MODES if _valid(method, mode)]


@pytest.mark.parametrize(("method", "mode"), CASES)
def test_training_mode_sets_exactly_the_trainable_parameters(method, mode):
    model = adapted(method)
    returned = set_training_mode(model, mode)
    expected = expected_trainable(model, mode)
    assert expected, "every mode trains something"
    assert requires_grad(model) == expected
    by_id = {id(p): n for n, p in model.named_parameters()}
    assert {by_id[id(p)] for p in returned} == expected
    assert {by_id[id(p)] for p in trainable_parameters(model)} == expected
    assert adapter_config(model).mode == mode


@pytest.mark.parametrize("model_name", ["t5", "gpt2"])
@pytest.mark.parametrize(("method", "mode"), CASES)
def test_one_backward_gives_grads_to_exactly_the_trainable_parameters(model_name, method, mode):
    model = adapted(method, model_name)
    set_training_mode(model, mode)
    model.train()
    batch = tiny_batch(model, batch=3)
    ids = torch.tensor([0, 2, 1]) if adapter_config(model).n_tasks > 1 else None
    kwargs = {"task_ids": ids} if ids is not None else {}
    if method == "trex":  # the prior's projection and gate get gradient only when a prior is routed
        kwargs["semantic_prior"] = torch.rand(3, adapter_config(model).trex_n_clusters)
    torch.manual_seed(0)
    model(**batch, **kwargs).logits.square().mean().backward()
    expected = expected_trainable(model, mode)
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == expected
    for name in expected:
        grad = model.get_parameter(name).grad
        assert torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, f"{name} got an all-zero gradient"


@pytest.mark.parametrize("method", UNROUTED)
def test_routing_only_without_routing_raises(method):
    model = adapted(method)
    with pytest.raises(ValueError, match="no routing parameters"):
        set_training_mode(model, "routing_only")


def test_unknown_mode_raises_naming_mode():
    with pytest.raises(ValueError, match="mode='mu' is unknown"):
        set_training_mode(adapted("poly"), "mu")


@pytest.mark.parametrize("method", ROUTED)
def test_modules_only_averages_the_experts_and_ignores_the_logits(method):
    model = adapted(method).eval()
    batch = tiny_batch(model, batch=2)
    routed = model(**batch, task_ids=0).logits
    set_training_mode(model, "modules_only")
    averaged = model(**batch, task_ids=0).logits
    assert not torch.allclose(averaged, routed, atol=1e-4), "averaging must drop the (non-uniform) routing"
    for task in (1, 2):
        torch.testing.assert_close(model(**batch, task_ids=task).logits, averaged, atol=0, rtol=0)
    perturb_adapters(model, seed=9)
    with torch.no_grad():  # same experts, other logits
        for layer, fresh in zip(adapted_layers(model).values(), adapted_layers(adapted(method)).values()):
            layer.bank.load_state_dict(fresh.bank.state_dict())
    torch.testing.assert_close(model(**batch, task_ids=0).logits, averaged, atol=0, rtol=0)
    # Back to full: routing is used again.
    set_training_mode(model, "full")
    assert not torch.allclose(model(**batch, task_ids=0).logits, averaged, atol=1e-4)


@pytest.mark.parametrize("method", ROUTED)
def test_modules_only_weights_are_the_uniform_routing(method):
    """1 / S for Poly / MHR (sum-normalised), 1 for TensorPoly-I / -II (mean-normalised by default)."""
    model = adapted(method)
    set_training_mode(model, "modules_only")
    for layer in adapted_layers(model).values():
        weights = layer.combiner.weights(1)
        assert weights.shape == layer.combiner.logits.shape[1:]
        uniform = 1.0 if method in ("tensorpoly_i", "tensorpoly_ii") else 1 / weights.shape[-1]
        torch.testing.assert_close(weights, torch.full_like(weights, uniform))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ROUTED)
def test_reset_routing_gives_fresh_rows_and_keeps_the_mode(method, mode):
    model = adapted(method)
    set_training_mode(model, mode)
    before = {n: layer.combiner.logits.shape for n, layer in adapted_layers(model).items()}
    reset_routing(model, n_tasks=1)
    assert adapter_config(model).n_tasks == 1
    for name, layer in adapted_layers(model).items():
        logits = layer.combiner.logits
        assert logits.shape == (1, *before[name][1:])
        init = adapter_config(model).routing_init_range
        assert logits.abs().max() <= init and logits.abs().max() > 0
    assert requires_grad(model) == expected_trainable(model, mode)
    batch = tiny_batch(model, batch=2)
    model(**batch)  # one task: ids may be omitted
    with pytest.raises(ValueError, match="out of range"):
        model(**batch, task_ids=1)
    reset_routing(model, n_tasks=4)
    assert all(layer.combiner.logits.shape[0] == 4 for layer in adapted_layers(model).values())
    assert requires_grad(model) == expected_trainable(model, mode)


@pytest.mark.parametrize("init", ["uniform", "mean"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ROUTED)
def test_add_task_appends_one_row_and_keeps_the_mode(method, mode, init):
    model = adapted(method).eval()
    set_training_mode(model, mode)
    old = {n: layer.combiner.logits.detach().clone() for n, layer in adapted_layers(model).items()}
    batch = tiny_batch(model, batch=2)
    outputs = [model(**batch, task_ids=t).logits for t in range(3)]
    assert add_task(model, init=init) == 3
    assert adapter_config(model).n_tasks == 4
    for name, layer in adapted_layers(model).items():
        logits = layer.combiner.logits
        assert logits.shape == (4, *old[name].shape[1:])
        assert torch.equal(logits[:3], old[name]), "old rows are kept"
        if init == "mean":
            torch.testing.assert_close(logits[3], old[name].mean(0))
    assert requires_grad(model) == expected_trainable(model, mode)
    for task in range(3):
        torch.testing.assert_close(model(**batch, task_ids=task).logits, outputs[task], atol=0, rtol=0)
    model(**batch, task_ids=3)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ROUTED])
def test_reset_and_add_task_without_task_routing_raise(method):
    model = adapted(method)
    with pytest.raises(ValueError, match="no task routing"):
        reset_routing(model)
    with pytest.raises(ValueError, match="no task routing"):
        add_task(model)


def test_add_task_rejects_unknown_init():
    with pytest.raises(ValueError, match="init must be"):
        add_task(adapted("poly"), init="zeros")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model_name", ["t5", "gpt2"])
def test_parameter_groups_split_the_adapter_by_role(model_name, method):
    model = adapted(method, model_name)
    groups = parameter_groups(model)
    by_id = {id(p): n for n, p in model.named_parameters()}
    names = {role: {by_id[id(p)] for p in params} for role, params in groups.items()}
    assert names == roles(model)
    assert len(names["routing"]) == len(groups["routing"]) and len(names["modules"]) == len(groups["modules"])
    assert bool(names["routing"]) == HAS_ROUTING[method]
    assert HAS_ROUTING[method] or method not in ROUTED


#: Methods whose parameter count the formulas below know (a new method adds its formula here).
FORMULAS = ("lora", "tlora", "poly", "mhr", "tensorpoly_i", "tensorpoly_ii")


def _expected_counts(layer, method) -> tuple[int, int]:
    """Independent count of one layer's (routing, modules) parameters from the paper's formulas."""
    from tensoradapt.algebra import leaf_size

    config = tiny_method_config(method)
    r, d_in, d_out = config.lora_rank, layer.d_in, layer.d_out
    if method in ("lora", "poly", "mhr"):
        skills = 1 if method == "lora" else config.n_skills
        modules = skills * r * (d_in + d_out)
    else:  # r * R * N * (q(d_in, N) + q(d_out, N))
        n = config.order
        modules = r * config.tensor_rank * n * (leaf_size(d_in, n) + leaf_size(d_out, n))
    routing = {
        "lora": 0,
        "tlora": 0,
        "poly": config.n_tasks * config.n_skills,
        "mhr": config.n_tasks * config.n_heads * config.n_skills,
        "tensorpoly_i": config.n_tasks * config.tensor_rank,
        "tensorpoly_ii": config.n_tasks * config.order * config.tensor_rank,
    }[method]
    return routing, modules


@pytest.mark.parametrize(("method", "mode"), CASES)
@pytest.mark.parametrize("model_name", ["t5", "llama", "bert", "gpt2"])
def test_count_parameters_adds_up(model_name, method, mode):
    base_total = sum(p.numel() for p in tiny_model(model_name).parameters())
    model = adapted(method, model_name)
    set_training_mode(model, mode)
    counts = count_parameters(model)
    assert counts["method"] == method
    assert counts["adapter"] == counts["routing"] + counts["modules"]
    assert sum(counts["by_module"].values()) == counts["adapter"]
    assert sum(v["routing"] + v["modules"] for v in counts["by_layer"].values()) == counts["adapter"]
    assert counts["adapter"] == sum(t.numel() for t in adapter_state_dict(model).values())
    assert counts["total"] == base_total + counts["adapter"]
    trainable = {"full": counts["adapter"], "routing_only": counts["routing"], "modules_only": counts["modules"]}
    assert counts["trainable"] == trainable[mode]


@pytest.mark.parametrize("method", [m for m in METHODS if m in FORMULAS])
@pytest.mark.parametrize("model_name", ["t5", "llama", "bert", "gpt2"])
def test_count_parameters_match_the_formulas(model_name, method):
    model = adapted(method, model_name)
    counts = count_parameters(model)
    totals = [0, 0]
    for name, layer in adapted_layers(model).items():
        routing, modules = _expected_counts(layer, method)
        assert counts["by_layer"][name] == {"routing": routing, "modules": modules}, name
        totals[0] += routing
        totals[1] += modules
    assert [counts["routing"], counts["modules"]] == totals


def test_count_parameters_by_module_on_t5():
    model = inject(tiny_model("t5"), AdapterConfig(lora_rank=2))
    by_module = count_parameters(model)["by_module"]
    # q/k/v/o: 16 -> 16 in 6 attention blocks; wi_*: 16 -> 32 and wo: 32 -> 16 in 4 FFNs.
    attention, wide = 2 * (16 + 16), 2 * (16 + 32)
    assert by_module == {"q": 6 * attention, "k": 6 * attention, "v": 6 * attention, "o": 6 * attention,
                         "wi_0": 4 * wide, "wi_1": 4 * wide, "wo": 4 * wide}
