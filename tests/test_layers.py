"""AdaptedLinear on ``nn.Linear`` and GPT-2's ``Conv1D``: ``y = base(x) + scaling * (x A_t) B_t``.

Every task-routed method (and LoRA / TLoRA) is checked against a dense reference written in this
file from the raw parameters (loops, slices and ``torch.kron``), then merge == unmerged,
unmerge restores the weight bit for bit, one-task batches == per-example ids, low-precision
dtypes against float64, and bad inputs.
"""

from __future__ import annotations

import copy
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from transformers.pytorch_utils import Conv1D

from references import factors, kron_rows, plain_weights
from tensoradapt.config import AdapterConfig
from tensoradapt.layers import AdaptedLinear, linear_dims
from tensoradapt.routing.state import RoutingInputs

METHODS = ("lora", "tlora", "poly", "mhr", "tensorpoly_i", "tensorpoly_ii")
ROUTED = ("poly", "mhr", "tensorpoly_i", "tensorpoly_ii")

head_counts = st.integers(1, 3)
blocks = st.sampled_from([1, 2, 3, 5, 7])  # d = heads * block: 1, odd and prime dims
seeds = st.integers(0, 2**16)


# --- the dense reference ----------------------------------------------------------------------


def entangled_columns(leaves: torch.Tensor, dim: int, rank_weights: list[float], normalize: bool) -> torch.Tensor:
    """``(r, R, N, q)`` leaves -> ``(r, dim)``: ``sum_k w_k kron_n(leaves[c, k, n])`` per column."""
    total = torch.zeros(leaves.shape[0], dim, dtype=leaves.dtype)
    for k, w in enumerate(rank_weights):
        total = total + w * kron_rows(leaves[:, k], dim, normalize=normalize)
    return total


def order_mixed_columns(leaves: torch.Tensor, dim: int, weights: list[list[float]], normalize: bool) -> torch.Tensor:
    """``(r, R, N, q)`` leaves -> ``(r, dim)``: ``kron_n(sum_k w[n][k] leaves[c, k, n])`` per column."""
    mixed = [
        torch.stack([sum(weights[n][k] * leaves[c, k, n] for k in range(leaves.shape[1])) for n in range(leaves.shape[2])])
        for c in range(leaves.shape[0])
    ]
    return kron_rows(torch.stack(mixed), dim, normalize=normalize)


def routing_weights(config: AdapterConfig, row: torch.Tensor) -> list[float]:
    """Eval-mode weights of one logit row: divided by their sum, or by their mean (``S`` times as
    large), the default of TensorPoly-I / -II."""
    weights = plain_weights(row)
    normalization = config.routing_normalization or (
        "mean" if config.method in ("tensorpoly_i", "tensorpoly_ii") else "sum"
    )
    return [w * len(weights) for w in weights] if normalization == "mean" else weights


def dense_adapter(layer: AdaptedLinear, task: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``A_t (d_in, r)``, ``B_t (r, d_out)`` of ``layer`` for one task, from its raw parameters (eval routing)."""
    config, bank, combiner = layer.config, layer.bank, layer.combiner
    method, normalize = config.method, config.normalize_outer
    with torch.no_grad():
        if method == "lora":
            return bank.down[0].clone(), bank.up[0].clone()
        if method == "poly":
            w = routing_weights(config, combiner.logits[task])
            return sum(w[s] * bank.down[s] for s in range(len(w))), sum(w[s] * bank.up[s] for s in range(len(w)))
        if method == "mhr":
            heads = config.n_heads
            step_in, step_out = layer.d_in // heads, layer.d_out // heads
            down, up = torch.zeros_like(bank.down[0]), torch.zeros_like(bank.up[0])
            for h in range(heads):
                for s, w in enumerate(routing_weights(config, combiner.logits[task, h])):
                    down[h * step_in : (h + 1) * step_in] += w * bank.down[s, h * step_in : (h + 1) * step_in]
                    up[:, h * step_out : (h + 1) * step_out] += w * bank.up[s, :, h * step_out : (h + 1) * step_out]
            return down, up
        down_leaves, up_leaves = factors(bank.down), factors(bank.up)
        if method in ("tlora", "tensorpoly_i"):
            w = [1.0] * config.tensor_rank if method == "tlora" else routing_weights(config, combiner.logits[task])
            return (
                entangled_columns(down_leaves, layer.d_in, w, normalize).T,
                entangled_columns(up_leaves, layer.d_out, w, normalize),
            )
        weights = [routing_weights(config, combiner.logits[task, n]) for n in range(config.order)]
        return (
            order_mixed_columns(down_leaves, layer.d_in, weights, normalize).T,
            order_mixed_columns(up_leaves, layer.d_out, weights, normalize),
        )


def dense_forward(layer: AdaptedLinear, x: torch.Tensor, tasks: list[int]) -> torch.Tensor:
    """``x W^T + b + scaling * (x A_t) B_t`` row by row (``x W + b`` for ``Conv1D``)."""
    weight = layer.base.weight.detach()
    dense_weight = weight if isinstance(layer.base, Conv1D) else weight.T  # (d_in, d_out)
    scaling = (1.0 if layer.config.lora_alpha is None else layer.config.lora_alpha) / layer.config.lora_rank
    rows = []
    for example, task in zip(x, tasks):
        down, up = dense_adapter(layer, task)
        out = example @ dense_weight + scaling * (example @ down) @ up
        if layer.base.bias is not None:
            out = out + layer.base.bias.detach()
        rows.append(out)
    return torch.stack(rows)


# --- builders ---------------------------------------------------------------------------------


def make_base(kind: str, d_in: int, d_out: int, dtype: torch.dtype, bias: bool = True) -> nn.Module:
    if kind == "linear":
        return nn.Linear(d_in, d_out, bias=bias, dtype=dtype)
    base = Conv1D(d_out, d_in).to(dtype)
    with torch.no_grad():
        base.bias.normal_()
    return base


def make_layer(
    method: str,
    kind: str,
    d_in: int,
    d_out: int,
    seed: int,
    *,
    dtype: torch.dtype = torch.float64,
    n_heads: int = 1,
    **overrides,
) -> AdaptedLinear:
    """A layer with every adapter parameter random (fresh LoRA-style B is zero) in eval mode."""
    torch.manual_seed(seed)
    settings = dict(method=method, n_tasks=3, lora_rank=2, n_skills=3, tensor_rank=2, order=2)
    if method == "mhr":
        settings["n_heads"] = n_heads
    config = AdapterConfig(**(settings | overrides))
    layer = AdaptedLinear(make_base(kind, d_in, d_out, dtype), config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in layer.named_parameters():
            if not name.startswith("base."):
                parameter.copy_(torch.randn(parameter.shape, generator=generator).to(dtype))
    return layer.eval()


def forward(layer: AdaptedLinear, x: torch.Tensor, task_ids) -> torch.Tensor:
    with layer.state.scope(RoutingInputs(task_ids=task_ids)):
        return layer(x)


def n_tasks(layer: AdaptedLinear) -> int:
    return layer.config.n_tasks if layer.config.is_routed else 1


layer_cases = dict(
    method=st.sampled_from(METHODS),
    kind=st.sampled_from(["linear", "conv1d"]),
    n_heads=head_counts,
    block_in=blocks,
    block_out=blocks,
    seed=seeds,
)


# --- forward against the reference --------------------------------------------------------------


@given(
    **layer_cases,
    lora_rank=st.integers(1, 3),
    lora_alpha=st.sampled_from([None, 1.0, 8.0]),
    order=st.integers(1, 3),
    normalize=st.booleans(),
    normalization=st.sampled_from([None, "sum", "mean"]),
    seq=st.sampled_from([None, 1, 3]),
)
def test_forward_matches_the_dense_reference(
    method, kind, n_heads, block_in, block_out, seed, lora_rank, lora_alpha, order, normalize, normalization, seq
) -> None:
    d_in, d_out = n_heads * block_in, n_heads * block_out
    layer = make_layer(
        method, kind, d_in, d_out, seed, n_heads=n_heads, lora_rank=lora_rank, lora_alpha=lora_alpha,
        order=order, normalize_outer=normalize, routing_normalization=normalization,
    )
    assert layer.scaling == (1.0 if lora_alpha is None else lora_alpha) / lora_rank
    assert linear_dims(layer.base) == (d_in, d_out)
    shape = (4, d_in) if seq is None else (4, seq, d_in)
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    ids = [(seed + i) % n_tasks(layer) for i in range(4)]
    out = forward(layer, x, torch.tensor(ids))
    if seq is None:
        expected = dense_forward(layer, x, ids)
    else:
        expected = torch.stack([dense_forward(layer, x[:, s], ids) for s in range(seq)], dim=1)
    assert out.shape == (*shape[:-1], d_out)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    # delta() alone is the adapter's part.
    base = layer.base(x)
    torch.testing.assert_close(layer.delta(x, torch.tensor(ids)), out - base, rtol=1e-9, atol=1e-9)


@given(**layer_cases)
def test_one_task_id_equals_a_batch_of_equal_ids(method, kind, n_heads, block_in, block_out, seed) -> None:
    d_in, d_out = n_heads * block_in, n_heads * block_out
    layer = make_layer(method, kind, d_in, d_out, seed, n_heads=n_heads)
    x = torch.randn(5, 2, d_in, dtype=torch.float64)
    for task in range(n_tasks(layer)):
        single = forward(layer, x, task)
        torch.testing.assert_close(forward(layer, x, torch.tensor(task)), single, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(forward(layer, x, torch.full((5,), task)), single, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(single, dense_forward_seq(layer, x, [task] * 5), rtol=1e-9, atol=1e-9)


def dense_forward_seq(layer: AdaptedLinear, x: torch.Tensor, tasks: list[int]) -> torch.Tensor:
    return torch.stack([dense_forward(layer, x[:, s], tasks) for s in range(x.shape[1])], dim=1)


@pytest.mark.parametrize("method", ROUTED)
def test_mixed_batch_rows_are_each_task_alone(method: str) -> None:
    layer = make_layer(method, "linear", 6, 4, 0, n_heads=2)
    x = torch.randn(4, 3, 6, dtype=torch.float64)
    ids = torch.tensor([2, 0, 1, 2])
    mixed = forward(layer, x, ids)
    for row, task in enumerate(ids.tolist()):
        torch.testing.assert_close(mixed[row], forward(layer, x, task)[row], rtol=1e-10, atol=1e-10)
    assert not torch.allclose(forward(layer, x, 0), forward(layer, x, 1))


@pytest.mark.parametrize("method", ROUTED)
def test_noise_none_routes_training_like_eval(method: str) -> None:
    layer = make_layer(method, "linear", 4, 6, 0, n_heads=2, routing_noise="none")
    x = torch.randn(2, 4, dtype=torch.float64)
    evaluated = forward(layer, x, 1)
    torch.testing.assert_close(forward(layer.train(), x, 1), evaluated)


@pytest.mark.parametrize("method", METHODS)
def test_disabled_layer_is_the_base(method: str) -> None:
    layer = make_layer(method, "conv1d", 4, 6, 0, n_heads=2)
    x = torch.randn(3, 4, dtype=torch.float64)
    layer.disabled = True
    torch.testing.assert_close(forward(layer, x, 0), layer.base(x), rtol=0, atol=0)


# --- merge / unmerge ---------------------------------------------------------------------------


@given(**layer_cases, lora_alpha=st.sampled_from([None, 4.0]), normalize=st.booleans())
def test_merge_equals_unmerged_and_unmerge_restores_bit_for_bit(
    method, kind, n_heads, block_in, block_out, seed, lora_alpha, normalize
) -> None:
    d_in, d_out = n_heads * block_in, n_heads * block_out
    layer = make_layer(
        method, kind, d_in, d_out, seed, n_heads=n_heads, lora_alpha=lora_alpha, normalize_outer=normalize
    )
    original = layer.base.weight.detach().clone()
    x = torch.randn(3, 2, d_in, dtype=torch.float64)
    for task in range(n_tasks(layer)):
        unmerged = forward(layer, x, task)
        layer.merge(task if layer.config.is_routed else None)
        assert layer.merged
        merged = forward(layer, x, task)
        torch.testing.assert_close(merged, unmerged, rtol=1e-10, atol=1e-10)
        # The merged weight is the base plus the dense reference update.
        down, up = dense_adapter(layer, task)
        update = layer.scaling * down @ up
        expected_weight = original + (update if kind == "conv1d" else update.T)
        torch.testing.assert_close(layer.base.weight.detach(), expected_weight, rtol=1e-10, atol=1e-10)
        layer.unmerge()
        assert not layer.merged and layer.merged_task is None
        assert torch.equal(layer.base.weight, original)
        torch.testing.assert_close(forward(layer, x, task), unmerged, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("method", METHODS)
def test_unmerge_restores_low_precision_weights_bit_for_bit(method: str, dtype: torch.dtype) -> None:
    layer = make_layer(method, "linear", 6, 4, 0, dtype=dtype, n_heads=2)
    original = layer.base.weight.detach().clone()
    layer.merge(1 if layer.config.is_routed else None)
    assert not torch.equal(layer.base.weight, original)
    layer.unmerge()
    assert torch.equal(layer.base.weight, original)


def test_merge_and_unmerge_refuse_misuse() -> None:
    layer = make_layer("poly", "linear", 4, 4, 0)
    with pytest.raises(ValueError, match="one task"):
        layer.merge(torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="nothing is merged"):
        layer.unmerge()
    layer.merge(0)
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge(1)
    layer.unmerge()


# --- dtypes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, tol", [(torch.float32, 2e-6), (torch.float16, 4e-3), (torch.bfloat16, 3e-2)]
)
@given(**layer_cases)
def test_low_precision_forward_matches_float64(dtype, tol, method, kind, n_heads, block_in, block_out, seed) -> None:
    d_in, d_out = n_heads * block_in, n_heads * block_out
    layer = make_layer(method, kind, d_in, d_out, seed, dtype=dtype, n_heads=n_heads)
    assert all(p.dtype == dtype for p in layer.parameters())
    reference = copy.deepcopy(layer).double()
    x = torch.randn(3, 2, d_in, generator=torch.Generator().manual_seed(seed)).to(dtype)
    ids = torch.tensor([(seed + i) % n_tasks(layer) for i in range(3)])
    out = forward(layer, x, ids)
    assert out.dtype == dtype
    expected = dense_forward_seq(reference, x.double(), ids.tolist())
    scale = expected.abs().max().item() + 1.0
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol * scale)


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ROUTED)
@pytest.mark.parametrize("ids", [3, -1, torch.tensor([0, 3]), torch.tensor(7)])
def test_out_of_range_task_ids_are_value_errors(method: str, ids) -> None:
    layer = make_layer(method, "linear", 4, 4, 0, n_heads=2)
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="task_ids"):
        forward(layer, x, ids)
    with pytest.raises(ValueError, match="task_ids"):
        layer.delta(x, ids)
    if not isinstance(ids, torch.Tensor) or ids.dim() == 0:
        with pytest.raises(ValueError, match="task_ids"):
            layer.merge(ids)
        assert not layer.merged


@pytest.mark.parametrize("method", ROUTED)
def test_missing_task_ids_are_a_value_error(method: str) -> None:
    layer = make_layer(method, "linear", 4, 4, 0, n_heads=2)
    with pytest.raises(ValueError, match="task_ids"):
        layer(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="task_ids"):
        layer.merge()


def test_per_example_ids_must_match_the_batch() -> None:
    layer = make_layer("poly", "linear", 4, 4, 0)
    with pytest.raises(ValueError, match="task_ids"):
        forward(layer, torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 1]))


@pytest.mark.parametrize(
    "overrides, name",
    [
        (dict(method="lora", lora_rank=0), "lora_rank"),
        (dict(method="tlora", tensor_rank=0), "tensor_rank"),
        (dict(method="tlora", order=0), "order"),
        (dict(method="tensorpoly_ii", order=-1), "order"),
        (dict(method="poly", n_skills=0), "n_skills"),
        (dict(method="mhr", n_heads=0), "n_heads"),
        (dict(method="poly", n_tasks=0), "n_tasks"),
    ],
)
def test_bad_config_names_the_parameter(overrides: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        AdaptedLinear(nn.Linear(4, 4), AdapterConfig(**overrides))


def test_heads_that_do_not_divide_the_layer_name_n_heads() -> None:
    with pytest.raises(ValueError, match="n_heads"):
        AdaptedLinear(nn.Linear(6, 5), AdapterConfig(method="mhr", n_heads=2))


def test_only_linear_and_conv1d_are_adapted() -> None:
    with pytest.raises(TypeError, match="nn.Linear"):
        AdaptedLinear(nn.Conv2d(2, 2, 1), AdapterConfig())


# --- reductions between methods, at layer level --------------------------------------------------


@given(kind=st.sampled_from(["linear", "conv1d"]), d_in=blocks, d_out=blocks, rank=st.integers(1, 3), seed=seeds)
def test_one_skill_poly_one_head_mhr_and_order_one_tlora_are_lora(kind, d_in, d_out, rank, seed) -> None:
    """Same numbers in every layout: Poly / MHR with S = 1 and TLoRA with R = 1, N = 1 give LoRA's output."""
    lora = make_layer("lora", kind, d_in, d_out, seed, lora_rank=rank)
    poly = make_layer("poly", kind, d_in, d_out, seed, lora_rank=rank, n_skills=1)
    mhr = make_layer("mhr", kind, d_in, d_out, seed, lora_rank=rank, n_skills=1)
    tlora = make_layer("tlora", kind, d_in, d_out, seed, lora_rank=rank, tensor_rank=1, order=1)
    with torch.no_grad():
        for other in (poly, mhr, tlora):
            other.base.load_state_dict(lora.base.state_dict())
        for other in (poly, mhr):
            other.bank.down.copy_(lora.bank.down)
            other.bank.up.copy_(lora.bank.up)
        tlora.bank.down.leaves[:, 0, 0, :] = lora.bank.down[0].T
        tlora.bank.up.leaves[:, 0, 0, :] = lora.bank.up[0]
    x = torch.randn(3, 2, d_in, dtype=torch.float64)
    expected = forward(lora, x, None)
    for other in (poly, mhr):
        for task in range(3):
            torch.testing.assert_close(forward(other, x, task), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(forward(tlora, x, None), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["lora", "tlora", "poly", "mhr", "tensorpoly_i", "tensorpoly_ii"])
def test_fresh_lora_init_layers_start_at_the_base(method: str) -> None:
    """LoRA's B = 0 and the entangled zero-output B (init='lora', R >= 2): the delta starts at zero.

    The entangled zero-output B sums to zero only with *equal* rank weights, so the TensorPoly
    layers are checked with the routing averaged; routed with unequal weights their fresh delta
    is small (logits start within +-1e-3) but not zero.
    """
    torch.manual_seed(0)
    config = AdapterConfig(method=method, n_tasks=2, lora_rank=2, n_skills=3, n_heads=2, tensor_rank=2, init="lora")
    layer = AdaptedLinear(nn.Linear(6, 4, dtype=torch.float64), config).eval()
    if method.startswith("tensorpoly"):
        layer.combiner.average = True
    x = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(forward(layer, x, 1), layer.base(x), rtol=0, atol=1e-12)
