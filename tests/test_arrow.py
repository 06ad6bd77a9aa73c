"""Arrow at the model level (`tensoradapt.arrow`): against PEFT's own Arrow model on an imported
LoRA library, against a per-layer plain reference on every routed method, and the task-level row."""

from __future__ import annotations

import pytest
import torch

import tensoradapt as ta
from tensoradapt.arrow import arrow_routing, arrow_task_row, model_prototypes
from tensoradapt.routing.base import normalized_sigmoid_weights
from tensoradapt.testing import perturb_adapters, tiny_batch, tiny_method_config, tiny_model

peft = pytest.importorskip("peft")
from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.tuners.lora.arrow import create_arrow_model  # noqa: E402
from peft.tuners.lora.config import ArrowConfig  # noqa: E402


def make_lora(directory, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(tiny_model("llama"), LoraConfig(r=3, lora_alpha=6, init_lora_weights=False,
                                                               target_modules=["q_proj", "v_proj", "down_proj"]))
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_" in name:
                    parameter.normal_(0.0, 0.5)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("arrow_loras")
    return [make_lora(root / f"expert{i}", seed=i) for i in range(4)]


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_arrow_over_an_imported_library_matches_peft_arrow(library, top_k):
    ours = ta.from_lora_library(tiny_model("llama").double(), library).model.eval()
    theirs = create_arrow_model(tiny_model("llama").double(), [str(p) for p in library],
                                ArrowConfig(top_k=top_k, router_temperature=1.0, rng_seed=0),
                                autocast_adapter_dtype=False).double().eval()
    batch = tiny_batch(ours, batch=2)
    with torch.no_grad():
        theirs(**batch)  # PEFT builds its prototypes (power iteration) on the first call
    prototypes = model_prototypes(ours)
    arrow_layers = {name.removeprefix("base_model.model."): module.lora_arrow["arrow_router"]
                    for name, module in theirs.named_modules() if hasattr(module, "lora_arrow")}
    assert set(arrow_layers) == set(prototypes)
    for name, layer in arrow_layers.items():
        # the same directions as PEFT's power iteration (up to its sign and its convergence)
        cosines = (layer.prototypes.double() * prototypes[name]).sum(-1).abs()
        assert (cosines > 0.99).all(), (name, cosines)
        layer.prototypes = prototypes[name].to(layer.prototypes.dtype)  # then the routing math must agree exactly
    with torch.no_grad(), arrow_routing(ours, top_k=top_k):
        routed = ours(**batch).logits
    with torch.no_grad():
        expected = theirs(**batch).logits
        base = tiny_model("llama").double()(**batch).logits
    assert not torch.allclose(expected, base, atol=1e-3)
    torch.testing.assert_close(routed, expected, rtol=1e-10, atol=1e-10)


def reference_forward(model, batch, top_k, **routing):
    """The model with every adapted layer's output replaced by a plain Arrow: dense SVD prototypes,
    sorted top-k, ``base(x) + s sum_e w_e x A_e B_e`` over the bank's skills (``routing`` only
    feeds the task router, whose output the hook discards)."""
    handles = []
    for layer in ta.adapted_layers(model).values():
        down, up = (m.detach().double() for m in layer.bank.skill_matrices())
        prototypes = torch.stack([torch.linalg.svd(a @ b)[0][:, 0] for a, b in zip(down, up)])

        def hook(module, args, output, down=down, up=up, prototypes=prototypes):
            x = args[0].double()
            logits = (x @ prototypes.T).abs()
            k = prototypes.shape[0] if top_k is None else top_k
            values, index = logits.sort(dim=-1, descending=True, stable=True)
            weights = torch.zeros_like(logits).scatter(-1, index[..., :k], torch.softmax(values[..., :k], -1))
            delta = sum(weights[..., e : e + 1] * ((x @ down[e]) @ up[e]) for e in range(down.shape[0]))
            return module.base(args[0]) + module.scaling * delta

        handles.append(layer.register_forward_hook(hook))
    try:
        with torch.no_grad():
            return model(**batch, **routing).logits
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("method", ["poly", "mhr", "tensorpoly_i", "tensorpoly_ii", "tlora"])
@pytest.mark.parametrize("top_k", [None, 1])
def test_arrow_routes_every_method_as_the_plain_reference(method, top_k):
    model = perturb_adapters(ta.inject(tiny_model("t5").double(), tiny_method_config(method))).eval()
    batch = tiny_batch(model, batch=2)
    routing = {} if method == "tlora" else {"task_ids": 1}
    with torch.no_grad():
        before = model(**batch, **routing).logits
        with arrow_routing(model, top_k=top_k):
            routed = model(**batch).logits
        after = model(**batch, **routing).logits
    assert torch.equal(before, after), "the routers come back on exit"
    assert not torch.allclose(routed, before, atol=1e-4)
    torch.testing.assert_close(routed, reference_forward(model, batch, top_k, **routing), rtol=1e-9, atol=1e-9)


def test_a_token_along_one_prototype_goes_to_that_expert(library):
    model = ta.from_lora_library(tiny_model("llama").double(), library).model
    layer = ta.adapted_layers(model)["model.layers.0.self_attn.q_proj"]
    with arrow_routing(model, top_k=1):
        router = layer.combiner
        weights = router.weights(router.prototypes * 10)  # token e = 10 v_e
    assert torch.equal(weights.argmax(-1), torch.arange(4))


def test_arrow_generates():
    model = perturb_adapters(ta.inject(tiny_model("t5"), tiny_method_config("poly"))).eval()
    inputs = tiny_batch(model, batch=2)["input_ids"]
    with torch.no_grad(), arrow_routing(model, top_k=2):
        tokens = model.generate(input_ids=inputs, max_new_tokens=3, num_beams=2, do_sample=False)
    assert tokens.shape[0] == 2


def captured_mean_weights(model, batch, top_k):
    """Per layer, the Arrow weights averaged over the tokens it saw, captured by a hook of the test's own."""
    sums, counts, handles = {}, {}, []
    with arrow_routing(model, top_k=top_k):
        for name, layer in ta.adapted_layers(model).items():
            def hook(module, args, output, name=name):
                w = module.combiner.weights(args[0]).reshape(-1, module.combiner.n_experts).double()
                sums[name] = sums.get(name, 0) + w.sum(0)
                counts[name] = counts.get(name, 0) + w.shape[0]
            handles.append(layer.register_forward_hook(hook))
        with torch.no_grad():
            model(**batch)
        for handle in handles:
            handle.remove()
    return {name: sums[name] / counts[name] for name in sums}


def test_the_task_row_of_an_imported_library_is_the_mean_arrow_weights(library):
    model = ta.from_lora_library(tiny_model("llama").double(), library).model.eval()
    batch = tiny_batch(model, batch=3)
    expected = captured_mean_weights(model, batch, top_k=2)
    task = arrow_task_row(model, batch, top_k=2)
    assert task == 4 and ta.adapter_config(model).n_tasks == 5
    for name, layer in ta.adapted_layers(model).items():
        torch.testing.assert_close(layer.combiner.weights(task).double(), expected[name], rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        model(**batch, task_ids=task)  # the new task runs, one adapter per layer
        ta.merge(model, task=task)
        ta.unmerge(model)


@pytest.mark.parametrize("method", ["poly", "mhr", "tensorpoly_ii"])
def test_the_task_row_of_a_trained_router_normalises_to_the_mean_weights(method):
    model = perturb_adapters(ta.inject(tiny_model("t5").double(), tiny_method_config(method))).eval()
    batch = tiny_batch(model, batch=2)
    expected = captured_mean_weights(model, batch, top_k=None)
    task = arrow_task_row(model, batch, task=0)
    assert task == 0 and ta.adapter_config(model).n_tasks == 3
    for name, layer in ta.adapted_layers(model).items():
        router = layer.combiner
        weights = normalized_sigmoid_weights(router.logits[0].double(), training=False, noise="none", temperature=1.0,
                                             normalization=router.normalization)
        target = expected[name] * (weights.shape[-1] if router.normalization == "mean" else 1.0)
        torch.testing.assert_close(weights, target.expand_as(weights), rtol=2e-5, atol=2e-6)


def test_arrow_refusals():
    trex = ta.inject(tiny_model("t5"), tiny_method_config("trex"))
    with pytest.raises(ValueError, match="T-REX"), arrow_routing(trex):
        pass
    model = perturb_adapters(ta.inject(tiny_model("t5"), tiny_method_config("poly")))
    ta.merge(model, task=0)
    with pytest.raises(ValueError, match="is merged"), arrow_routing(model):
        pass
    ta.unmerge(model)
    with pytest.raises(ValueError, match="top_k"), arrow_routing(model, top_k=0):
        pass
    lora = ta.inject(tiny_model("t5"), tiny_method_config("lora"))
    with pytest.raises(ValueError, match="no task routing rows"):
        arrow_task_row(lora, tiny_batch(lora))
    with pytest.raises(ValueError, match="out of range"):
        arrow_task_row(model, tiny_batch(model), task=3)
    with pytest.raises(ValueError, match="no tensoradapt adapters"), arrow_routing(tiny_model("t5")):
        pass
