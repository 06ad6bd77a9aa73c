"""One graph: ``torch.compile(model, fullgraph=True)`` captures a training step of every method.

For every method on a one-block tiny T5 (float64, training mode, routing noise on):

* one graph: ``fullgraph=True`` raises on any graph break, and the compile counter sees exactly
  one graph (the routing hooks add none: their checks run inside the forward's graph);
* no recompilation when the task ids change (another mixed batch, a single-task batch, 0-d ids):
  ``torch._dynamo.config.error_on_recompile`` turns a recompilation into an error;
* compiled == eager: logits and the gradient of every trainable parameter, under the same seed
  (AOTAutograd with the eager backend, ``aot_eager``; one slow test with inductor);
* ``generate``: Hugging Face's compiled decoding step (static cache) is one graph for every task.

Bad ids still fail with the library's message: out-of-range CPU ids through an assert inside the
graph (``RuntimeError``), missing ids while tracing.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

import tensoradapt
import tensoradapt.trex
from tensoradapt.model import routing_state
from tensoradapt.testing import TINY_METHOD_CONFIGS, perturb_adapters, tiny_batch, tiny_method_config, tiny_t5

METHODS = list(TINY_METHOD_CONFIGS)
N_TASKS = 3
MIXED = torch.tensor([0, 2, 1, 2])
#: What a compiled model sees after its first call: other mixed ids, one task for the batch.
OTHER_IDS = {"other mixed": torch.tensor([1, 1, 0, 2]), "single task": torch.tensor([2, 2, 2, 2])}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Every test compiles from scratch: no graph, guard or counter of another test."""
    dynamo.reset()
    counters.clear()
    yield
    dynamo.reset()


def one_block_t5(seed: int = 0):
    """`tiny_t5` with one encoder and one decoder block: every kind of adapted linear, half the tracing."""
    from transformers import T5ForConditionalGeneration

    config = tiny_t5().config
    config.num_layers = config.num_decoder_layers = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return T5ForConditionalGeneration(config).eval()


#: Five adapted linears per model rather than all eighteen (tracing time grows with them), one of
#: each kind: self-attention in both stacks, cross-attention on the encoder's states (``k``), and
#: the feed-forward output ``wo`` (32 -> 16).
TARGETS = r".*(SelfAttention|EncDecAttention|DenseReluDense)\.(k|wo)"


def adapted(method: str, dtype: torch.dtype = torch.float64):
    """A one-block T5 with ``method``'s adapters over 3 tasks, random adapter weights, in training mode.

    T-REX gets a per-task prior table, so its routing depends on the task ids too.
    """
    model = one_block_t5().to(dtype)
    tensoradapt.inject(model, tiny_method_config(method, n_tasks=N_TASKS, target_modules=TARGETS))
    assert len(tensoradapt.adapted_layers(model)) == 5
    perturb_adapters(model)
    if method == "trex":
        n_clusters = TINY_METHOD_CONFIGS["trex"]["trex_n_clusters"]
        table = torch.randn(N_TASKS, n_clusters, generator=torch.Generator().manual_seed(1))
        tensoradapt.trex.set_task_prior(model, table.to(dtype))
    return model.train()


def training_step(model, call, task_ids, seed: int = 0):
    """Forward + loss + backward through ``call`` (the model or its compiled version).

    Returns the logits and ``{name: gradient}`` of every trainable parameter; gradients are reset.
    """
    batch = tiny_batch(model)
    torch.manual_seed(seed)  # the routing noise draws the same numbers in both runs
    output = call(**batch, labels=batch["decoder_input_ids"], task_ids=task_ids, use_cache=False)
    output.loss.backward()
    grads = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            grads[name] = parameter.grad.detach().clone()
            parameter.grad = None
    return output.logits.detach(), grads


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str) -> None:
    """``|actual - expected| <= rtol * max|expected|`` entry by entry (a tolerance on the tensor's scale)."""
    scale = expected.abs().max().clamp_min(1e-30)
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=rtol * scale.item(), msg=lambda m: f"{what}: {m}")


def assert_step_equal(compiled_step, eager_step, rtol: float) -> None:
    (logits, grads), (eager_logits, eager_grads) = compiled_step, eager_step
    assert_close_scaled(logits, eager_logits, rtol, "logits")
    assert grads.keys() == eager_grads.keys()
    for name, grad in grads.items():
        assert_close_scaled(grad, eager_grads[name], rtol, f"gradient of {name}")


# ------------------------------------------------------------------------------ training step


@pytest.mark.parametrize("method", METHODS)
def test_training_step_is_one_graph_for_every_task_mix_and_equals_eager(method):
    model = adapted(method)
    backend = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    assert_step_equal(training_step(model, compiled, MIXED), training_step(model, model, MIXED), 1e-12)
    assert backend.frame_count == 1, f"{backend.frame_count} graphs for one training forward"
    with dynamo.config.patch(error_on_recompile=True):
        for seed, task_ids in enumerate(OTHER_IDS.values(), start=1):
            step = training_step(model, compiled, task_ids, seed=seed)
            assert_step_equal(step, training_step(model, model, task_ids, seed=seed), 1e-12)
    assert backend.frame_count == 1


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("lora", "tlora")])
def test_one_task_for_the_batch_as_a_0d_tensor_does_not_recompile(method):
    """A 0-d id runs the one-task path (matrices built once): its own graph, the same for every task."""
    model = adapted(method)
    backend = CompileCounterWithBackend("eager")
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    batch = {**tiny_batch(model), "use_cache": False}
    with torch.no_grad():
        outputs = []
        for task in range(N_TASKS):
            with dynamo.config.patch(error_on_recompile=task > 0):
                torch.manual_seed(task)
                outputs.append(compiled(**batch, task_ids=torch.tensor(task)).logits)
            torch.manual_seed(task)
            torch.testing.assert_close(outputs[-1], model(**batch, task_ids=torch.tensor(task)).logits)
    assert backend.frame_count == 1
    assert not torch.allclose(outputs[0], outputs[2])


def test_bad_ids_fail_with_the_library_message_and_leave_the_graph_as_it_was():
    model = adapted("poly").eval()  # no routing noise: calls repeat exactly
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    batch = {**tiny_batch(model), "use_cache": False}
    with torch.no_grad():
        expected = compiled(**batch, task_ids=MIXED).logits
        # Out-of-range CPU ids: an assert inside the graph (no host read), so a RuntimeError.
        message = r"task_ids holds an id out of range: the adapters know tasks 0\.\.2"
        for bad in (torch.tensor([0, 3, 1, 2]), torch.tensor([0, -1, 1, 2])):
            with pytest.raises(RuntimeError, match=message):
                compiled(**batch, task_ids=bad)
        # Errors of form surface while tracing: dynamo's report carries the library's message.
        with pytest.raises(RuntimeError, match="task_ids are missing"):
            compiled(**batch)
        with pytest.raises(RuntimeError, match="must be 0-d or"):
            compiled(**batch, task_ids=MIXED.reshape(2, 2))
        assert len(routing_state(model).stack) == 1  # every failed call left its routing scope
        torch.testing.assert_close(compiled(**batch, task_ids=MIXED).logits, expected, rtol=0, atol=0)
    assert counters["stats"]["unique_graphs"] == 1


# ---------------------------------------------------------------------------------- generate


@pytest.mark.parametrize("method", ["trex", pytest.param("tensorpoly_ii", marks=pytest.mark.slow)])
def test_compiled_decoding_of_generate_is_one_graph_for_every_task(method):
    """Hugging Face compiles the decoding step when the cache is static (`CompileConfig`).

    ``(batch,)`` ids share one graph; ``int`` ids (made 0-d tensors by ``generate``) share another.
    """
    from transformers import CompileConfig

    model = adapted(method, torch.float32).eval()
    input_ids = tiny_batch(model)["input_ids"]
    config = CompileConfig(fullgraph=True, backend="aot_eager", mode=None)
    config._compile_all_devices = True  # transformers compiles on accelerators only unless told
    settings = dict(max_new_tokens=4, do_sample=False, cache_implementation="static", return_dict_in_generate=True,
                    output_scores=True)
    scores = {}
    for label, task_ids in {"mixed": MIXED, **OTHER_IDS, "int": 0, "other int": 2}.items():
        with dynamo.config.patch(error_on_recompile=label not in ("mixed", "int")):
            compiled = model.generate(input_ids, task_ids=task_ids, compile_config=config, **settings)
        eager = model.generate(input_ids, task_ids=task_ids, disable_compile=True, **settings)
        assert torch.equal(compiled.sequences, eager.sequences), label
        scores[label] = torch.stack(compiled.scores)
        torch.testing.assert_close(scores[label], torch.stack(eager.scores), msg=lambda m: f"{label}: {m}")
    assert counters["stats"]["unique_graphs"] == 2
    assert not counters["graph_break"]
    assert not torch.allclose(scores["mixed"], scores["other mixed"])  # the compiled step routes by the ids
    assert not torch.allclose(scores["int"], scores["other int"])


# ---------------------------------------------------------------------------------- inductor


@pytest.mark.slow
@pytest.mark.parametrize("method", ["poly", "tensorpoly_ii"])
def test_inductor_training_step_equals_eager(method):
    """The default backend (inductor: C++ kernels on a CPU, about a minute per model here), float64.

    Its random numbers are drawn as eager draws them (``fallback_random``). The tolerance is
    float32's: T5's layer norm takes its variance in float32, and inductor sums those 16 squares
    in another order than eager (the bare one-block T5 differs by 6.5e-7 in its logits, of size 1).
    """
    from torch._inductor import config as inductor_config

    model = adapted(method)
    with inductor_config.patch(fallback_random=True):
        compiled = torch.compile(model, fullgraph=True)
        assert_step_equal(training_step(model, compiled, MIXED), training_step(model, model, MIXED), 1e-5)
        with dynamo.config.patch(error_on_recompile=True):
            step = training_step(model, compiled, OTHER_IDS["single task"], seed=1)
        assert_step_equal(step, training_step(model, model, OTHER_IDS["single task"], seed=1), 1e-5)
