"""What a training run needs to continue exactly where it stopped, and how it lands on disk.

Layout of ``output_dir``::

    checkpoint-000400/
        trainable.safetensors     every trainable parameter, by its name in the (unwrapped) model
        adapter/                  tensoradapt.save_adapter output (adapted models only), for load_adapter
        optimizer.pt              optimiser state_dict (torch.save, loads with weights_only=True)
        scheduler.pt              scheduler state_dict
        rng_state_<rank>.pt       python, numpy, torch CPU (and CUDA) generators of every process
        train_state.json          `RunState`: step, data position, run settings; written last
    latest                        the name of the newest complete checkpoint, replaced atomically

A checkpoint is written into ``.tmp-checkpoint-000400`` and renamed to its final name with
one ``os.replace`` once every file is in it; ``latest`` is replaced after that. A crash at
any point leaves the previous checkpoint and ``latest`` as they were: a folder without the
``.tmp-`` prefix is always complete, and ``latest`` never names a half-written one.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_PREFIX",
    "LATEST",
    "STATE_NAME",
    "RunState",
    "capture_rng_state",
    "checkpoint_name",
    "commit_checkpoint",
    "complete_checkpoints",
    "latest_checkpoint",
    "prune_checkpoints",
    "read_run_state",
    "restore_rng_state",
    "rng_state_path",
    "start_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
LATEST = "latest"
STATE_NAME = "train_state.json"
_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


@dataclass
class RunState:
    """Where a run is and the settings its data order depends on (``train_state.json``).

    Attributes:
        step: optimiser steps done.
        batches_seen: global micro-batches consumed (``step * grad_accum``).
        epoch: pass over the dataset the next example comes from.
        position: index of the next example in that epoch's order.
        total_steps: the run's planned number of steps.
        batch_size: global micro-batch size (all processes together).
        grad_accum: micro-batches per optimiser step.
        seed: seed of the data order and of the training generators.
        dataset_size: examples in the dataset.
        world_size: processes that wrote the checkpoint (one ``rng_state_<rank>.pt`` each).
    """

    step: int
    batches_seen: int
    epoch: int
    position: int
    total_steps: int
    batch_size: int
    grad_accum: int
    seed: int
    dataset_size: int
    world_size: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunState:
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        missing = names - set(data)
        if missing:
            raise ValueError(f"{STATE_NAME} lacks {sorted(missing)}")
        return cls(**{key: data[key] for key in names})


def checkpoint_name(step: int) -> str:
    """``checkpoint-000400`` (zero-padded so names sort by step)."""
    return f"{CHECKPOINT_PREFIX}{step:06d}"


def rng_state_path(checkpoint: Path, rank: int) -> Path:
    return Path(checkpoint) / f"rng_state_{rank}.pt"


def capture_rng_state() -> dict[str, Any]:
    """This process's generators: python ``random``, numpy's global one, torch CPU and every CUDA device.

    Plain containers of ints, floats and tensors, so ``torch.load(weights_only=True)`` reads them.
    """
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the generators captured by `capture_rng_state`."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        if torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            logger.warning("the checkpoint holds CUDA generator states but CUDA is not available; they are ignored")


def read_run_state(checkpoint: str | os.PathLike) -> RunState:
    return RunState.from_json((Path(checkpoint) / STATE_NAME).read_text())


def _is_complete(path: Path) -> bool:
    return path.is_dir() and _NAME.match(path.name) is not None and (path / STATE_NAME).is_file()


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of ``output_dir``, oldest step first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [path for path in output_dir.iterdir() if _is_complete(path)]
    return sorted(found, key=lambda path: int(_NAME.match(path.name).group(1)))


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``latest`` names; without a ``latest`` file, the newest complete one; else ``None``.

    Raises:
        ValueError: ``latest`` names a folder that is missing or incomplete (edited by hand?).
    """
    output_dir = Path(output_dir)
    pointer = output_dir / LATEST
    if pointer.is_file():
        name = pointer.read_text().strip()
        path = output_dir / name
        if not _is_complete(path):
            raise ValueError(
                f"{pointer} names {name!r}, which is not a complete checkpoint (no {STATE_NAME}); "
                f"point it at one of {[p.name for p in complete_checkpoints(output_dir)]} or delete it"
            )
        return path
    found = complete_checkpoints(output_dir)
    if found:
        logger.warning("%s has no %r file; resuming from the newest complete checkpoint %s", output_dir, LATEST, found[-1])
        return found[-1]
    return None


def start_checkpoint(output_dir: str | os.PathLike, step: int) -> Path:
    """An empty temporary folder for the checkpoint of ``step`` (a stale one from a crash is removed).

    Call on the main process only, then let every process write into it.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    temporary = output_dir / f"{TMP_PREFIX}{checkpoint_name(step)}"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()
    return temporary


def commit_checkpoint(temporary: str | os.PathLike, state: RunState) -> Path:
    """Write ``train_state.json`` into ``temporary``, rename it to its final name, then point ``latest`` at it.

    Call on the main process only, after every process has written its files.
    """
    from tensoradapt.atomic import atomic_write

    temporary = Path(temporary)
    output_dir = temporary.parent
    name = checkpoint_name(state.step)
    final = output_dir / name
    text = state.to_json()
    atomic_write(temporary / STATE_NAME, lambda tmp: Path(tmp).write_text(text))
    _fsync_tree(temporary)
    trash = None
    if final.exists():  # a complete checkpoint of the same step, left by a run that was not resumed from it
        trash = output_dir / f"{TRASH_PREFIX}{name}"
        if trash.exists():
            shutil.rmtree(trash)
        os.replace(final, trash)
    os.replace(temporary, final)
    _fsync_dir(output_dir)
    atomic_write(output_dir / LATEST, lambda tmp: Path(tmp).write_text(name + "\n"))
    _fsync_dir(output_dir)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    return final


def prune_checkpoints(output_dir: str | os.PathLike, keep_last: int | None) -> list[Path]:
    """Delete all but the ``keep_last`` newest complete checkpoints (never the one ``latest`` names).

    Returns:
        The deleted folders.
    """
    if keep_last is None:
        return []
    if keep_last < 1:
        raise ValueError(f"keep_last={keep_last} must be at least 1 (or None: keep every checkpoint)")
    found = complete_checkpoints(output_dir)
    current = latest_checkpoint(output_dir)
    removed = []
    for path in found[:-keep_last]:
        if current is not None and path.resolve() == current.resolve():
            continue
        shutil.rmtree(path)
        removed.append(path)
    return removed


def _fsync_tree(root: Path) -> None:
    """Flush every file under ``root``, then the folders, so the rename publishes data that is on disk."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(folder))


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames) to disk where the platform allows it."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
