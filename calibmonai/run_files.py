"""A run folder's files across re-runs: a new training never destroys an earlier one's weights.

MONAI's ``CheckpointSaver`` writes ``model.pt`` (and the profile's ``model_final.pt``) over whatever the checkpoint
folder holds, so re-running a training command (another epoch count, a mistyped flag) used to replace weights that
may have taken hours, with the calibrators fitted on them left beside the new weights. Every bundle's ``training``
workflow therefore calls :func:`keep_previous_weights` with its trainer: when its first training step has completed
(so a run that fails on its data, settings or first batch moves nothing), the files of ``<run_dir>/models``
(weights and the calibrators fitted on them, which belong together) move to
``models/previous/<time of the earlier weights>/``.

Every file the package writes for a user to keep (calibrators, output maps, previews, study records, check stamps)
is written through :func:`atomic_file`: to a hidden temporary name in the same folder, renamed when complete, so an
interrupted or failed write never leaves a truncated file under the final name.
"""

from __future__ import annotations

import datetime
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from calibmonai.progress import progress

__all__ = ["PREVIOUS_DIR", "atomic_file", "folder_lock", "keep_previous_weights"]

#: sub-folder of the checkpoint folder that keeps earlier trainings' files, one folder per training
PREVIOUS_DIR = "previous"


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield the temporary name to write ``path`` to: ``.tmp-<pid>-<name>`` in the same folder (hidden, and ending
    like ``path``, so writers that pick the format from the extension, such as nibabel's, still do). When the block
    ends without error the file is renamed to ``path`` (``os.replace``: atomic on one file system, an existing
    ``path`` replaced); when it raises, the temporary file is removed and ``path`` is left as it was. A process
    killed mid-write leaves ``path`` whole (an earlier version or none); no ``fsync`` is made, so a power loss just
    after the rename may still lose the new content.

    Example::

        with atomic_file("models/calibrator_ts.pt") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` itself (no lock file is left in it) while a read-modify-write of a
    file in it runs, so that two processes updating one record (two inference runs writing into one output folder)
    never lose each other's entries. Waits for the other holder; the system releases the lock when its holder dies.
    Where locks are unavailable (no ``fcntl``, a file system refusing them) the block runs unlocked.

    Example::

        with folder_lock(output_dir):
            records = read(record); records[case] = entry; write(record, records)
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # the folder cannot be opened: the block's own reads and writes will say what is wrong
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: run unlocked
            pass
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def keep_previous_weights(ckpt_dir: str | Path, trainer: Any = None) -> Path | None:
    """Move the files at the top of ``ckpt_dir`` (an earlier training's weights and the calibrators fitted on them)
    into ``ckpt_dir/previous/<YYYYmmdd-HHMMSS>/``, named after the newest of them, and say so; return that folder,
    or ``None`` when ``ckpt_dir`` holds no file (a first training). Sub-folders stay where they are.

    With ``trainer`` (an ignite ``Engine``) the files move when its first iteration has completed, not now: the
    bundle's ``training`` list builds the trainer (datasets, network, evaluator) before this call, and a run that
    stops before it has trained a step (bad data or settings, a first batch that does not fit, an epoch without any
    iteration) leaves the earlier weights in place; ``None`` is returned then. The checkpoint handlers write at the
    end of an epoch or a validation, after the move.
    Under ``torch.distributed`` rank 0 moves the files and every rank waits for it (a barrier), so no rank starts
    training while another is still moving the files it will write.
    """
    if trainer is not None:
        from ignite.engine import Events

        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda _engine: keep_previous_weights(ckpt_dir))
        return None
    import ignite.distributed as idist  # rank 0 and a no-op barrier outside torch.distributed

    ckpt_dir = Path(ckpt_dir)
    moved_to: Path | None = None
    if idist.get_rank() == 0 and ckpt_dir.is_dir():
        files = sorted(p for p in ckpt_dir.iterdir() if p.is_file())
        if files:
            stamp = datetime.datetime.fromtimestamp(max(p.stat().st_mtime for p in files)).strftime("%Y%m%d-%H%M%S")
            moved_to = ckpt_dir / PREVIOUS_DIR / stamp
            n = 1
            while moved_to.exists():  # two trainings within one second: keep both
                n += 1
                moved_to = ckpt_dir / PREVIOUS_DIR / f"{stamp}-{n}"
            moved_to.mkdir(parents=True)
            for p in files:
                shutil.move(str(p), str(moved_to / p.name))
            progress(
                f"[training] {ckpt_dir} held an earlier training's files ({', '.join(p.name for p in files)}): kept in "
                f"{moved_to}; the evaluations in the run folder belong to those weights until re-run"
            )
    idist.barrier()
    return moved_to
