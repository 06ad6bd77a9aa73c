"""One training loop for multi-task pre-training and few-shot adaptation, resumable bit for bit.

``train(model, loss_fn, dataset, ...)`` runs ``steps`` optimiser steps of ``loss_fn(model, batch)``
(a scalar tensor, or an object with a ``.loss`` such as `t0_recipes.losses.LossOutput`) on
batches of a `SeededBatchSampler`, through an ``accelerate.Accelerator``:

* distribution: ``accelerator.prepare`` wraps the model (DDP, or FSDP from the accelerate
  config), the optimiser, the scheduler and the data loader; ``accelerator.backward``,
  ``accelerator.accumulate`` (gradient accumulation without all-reduce on the inner
  micro-batches), ``accelerator.clip_grad_norm_`` and ``accelerator.gather`` (logged loss) do
  the rest. Every global batch is split across the processes (``split_batches=True``), so a
  run sees the same examples in the same steps whatever the number of processes;
* mixed precision: ``Accelerator(mixed_precision="bf16")`` (`make_accelerator`);
* checkpoints every ``checkpoint_every`` steps and at the end, written atomically (see
  `t0_recipes.training.run_state`): trainable weights, optimiser, scheduler, step and data position,
  and every process's generators;
* ``resume=True`` continues from the ``latest`` checkpoint: the same batches, optimiser state,
  learning rate and random streams (relaxed-Bernoulli routing noise, dropout), so a run killed
  and resumed ends with the same weights, bit for bit, as one that was never stopped.

Data order: the example stream is epoch 0's permutation, then epoch 1's, ... where epoch
``e``'s permutation is a pure function of ``(seed, e)``; batch ``b`` is examples
``[b * batch_size, (b + 1) * batch_size)`` of that stream. Nothing about the order is state:
resuming at step ``k`` starts at batch ``k * grad_accum``.

Routing: ``loss_fn`` passes task ids as ``model(**inputs, task_ids=ids)`` (see
`t0_recipes.scoring.seq2seq.seq2seq_lm_loss`); tensoradapt pops them in a forward pre-hook, and DDP passes keyword
arguments through. Under DDP ``loss_fn`` must call ``model`` itself (the wrapper): a call of a
sub-module (``model.module.get_encoder()``) bypasses DDP's forward and its gradients are not
all-reduced.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from t0_recipes.training.run_state import (
    RunState,
    capture_rng_state,
    checkpoint_name,
    commit_checkpoint,
    complete_checkpoints,
    latest_checkpoint,
    prune_checkpoints,
    read_run_state,
    restore_rng_state,
    rng_state_path,
    start_checkpoint,
)

__all__ = [
    "ADAPTER_DIR",
    "OPTIMIZER_NAME",
    "SCHEDULER_NAME",
    "TRAINABLE_NAME",
    "SeededBatchSampler",
    "StepInfo",
    "TrainResult",
    "load_trainable",
    "make_accelerator",
    "train",
    "trainable_state_dict",
]

logger = logging.getLogger(__name__)

TRAINABLE_NAME = "trainable.safetensors"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
ADAPTER_DIR = "adapter"
_PRECISIONS = {"fp32": "no", "no": "no", "bf16": "bf16", "fp16": "fp16"}


class SeededBatchSampler:
    """Batches of dataset indices whose order is a pure function of ``(seed, batch index)``.

    The stream of examples is the concatenation of one permutation per epoch,
    ``numpy.random.default_rng([seed, epoch]).permutation(dataset_size)``; batch ``b`` is the
    stream's ``[b * batch_size, (b + 1) * batch_size)`` slice (a batch can straddle two epochs,
    so every batch is full). Iterating yields batches ``start_batch .. start_batch + num_batches - 1``.

    Args:
        dataset_size: examples in the dataset.
        batch_size: examples per batch (the global batch: all processes together).
        seed: seed of the order.
        start_batch: first batch to yield.
        num_batches: batches to yield.
    """

    drop_last = False

    def __init__(self, dataset_size: int, batch_size: int, *, seed: int = 0, start_batch: int = 0, num_batches: int) -> None:
        if dataset_size < 1:
            raise ValueError(f"dataset_size={dataset_size} must be at least 1")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        if start_batch < 0 or num_batches < 0:
            raise ValueError(f"start_batch={start_batch} and num_batches={num_batches} must be >= 0")
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.seed = seed
        self.start_batch = start_batch
        self.num_batches = num_batches
        self._orders: dict[int, tuple[int, ...]] = {}

    def epoch_order(self, epoch: int) -> tuple[int, ...]:
        """Permutation of the dataset for ``epoch``."""
        if epoch not in self._orders:
            if len(self._orders) >= 4:
                self._orders.pop(next(iter(self._orders)))
            order = np.random.default_rng([self.seed, epoch]).permutation(self.dataset_size)
            self._orders[epoch] = tuple(int(i) for i in order)
        return self._orders[epoch]

    def position(self, batch: int) -> tuple[int, int]:
        """``(epoch, index in that epoch's order)`` of the first example of ``batch``."""
        return divmod(batch * self.batch_size, self.dataset_size)

    def batch_indices(self, batch: int) -> list[int]:
        """Dataset indices of ``batch``."""
        indices: list[int] = []
        cursor = batch * self.batch_size
        while len(indices) < self.batch_size:
            epoch, offset = divmod(cursor, self.dataset_size)
            take = min(self.batch_size - len(indices), self.dataset_size - offset)
            indices += self.epoch_order(epoch)[offset : offset + take]
            cursor += take
        return indices

    def __iter__(self) -> Iterator[list[int]]:
        for batch in range(self.start_batch, self.start_batch + self.num_batches):
            yield self.batch_indices(batch)

    def __len__(self) -> int:
        return self.num_batches


def make_accelerator(*, grad_accum: int = 1, mixed_precision: str = "no", cpu: bool = False, **kwargs: Any):
    """An ``accelerate.Accelerator`` as `train` needs it: global batches split across processes.

    Args:
        grad_accum: micro-batches per optimiser step.
        mixed_precision: ``"no"`` / ``"fp32"``, ``"bf16"`` (autocast, the T0 recipes on a GPU) or ``"fp16"``.
        cpu: force the CPU even where a GPU is visible.
        kwargs: more ``Accelerator`` arguments. DDP vs FSDP, the number of processes and the
            backend come from ``accelerate launch`` / the accelerate config, as usual.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    if grad_accum < 1:
        raise ValueError(f"grad_accum={grad_accum} must be at least 1")
    if mixed_precision not in _PRECISIONS:
        raise ValueError(f"mixed_precision={mixed_precision!r} is unknown; choose one of {sorted(_PRECISIONS)}")
    return Accelerator(
        gradient_accumulation_steps=grad_accum,
        mixed_precision=_PRECISIONS[mixed_precision],
        cpu=cpu,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        **kwargs,
    )


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter with ``requires_grad``, by name, detached, contiguous, on the CPU."""
    return {
        name: parameter.detach().contiguous().cpu()
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }


def load_trainable(model: nn.Module, path: str | os.PathLike) -> None:
    """Copy the tensors of a `trainable_state_dict` file into ``model``'s trainable parameters.

    Raises:
        ValueError: the file and the model's trainable parameters differ in a name or a shape.
    """
    from safetensors.torch import load_file

    saved = load_file(str(path))
    parameters = dict(model.named_parameters())
    trainable = {name for name, parameter in parameters.items() if parameter.requires_grad}
    for name in sorted(trainable | set(saved)):
        if name not in saved:
            raise ValueError(f"trainable parameter {name!r} is missing from {path}: the training mode or adapters differ")
        if name not in trainable:
            raise ValueError(f"{path} holds {name!r}, which is not a trainable parameter of the model")
        if saved[name].shape != parameters[name].shape:
            raise ValueError(
                f"{path} holds {name!r} of shape {tuple(saved[name].shape)}, the model's is {tuple(parameters[name].shape)}"
            )
    with torch.no_grad():
        for name, tensor in saved.items():
            parameters[name].copy_(tensor)


@dataclass
class StepInfo:
    """What a callback sees after every optimiser step.

    Attributes:
        step: steps done (1-based).
        total_steps: the run's number of steps.
        loss: ``()`` the step's loss, averaged over micro-batches and processes (on the device).
        lrs: learning rate of every parameter group for this step, by group name (or index).
        checkpoint: the checkpoint written after this step, if any.
    """

    step: int
    total_steps: int
    loss: torch.Tensor
    lrs: dict[str, float]
    checkpoint: Path | None = None


@dataclass
class TrainResult:
    """What a `train` call did.

    Attributes:
        start_step: steps already done when the call started (a resumed run's checkpoint step).
        steps: the run's total steps (done when the call returns).
        losses: loss of every step this call ran (averaged over micro-batches and processes).
        lrs: learning rates of every step this call ran, by group name.
        checkpoint: the last checkpoint written (or resumed from), if any.
        wall_time_s: seconds spent in the call.
    """

    start_step: int
    steps: int
    losses: list[float] = field(default_factory=list)
    lrs: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    wall_time_s: float = 0.0


def _group_lrs(optimizer) -> dict[str, float]:
    return {str(group.get("name", index)): float(group["lr"]) for index, group in enumerate(optimizer.param_groups)}


def _loss_of(output: Any) -> torch.Tensor:
    loss = getattr(output, "loss", output)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar tensor or an object with a scalar .loss, got {type(output).__name__}")
    return loss


def _save_weights(model: nn.Module, directory: Path, *, with_adapter: bool) -> None:
    from safetensors.torch import save_file

    save_file(trainable_state_dict(model), str(directory / TRAINABLE_NAME), metadata={"format": "pt"})
    if with_adapter:
        from tensoradapt import adapted_layers, save_adapter

        if adapted_layers(model):
            save_adapter(model, directory / ADAPTER_DIR)


def _save_optimizer(optimizer, directory: Path) -> None:
    torch.save(optimizer.state_dict(), directory / OPTIMIZER_NAME)


def _save_scheduler(scheduler, directory: Path) -> None:
    if scheduler is not None:
        torch.save(scheduler.state_dict(), directory / SCHEDULER_NAME)


def _save_checkpoint(
    accelerator, model: nn.Module, optimizer, scheduler, state: RunState, output_dir: Path, *, with_adapter: bool, keep_last: int | None
) -> Path:
    """Every process writes its generators; the main one the rest; ``latest`` moves last."""
    temporary = output_dir / f".tmp-{checkpoint_name(state.step)}"
    if accelerator.is_main_process:
        start_checkpoint(output_dir, state.step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _save_weights(accelerator.unwrap_model(model), temporary, with_adapter=with_adapter)
        _save_optimizer(optimizer, temporary)
        _save_scheduler(scheduler, temporary)
    torch.save(capture_rng_state(), rng_state_path(temporary, accelerator.process_index))
    accelerator.wait_for_everyone()
    final = output_dir / checkpoint_name(state.step)
    if accelerator.is_main_process:
        final = commit_checkpoint(temporary, state)
        prune_checkpoints(output_dir, keep_last)
    accelerator.wait_for_everyone()
    return final


def _check_resumable(state: RunState, expected: dict[str, int], checkpoint: Path) -> None:
    for name, value in expected.items():
        if getattr(state, name) != value:
            raise ValueError(
                f"cannot resume from {checkpoint}: it was written with {name}={getattr(state, name)} but this run has "
                f"{name}={value}; the data order would differ. Use the same settings or another output_dir"
            )


def train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], Any],
    dataset: Sequence[Any],
    *,
    collate_fn: Callable[[list[Any]], Any],
    batch_size: int,
    steps: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    accelerator=None,
    grad_accum: int | None = None,
    grad_clip: float | None = 1.0,
    seed: int = 0,
    seed_rngs: bool = True,
    output_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    keep_last: int | None = None,
    save_adapter: bool = True,
    resume: bool = False,
    progress: bool = True,
    log_every: int = 10,
    desc: str = "train",
    callbacks: Sequence[Callable[[StepInfo], None]] = (),
) -> TrainResult:
    """``steps`` optimiser steps of ``loss_fn`` over ``dataset`` (see the module docstring).

    Args:
        model: the model; what trains is what has ``requires_grad`` (and is in ``optimizer``).
        loss_fn: ``loss_fn(model, batch)`` -> scalar tensor or an object with ``.loss``; ``model``
            is the prepared one (a DDP wrapper when distributed).
        dataset: indexable examples; ``collate_fn(list of examples)`` makes a batch (a dict of
            tensors, moved to the device by accelerate).
        batch_size: global micro-batch (all processes together; each gets ``batch_size / processes``).
        steps: total optimiser steps of the run (a resumed run continues to the same total).
        optimizer, scheduler: built over ``model``'s parameters (`t0_recipes.training.optim`); the
            scheduler steps once per optimiser step.
        accelerator: an ``Accelerator`` with ``split_batches=True``; default `make_accelerator`
            with ``grad_accum``.
        grad_accum: micro-batches per step (default: the accelerator's, else 1).
        grad_clip: max global gradient norm (``None`` / ``0``: no clipping).
        seed: seed of the data order; on a fresh start also of the generators of the training
            (``seed + process index``; ``seed_rngs=False`` leaves them alone).
        output_dir: checkpoint folder (``None``: no checkpoints, no resume).
        checkpoint_every: steps between checkpoints; the last step is always saved when
            ``output_dir`` is set.
        keep_last: keep only this many newest checkpoints (``None``: all).
        save_adapter: also write ``adapter/`` (`tensoradapt.save_adapter`) in every checkpoint.
        resume: continue from ``output_dir``'s ``latest`` checkpoint when there is one. The model,
            optimiser and scheduler must be built as in the first run; their state is loaded here.
        progress: tqdm bar (main process only).
        log_every: steps between loss checks / log lines.
        callbacks: called with a `StepInfo` after every step (and its checkpoint), on every process.

    Raises:
        FloatingPointError: a non-finite loss (checked every ``log_every`` steps and at the end).
        ValueError: a resumed checkpoint was written with another batch size, grad_accum, seed or dataset.
    """
    started = time.perf_counter()
    if steps < 1:
        raise ValueError(f"steps={steps} must be at least 1")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every={checkpoint_every} must be at least 1 (or None)")
    if log_every < 1:
        raise ValueError(f"log_every={log_every} must be at least 1")
    if (checkpoint_every is not None or resume) and output_dir is None:
        raise ValueError("checkpoint_every and resume need an output_dir")
    if accelerator is None:
        accelerator = make_accelerator(grad_accum=grad_accum or 1)
    elif grad_accum is not None and grad_accum != accelerator.gradient_accumulation_steps:
        raise ValueError(
            f"grad_accum={grad_accum} but the accelerator accumulates {accelerator.gradient_accumulation_steps} "
            "micro-batches; set it in one place"
        )
    grad_accum = accelerator.gradient_accumulation_steps
    if not accelerator.split_batches:
        raise ValueError(
            "the accelerator must split global batches across processes: "
            "Accelerator(dataloader_config=DataLoaderConfiguration(split_batches=True)) (see make_accelerator)"
        )
    if batch_size % accelerator.num_processes:
        raise ValueError(f"batch_size={batch_size} must be a multiple of the {accelerator.num_processes} processes")
    output_dir = Path(output_dir) if output_dir is not None else None
    if output_dir is not None:
        from accelerate.utils import DistributedType

        if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            raise NotImplementedError(
                f"checkpoints under {accelerator.distributed_type} are not implemented (sharded optimiser state); "
                "train with DDP, or without output_dir"
            )

    run_settings = {"batch_size": batch_size, "grad_accum": grad_accum, "seed": seed, "dataset_size": len(dataset)}
    checkpoint = latest_checkpoint(output_dir) if resume else None
    start_step = 0
    if checkpoint is not None:
        saved = read_run_state(checkpoint)
        _check_resumable(saved, run_settings, checkpoint)
        if saved.total_steps != steps:
            logger.warning("resuming %s (planned for %d steps) for %d steps", checkpoint, saved.total_steps, steps)
        start_step = min(saved.step, steps)
    elif resume:
        logger.info("resume=True but %s holds no checkpoint: starting from step 0", output_dir)
    elif output_dir is not None and complete_checkpoints(output_dir):
        logger.warning("%s already holds checkpoints; this fresh run replaces them as it goes", output_dir)

    sampler = SeededBatchSampler(
        len(dataset), batch_size, seed=seed, start_batch=start_step * grad_accum, num_batches=(steps - start_step) * grad_accum
    )
    # The loader's own generator: creating its iterator must not draw from the global torch generator.
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, generator=torch.Generator())
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if scheduler is not None:
        scheduler = accelerator.prepare(scheduler)

    if checkpoint is not None:
        load_trainable(accelerator.unwrap_model(model), checkpoint / TRAINABLE_NAME)
        optimizer.load_state_dict(torch.load(checkpoint / OPTIMIZER_NAME, map_location="cpu", weights_only=True))
        if scheduler is not None:
            scheduler.load_state_dict(torch.load(checkpoint / SCHEDULER_NAME, weights_only=True))
        rng_file = rng_state_path(checkpoint, accelerator.process_index)
        if rng_file.is_file() and saved.world_size == accelerator.num_processes:
            restore_rng_state(torch.load(rng_file, weights_only=True))
        else:
            logger.warning(
                "%s was written by %d processes, this run has %d: random streams are reseeded, not restored",
                checkpoint, saved.world_size, accelerator.num_processes,
            )
            _seed_everything(seed + 1_000_003 * start_step, accelerator)
        logger.info("resumed from %s at step %d", checkpoint, start_step)
    elif seed_rngs:
        _seed_everything(seed, accelerator)

    result = TrainResult(start_step=start_step, steps=steps, checkpoint=checkpoint)
    if start_step >= steps:
        result.wall_time_s = time.perf_counter() - started
        return result

    accelerator.step = 0  # accumulation counter: every call starts on a step boundary
    was_training = model.training
    model.train()
    bar = tqdm(
        total=steps, initial=start_step, desc=desc, disable=not (progress and accelerator.is_local_main_process), leave=False
    )
    losses: list[torch.Tensor] = []
    batches = iter(loader)
    checked = 0
    try:
        for step in range(start_step + 1, steps + 1):
            lrs = _group_lrs(optimizer)
            step_loss = None
            for _ in range(grad_accum):
                batch = next(batches)
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        loss = _loss_of(loss_fn(model, batch))
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and grad_clip:
                        accelerator.clip_grad_norm_(model.parameters(), grad_clip)
                    optimizer.step()
                    if scheduler is not None:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                detached = loss.detach().float()
                step_loss = detached if step_loss is None else step_loss + detached
            step_loss = accelerator.gather((step_loss / grad_accum).reshape(1)).mean()
            losses.append(step_loss)
            result.lrs.append(lrs)
            bar.update(1)
            if step % log_every == 0 or step == steps:
                checked = _check_losses(losses, checked, start_step)
                bar.set_postfix(loss=f"{float(step_loss):.4f}")
                logger.info("step %d/%d loss %.4f lr %s", step, steps, float(step_loss), lrs)
            written = None
            if output_dir is not None and ((checkpoint_every and step % checkpoint_every == 0) or step == steps):
                position = divmod(step * grad_accum * batch_size, len(dataset))
                state = RunState(
                    step=step,
                    batches_seen=step * grad_accum,
                    epoch=position[0],
                    position=position[1],
                    total_steps=steps,
                    world_size=accelerator.num_processes,
                    **run_settings,
                )
                written = _save_checkpoint(
                    accelerator, model, optimizer, scheduler, state, output_dir, with_adapter=save_adapter, keep_last=keep_last
                )
                result.checkpoint = written
            for callback in callbacks:
                callback(StepInfo(step=step, total_steps=steps, loss=step_loss, lrs=lrs, checkpoint=written))
    finally:
        bar.close()
        model.train(was_training)
        if hasattr(loader, "end"):
            loader.end()  # an interrupted loader would stay registered with accelerate's GradientState
        result.losses = [float(loss) for loss in losses]
        result.wall_time_s = time.perf_counter() - started
    return result


def _check_losses(losses: list[torch.Tensor], checked: int, start_step: int) -> int:
    recent = torch.stack(losses[checked:])
    if not bool(torch.isfinite(recent).all()):
        bad = checked + int((~torch.isfinite(recent)).nonzero()[0, 0])
        raise FloatingPointError(f"loss is {float(losses[bad])} at step {start_step + bad + 1}")
    return len(losses)


def _seed_everything(seed: int, accelerator) -> None:
    from accelerate.utils import set_seed

    set_seed(seed + accelerator.process_index)
