"""Kill-and-resume gives the uninterrupted run's weights bit for bit; checkpoints are atomic."""

from __future__ import annotations

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

import tensoradapt as ta
from t0_recipes.training import run_state
from t0_recipes.training import loop as training
from t0_recipes.training.optim import OptimConfig, build_optimization
from t0_recipes.training.run_state import LATEST, complete_checkpoints, latest_checkpoint, read_run_state
from t0_recipes.scoring.seq2seq import seq2seq_lm_loss
from t0_recipes.training.loop import TRAINABLE_NAME, load_trainable, train

VOCAB, PROMPT, TARGET, N_TASKS = 32, 6, 4, 3


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Every test builds its own Accelerator; reset accelerate's process-wide singletons after it."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def tiny_poly_t5(*, dropout: float = 0.1, noise: str = "relaxed_bernoulli") -> torch.nn.Module:
    """A 1+1-layer T5 with Poly adapters (3 tasks), dropout in the backbone and the adapters."""
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=dropout,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    model = T5ForConditionalGeneration(config)
    ta.inject(
        model,
        ta.AdapterConfig(method="poly", n_tasks=N_TASKS, lora_rank=2, n_skills=4, routing_noise=noise, dropout=dropout),
    )
    return model


def toy_dataset(n: int = 20, seed: int = 1) -> list[dict]:
    """Prompts of random tokens; the target is the first tokens shifted by the task id (learnable)."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for index in range(n):
        prompt = torch.randint(2, VOCAB, (PROMPT,), generator=generator)
        task = index % N_TASKS
        target = (prompt[:TARGET] + task - 2) % (VOCAB - 2) + 2
        examples.append({"input_ids": prompt, "labels": target, "task_id": task})
    return examples


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    input_ids = torch.stack([e["input_ids"] for e in examples])
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": torch.stack([e["labels"] for e in examples]),
        "task_ids": torch.tensor([e["task_id"] for e in examples]),
    }


class Killed(RuntimeError):
    pass


def kill_after(step: int):
    def callback(info):
        if info.step == step:
            raise Killed(f"killed after step {step}")

    return callback


def run(output_dir, *, steps=12, resume=False, callbacks=(), checkpoint_every=4, grad_accum=2, model=None):
    """One run; returns the model, the raw optimiser and the result."""
    model = model if model is not None else tiny_poly_t5()
    config = OptimConfig(lr=1e-2, lr_routing=0.1)
    optimizer, scheduler = build_optimization(model, config, total_steps=steps)
    result = train(
        model, seq2seq_lm_loss, toy_dataset(), collate_fn=collate, batch_size=4, steps=steps,
        optimizer=optimizer, scheduler=scheduler, grad_accum=grad_accum, grad_clip=config.grad_clip, seed=7,
        output_dir=output_dir, checkpoint_every=checkpoint_every, resume=resume, callbacks=callbacks, progress=False,
    )
    return model, optimizer, result


def trainable(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_optimizer_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a["param_groups"] == state_b["param_groups"]
    assert state_a["state"].keys() == state_b["state"].keys()
    for index in state_a["state"]:
        entry_a, entry_b = state_a["state"][index], state_b["state"][index]
        assert entry_a.keys() == entry_b.keys()
        for key, value in entry_a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, entry_b[key]), (index, key)
            else:
                assert value == entry_b[key], (index, key)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    model, optimizer, result = run(tmp_path_factory.mktemp("uninterrupted"))
    return trainable(model), optimizer, result


def test_routing_noise_and_dropout_are_on():
    """The resume test is only meaningful if training draws random numbers."""
    model = tiny_poly_t5()
    batch = collate(toy_dataset()[:4])
    model.train()
    losses = {float(seq2seq_lm_loss(model, batch).detach()) for _ in range(3)}
    assert len(losses) == 3
    model.eval()
    assert len({float(seq2seq_lm_loss(model, batch)) for _ in range(2)}) == 1


def test_killed_and_resumed_run_is_bit_identical(tmp_path, uninterrupted):
    reference, reference_optimizer, reference_result = uninterrupted
    with pytest.raises(Killed):
        run(tmp_path, callbacks=[kill_after(6)])
    assert latest_checkpoint(tmp_path).name == "checkpoint-000004"
    state = read_run_state(latest_checkpoint(tmp_path))
    assert (state.step, state.batches_seen, state.epoch, state.position) == (4, 8, 1, 12)  # 8 batches x 4 of 20

    model, optimizer, result = run(tmp_path, resume=True)
    assert result.start_step == 4 and len(result.losses) == 8
    assert_bit_identical(trainable(model), reference)
    assert_same_optimizer_state(optimizer, reference_optimizer)
    assert result.losses == reference_result.losses[4:]
    assert result.lrs == reference_result.lrs[4:]
    assert latest_checkpoint(tmp_path).name == "checkpoint-000012"


def test_resume_from_the_last_checkpoint_does_nothing(tmp_path, uninterrupted):
    reference, _, _ = uninterrupted
    run(tmp_path)
    model, _, result = run(tmp_path, resume=True)
    assert result.start_step == 12 and result.losses == []
    assert_bit_identical(trainable(model), reference)


def test_resume_without_checkpoint_starts_fresh(tmp_path, uninterrupted):
    reference, _, _ = uninterrupted
    model, _, result = run(tmp_path, resume=True)
    assert result.start_step == 0
    assert_bit_identical(trainable(model), reference)


def test_checkpoint_holds_weights_optimizer_scheduler_rng_and_adapter(tmp_path):
    model, _, _ = run(tmp_path, steps=4)
    checkpoint = latest_checkpoint(tmp_path)
    names = {path.name for path in checkpoint.iterdir()}
    assert {"trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng_state_0.pt", "train_state.json", "adapter"} <= names
    fresh = tiny_poly_t5()
    ta.load_adapter(fresh, checkpoint / "adapter")
    assert_bit_identical(trainable(fresh), trainable(model))
    again = tiny_poly_t5()
    load_trainable(again, checkpoint / TRAINABLE_NAME)
    assert_bit_identical(trainable(again), trainable(model))


def test_resume_refuses_other_data_settings(tmp_path):
    run(tmp_path, steps=4)
    model = tiny_poly_t5()
    optimizer, scheduler = build_optimization(model, OptimConfig(), total_steps=4)
    with pytest.raises(ValueError, match="batch_size=4 but this run has batch_size=8"):
        train(model, seq2seq_lm_loss, toy_dataset(), collate_fn=collate, batch_size=8, steps=4, optimizer=optimizer,
              scheduler=scheduler, grad_accum=2, seed=7, output_dir=tmp_path, resume=True, progress=False)


@pytest.mark.parametrize(
    "where",
    ["optimizer", "before_rename", "latest_pointer"],
)
def test_failed_checkpoint_leaves_the_previous_one_latest(tmp_path, monkeypatch, uninterrupted, where):
    """A crash while step 8's checkpoint is written: step 4 stays ``latest`` and resuming still matches."""
    reference, _, _ = uninterrupted

    class WriteFailed(OSError):
        pass

    def fail(*args, **kwargs):
        raise WriteFailed("disk full")

    calls = {"n": 0}

    if where == "optimizer":
        original = training._save_optimizer

        def flaky(optimizer, directory):
            calls["n"] += 1
            if calls["n"] == 2:  # the second checkpoint (step 8)
                fail()
            original(optimizer, directory)

        monkeypatch.setattr(training, "_save_optimizer", flaky)
    elif where == "before_rename":
        original = run_state._fsync_tree

        def flaky(root):
            calls["n"] += 1
            if calls["n"] == 2:
                fail()
            original(root)

        monkeypatch.setattr(run_state, "_fsync_tree", flaky)
    else:
        import tensoradapt.atomic as atomic_module

        original = atomic_module.atomic_write

        def flaky(path, write):
            if path.name == LATEST:
                calls["n"] += 1
                if calls["n"] == 2:
                    fail()
            original(path, write)

        monkeypatch.setattr(atomic_module, "atomic_write", flaky)

    with pytest.raises(WriteFailed):
        run(tmp_path)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path).name == "checkpoint-000004"
    complete = [path.name for path in complete_checkpoints(tmp_path)]
    if where == "latest_pointer":
        assert complete == ["checkpoint-000004", "checkpoint-000008"]  # renamed, but never named latest
    else:
        assert complete == ["checkpoint-000004"]  # the half-written one stays under its .tmp- name
        assert (tmp_path / ".tmp-checkpoint-000008").is_dir()
    # the previous checkpoint is intact and loadable
    fresh = tiny_poly_t5()
    load_trainable(fresh, latest_checkpoint(tmp_path) / TRAINABLE_NAME)
    torch.load(latest_checkpoint(tmp_path) / "optimizer.pt", weights_only=True)
    # and resuming from it still ends on the uninterrupted run's weights
    model, _, result = run(tmp_path, resume=True)
    assert result.start_step == 4
    assert_bit_identical(trainable(model), reference)
    assert not (tmp_path / ".tmp-checkpoint-000008").exists()


def test_latest_naming_an_incomplete_folder_is_refused(tmp_path):
    run(tmp_path, steps=4)
    (tmp_path / "checkpoint-000099").mkdir()
    (tmp_path / LATEST).write_text("checkpoint-000099\n")
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        latest_checkpoint(tmp_path)


def test_keep_last_prunes_old_checkpoints(tmp_path):
    model = tiny_poly_t5()
    optimizer, scheduler = build_optimization(model, OptimConfig(), total_steps=6)
    train(model, seq2seq_lm_loss, toy_dataset(), collate_fn=collate, batch_size=4, steps=6, optimizer=optimizer,
          scheduler=scheduler, output_dir=tmp_path, checkpoint_every=2, keep_last=2, progress=False)
    assert [path.name for path in complete_checkpoints(tmp_path)] == ["checkpoint-000004", "checkpoint-000006"]
