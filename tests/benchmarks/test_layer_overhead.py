"""benchmarks/layer_overhead.py: the floor is a per-example LoRA, and a quick run reports every variant (never timings)."""

import json
import math

import pytest
import torch


def test_the_floor_is_the_lora_of_the_same_matrices_scaled_per_example(load_benchmark):
    benchmark = load_benchmark("layer_overhead")
    torch.manual_seed(0)
    base = torch.nn.Linear(7, 5, bias=False).double().requires_grad_(False)
    floor = benchmark.GatedLoRA(base, lora_rank=3, n_tasks=4).double()
    with torch.no_grad():
        floor.up.normal_()
        floor.gate.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64))
    x = torch.randn(4, 6, 7, dtype=torch.float64)
    task_ids = torch.tensor([2, 0, 3, 1])
    expected = torch.stack([
        base(x[i]) + floor.gate[t] ** 2 * (x[i] @ floor.down @ floor.up) / 3  # g^2 s x A B, example by example
        for i, t in enumerate(task_ids.tolist())
    ])
    torch.testing.assert_close(floor(x, task_ids), expected, rtol=1e-12, atol=1e-12)
    floor(x, task_ids).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (floor.down, floor.up, floor.gate))
    assert floor.gate.grad[torch.tensor([0, 1, 2, 3])].ne(0).all()  # every task of the batch is trained


def test_quick_eager_run_reports_every_variant_against_lora_and_the_floor(load_benchmark, tmp_path):
    benchmark = load_benchmark("layer_overhead")
    path = tmp_path / "layer.json"
    returned = benchmark.main(["--quick", "--eager", "--json", str(path)])
    written = json.loads(path.read_text())
    assert written == json.loads(json.dumps(returned))
    assert list(written["median_s"]) == list(benchmark.VARIANTS)
    for key in ("ratio_to_lora", "ratio_to_floor"):
        assert set(written[key]) == set(benchmark.VARIANTS)
        assert all(math.isfinite(v) and v > 0 for v in written[key].values())
    assert written["ratio_to_lora"]["lora"] == 1.0 and written["ratio_to_floor"]["floor"] == 1.0
    assert all(len(samples) == written["settings"]["repeats"] for samples in written["samples_s"].values())
    text = path.with_suffix(".md").read_text()
    assert "| floor |" in text and "--quick --eager" in text
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_compiled_run_is_one_graph_per_variant(load_benchmark, tmp_path):
    """Compiled (fullgraph): every variant's step compiles and runs; the routed ones take task ids as tensors."""
    benchmark = load_benchmark("layer_overhead")
    written = benchmark.main(["--quick", "--variants", "lora,floor,poly", "--json", str(tmp_path / "c.json")])
    assert written["settings"]["eager"] is False and set(written["median_s"]) == {"lora", "floor", "poly"}


@pytest.mark.parametrize("flags, message", [
    (["--variants", "poly"], "must include lora"),
    (["--variants", "lora,nope"], "unknown ['nope']"),
])
def test_bad_flags_are_refused(load_benchmark, tmp_path, capsys, flags, message):
    benchmark = load_benchmark("layer_overhead")
    with pytest.raises(SystemExit):
        benchmark.main(["--quick", "--json", str(tmp_path / "x.json"), *flags])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("variant", ["poly", "tensorpoly_i", "trex"])
def test_every_method_is_timed_with_its_routing_inputs(load_benchmark, variant):
    """Routed layers read the batch's task ids, T-REX its semantic prior, from the layer's routing state."""
    benchmark = load_benchmark("layer_overhead")
    args = benchmark.parse_arguments(["--quick"])
    layer = benchmark.build_layer(variant, args, device=torch.device("cpu"), dtype=torch.float32)
    x = torch.randn(args.batch, args.tokens, args.d_in, requires_grad=True)
    task_ids = torch.arange(args.batch) % args.n_tasks
    benchmark.make_step(layer, variant, x, task_ids, compiled=False)()
    if variant == "trex":
        prior = layer.state.semantic_prior_for(args.batch)
        assert prior is not None and prior.shape == (args.batch, layer.config.trex_n_clusters)
    else:
        assert torch.equal(layer.state.task_ids_for(args.batch), task_ids)
