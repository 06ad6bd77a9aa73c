"""Two CPU processes (DDP over gloo, launched with torchrun) train like one process on the same global batch.

This file is also the worker: ``python -m torch.distributed.run --standalone --nproc_per_node 2
tests/t0_recipes/test_accelerate.py OUT`` runs three trainings in each process and writes
their checkpoints under ``OUT``:

* ``plain``: no routing noise, no dropout, 6 steps (global batch 4 = 2 per process, 2 micro-batches per step);
* ``noisy``: relaxed-Bernoulli routing noise and dropout on, 6 steps;
* ``resumed``: the same as ``noisy``, killed after step 4 and resumed from its step-3 checkpoint.

The test compares ``plain`` with the same run in one process (tolerance 1e-5: the all-reduce
sums in another order) and ``resumed`` with ``noisy`` bit for bit. Random draws cannot match
across process counts (each process draws noise for its own half of the batch), hence ``plain``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
VOCAB, PROMPT, TARGET, N_TASKS = 32, 6, 4, 3
STEPS, BATCH, ACCUM, SEED = 6, 4, 2, 11


def tiny_poly_t5(*, noisy: bool) -> torch.nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    import tensoradapt as ta

    dropout = 0.1 if noisy else 0.0
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=dropout,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    model = T5ForConditionalGeneration(config)
    noise = "relaxed_bernoulli" if noisy else "none"
    ta.inject(model, ta.AdapterConfig(method="poly", n_tasks=N_TASKS, lora_rank=2, n_skills=4, routing_noise=noise, dropout=dropout))
    return model


def toy_dataset(n: int = 24) -> list[dict]:
    generator = torch.Generator().manual_seed(3)
    examples = []
    for index in range(n):
        prompt = torch.randint(2, VOCAB, (PROMPT,), generator=generator)
        task = index % N_TASKS
        examples.append({"input_ids": prompt, "labels": (prompt[:TARGET] + task) % (VOCAB - 2) + 2, "task_id": task})
    return examples


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    input_ids = torch.stack([e["input_ids"] for e in examples])
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": torch.stack([e["labels"] for e in examples]),  # same length: every process's mean weighs alike
        "task_ids": torch.tensor([e["task_id"] for e in examples]),
    }


class Killed(RuntimeError):
    pass


def run(output_dir: Path, *, noisy: bool, resume: bool = False, kill_after: int | None = None):
    from t0_recipes.training.optim import OptimConfig, build_optimization
    from t0_recipes.scoring.seq2seq import seq2seq_lm_loss
    from t0_recipes.training.loop import make_accelerator, train

    model = tiny_poly_t5(noisy=noisy)
    config = OptimConfig(lr=1e-2, lr_routing=0.1)
    optimizer, scheduler = build_optimization(model, config, total_steps=STEPS)

    def kill(info):
        if info.step == kill_after:
            raise Killed(f"killed after step {kill_after}")

    return train(
        model, seq2seq_lm_loss, toy_dataset(), collate_fn=collate, batch_size=BATCH, steps=STEPS,
        optimizer=optimizer, scheduler=scheduler, accelerator=make_accelerator(grad_accum=ACCUM, cpu=True),
        grad_clip=config.grad_clip, seed=SEED, output_dir=output_dir, checkpoint_every=3, resume=resume,
        callbacks=[kill] if kill_after else (), progress=False, log_every=1,
    )


def worker(out: Path) -> None:
    import torch.distributed as dist

    plain = run(out / "plain", noisy=False)
    run(out / "noisy", noisy=True)
    try:
        run(out / "resumed", noisy=True, kill_after=4)
        raise AssertionError("the run was not killed")
    except Killed:
        pass
    resumed = run(out / "resumed", noisy=True, resume=True)
    if dist.get_rank() == 0:
        summary = {"world_size": dist.get_world_size(), "plain_losses": plain.losses, "resumed_start": resumed.start_step}
        (out / "summary.json").write_text(json.dumps(summary))


# ----------------------------------------------------------------------------------- the test


def _trainable(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "checkpoint-000006" / "trainable.safetensors"))


def test_two_processes_match_one(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__, str(tmp_path)]
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-6000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["resumed_start"] == 3

    # one process, same global batch (4 = 2 x 2 processes), in this process
    from accelerate.state import AcceleratorState, GradientState

    try:
        single = run(tmp_path / "single", noisy=False)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    two, one = _trainable(tmp_path / "plain"), _trainable(tmp_path / "single")
    assert two.keys() == one.keys()
    initial = {name: p.detach() for name, p in tiny_poly_t5(noisy=False).named_parameters() if p.requires_grad}
    assert any(not torch.equal(one[name], initial[name]) for name in one)  # it trained
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-5, msg=name)
    assert summary["plain_losses"] == [float(f"{x}") for x in summary["plain_losses"]]
    torch.testing.assert_close(torch.tensor(summary["plain_losses"]), torch.tensor(single.losses), atol=1e-5, rtol=1e-5)

    # killed-and-resumed under DDP: bit-identical to the uninterrupted DDP run, noise and dropout included
    noisy, resumed = _trainable(tmp_path / "noisy"), _trainable(tmp_path / "resumed")
    for name in noisy:
        assert torch.equal(noisy[name], resumed[name]), name
    # every process saved its own generators, seeded apart
    checkpoint = tmp_path / "noisy" / "checkpoint-000003"
    states = [torch.load(checkpoint / f"rng_state_{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert not torch.equal(states[0]["torch"], states[1]["torch"])


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    worker(Path(sys.argv[1]))
