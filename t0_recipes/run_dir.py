"""A recipe run's output folder: one run at a time, and never old and new results mixed.

`claim_output_dir` takes an exclusive lock (``<out>/.lock``, ``fcntl.flock``: released by the
kernel when the process ends, however it ends) and refuses a folder that already holds results
unless the run says what to do with them: ``--resume`` (continue the pre-training found there)
or ``--overwrite`` (delete them first).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LOCK_NAME", "OutputDirError", "claim_output_dir"]

LOCK_NAME = ".lock"


class OutputDirError(RuntimeError):
    """The output folder is in use by another run, or holds results the run was not told to keep or replace."""


@contextmanager
def claim_output_dir(path: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> Iterator[Path]:
    """Hold ``path`` for the length of the block.

    Args:
        path: the run's ``--output-dir`` (created if missing).
        resume: the folder's contents are the run's own earlier work, to continue.
        overwrite: delete the folder's contents before the run starts.

    Raises:
        OutputDirError: another process holds the lock; or the folder is not empty and neither
            ``resume`` nor ``overwrite`` is set; or both are set.
    """
    if resume and overwrite:
        raise OutputDirError("--resume and --overwrite contradict each other: continue the run there, or replace it")
    folder = Path(path)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_NAME, "a+")  # noqa: SIM115 - held open for the block: the lock lives with it
    failed = False
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputDirError(
                f"--output-dir {folder} is in use by another run (lock {folder / LOCK_NAME}); "
                "wait for it to finish or choose another folder"
            ) from None
        contents = sorted(entry.name for entry in folder.iterdir() if entry.name != LOCK_NAME)
        if contents and overwrite:
            for name in contents:
                entry = folder / name
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        elif contents and not resume:
            shown = ", ".join(contents[:5]) + (", ..." if len(contents) > 5 else "")
            raise OutputDirError(
                f"--output-dir {folder} already holds results ({shown}); pass --resume to continue that run, "
                "--overwrite to replace it, or choose an empty folder"
            )
        try:
            yield folder
        except BaseException:
            failed = True
            raise
    finally:
        handle.close()
        if failed and created and [entry.name for entry in folder.iterdir()] == [LOCK_NAME]:
            shutil.rmtree(folder)  # a run that failed before writing anything leaves no folder behind
