"""A run folder's files across re-runs: a new training never destroys an earlier one's weights.

MONAI's ``CheckpointSaver`` writes ``model.pt`` (and the profile's ``model_final.pt``) over whatever the checkpoint
folder holds, so re-running a training command (another epoch count, a mistyped flag) used to replace weights that
may have taken hours, with the calibrators fitted on them left beside the new weights. Every bundle's ``training``
workflow therefore calls :func:`keep_previous_weights` with its trainer: when its first training step has completed
(so a run that fails on its data, settings or first batch moves nothing), the files of ``<run_dir>/models``
(weights and the calibrators fitted on them, which belong together) move to
``models/previous/<time of the earlier weights>/``.

A training stopped before its last epoch (a Slurm time limit, Ctrl-C, a lost node) continues from its last completed
epoch when run again with ``--resume true`` (:func:`resumable_training`): the checkpoint folder keeps
``resume.pt`` (network, optimiser, LR schedules, AMP scaler, epoch, best validation score, random states of torch, numpy
and the training transforms) from
epoch to epoch until the training completes.

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

__all__ = [
    "PREVIOUS_DIR", "RESUME_FILE", "FOLDER_LOCK", "LockBusy", "ResumeRefused", "atomic_file", "locked_file", "folder_lock",
    "keep_previous_weights", "resumable_training",
]  # fmt: skip

#: sub-folder of the checkpoint folder that keeps earlier trainings' files, one folder per training
PREVIOUS_DIR = "previous"
#: the training state kept in the checkpoint folder after every epoch until the training completes
RESUME_FILE = "resume.pt"


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


#: the hidden file a folder's lock is taken on (:func:`folder_lock`)
FOLDER_LOCK = ".calibmonai.lock"


class LockBusy(RuntimeError):
    """A non-blocking :func:`locked_file` found the lock held; ``holder`` is what its holder wrote in the file."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


@contextmanager
def locked_file(path: str | os.PathLike, blocking: bool = True) -> Iterator[Any]:
    """Hold an exclusive ``flock`` on the file ``path`` (created, folders too) and yield it open (``a+``), or ``None``
    where locks are unavailable (no ``fcntl``, a folder that cannot be written, a file system refusing locks: the
    block then runs unlocked). The system releases the lock when its holder dies; on NFS, Linux takes it as a lock of
    the whole file on the server, so it holds between machines.

    Raises:
        LockBusy: with ``blocking=False``, when another process holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield None
        return
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")
    except OSError:
        yield None
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            locked = True
        except BlockingIOError:
            f.seek(0)
            raise LockBusy(f.read().strip() or "?") from None
        except OSError:
            locked = False
        try:
            yield f if locked else None
        finally:
            if locked:
                fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of ``folder`` (its hidden ``.calibmonai.lock``, :func:`locked_file`) while a read-modify-write of
    a file in it runs, so that two processes updating one record (two inference runs writing into one output folder,
    on one machine or two sharing the folder) never lose each other's entries. Waits for the other holder.

    Example::

        with folder_lock(output_dir):
            records = read(record); records[case] = entry; write(record, records)
    """
    with locked_file(Path(folder) / FOLDER_LOCK):
        yield

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


def _attached(engine: Any, kind: type) -> list[Any]:
    """The handler objects of class ``kind`` attached to ``engine`` (their bound methods or the objects themselves
    among its event handlers), in attachment order, each once."""
    found: list[Any] = []
    for handlers in getattr(engine, "_event_handlers", {}).values():
        for func, *_ in handlers:
            owner = func if isinstance(func, kind) else getattr(func, "__self__", None)
            if isinstance(owner, kind) and all(owner is not f for f in found):
                found.append(owner)
    return found


def _numpy_state(state: tuple) -> tuple:
    """A numpy ``RandomState.get_state()`` with its key array as a tensor, so the file loads with
    ``torch.load(weights_only=True)`` (data only, no pickled code)."""
    import torch

    name, keys, pos, has_gauss, cached = state
    return (str(name), torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached))


def _numpy_state_back(state: tuple) -> tuple:
    import numpy as np

    name, keys, pos, has_gauss, cached = state
    return (name, np.asarray(keys.numpy(), dtype=np.uint32), pos, has_gauss, cached)


def _random_states() -> dict[str, Any]:
    import random

    import numpy as np
    import torch

    states = {"python": random.getstate(), "numpy": _numpy_state(np.random.get_state()), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_random_states(states: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(states["python"])
    np.random.set_state(_numpy_state_back(states["numpy"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def _random_transforms(trainer: Any) -> list[Any]:
    """The randomised transforms (MONAI ``Randomizable``) of the trainer's training dataset, each once, in a fixed
    order: their random states go into the saved state, so the crops and flips after a resume are those an
    uninterrupted run would have drawn."""
    from monai.transforms import Randomizable, Transform

    found: list[Any] = []
    stack = [getattr(getattr(trainer, "data_loader", None), "dataset", None)]
    seen: set[int] = set()
    while stack:
        obj = stack.pop(0)
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Randomizable):
            found.append(obj)
        if isinstance(obj, Transform):  # its parts: a Compose's transforms, a dictionary transform's array transform
            for value in vars(obj).values():
                parts = value if isinstance(value, (list, tuple)) else [value]
                stack.extend(v for v in parts if isinstance(v, Transform))
        else:  # a dataset, possibly wrapping others
            stack.extend([getattr(obj, "transform", None), getattr(obj, "dataset", None), *(getattr(obj, "datasets", None) or [])])
    return found


class ResumeRefused(ValueError):
    """A ``resume.pt`` of other settings or more epochs than the run that would continue it."""


def _plain(network: Any) -> Any:
    """The network inside ``DistributedDataParallel`` (its state dict without the ``module.`` prefix), so a training
    stopped under ``torchrun`` can continue in one process and the other way round."""
    return getattr(network, "module", network) if type(network).__name__ == "DistributedDataParallel" else network


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files :func:`atomic_file` left in ``folder`` when its writer was killed (``SIGKILL``, or
    ``SIGTERM``, which ends Python without running ``finally``): ``.tmp-<pid>-<name>`` whose process no longer
    runs. Returns the removed paths."""
    removed = []
    for p in Path(folder).glob(".tmp-*-*") if Path(folder).is_dir() else []:
        try:
            pid = int(p.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
            continue  # its writer still runs
        except ProcessLookupError:
            pass
        except PermissionError:  # another user's live process
            continue
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed




def _setting_differences(saved: Any, current: Any, ignore: tuple[str, ...] = (), only: Any = None) -> list[str]:
    """``key: saved -> current`` for the entries of two settings dicts that differ (numbers to 1e-12 relative),
    leaving out ``ignore`` and ``"params"``, and with ``only`` just those keys."""
    import math

    out = []
    for key in sorted(set(saved) | set(current)):
        if key in ignore or key == "params" or (only is not None and key not in only):
            continue
        a, b = saved.get(key, "absent"), current.get(key, "absent")
        same = a == b
        if not same and isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            same = math.isclose(float(a), float(b), rel_tol=1e-12)
        if not same:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


def _schedule_settings(schedule: Any) -> set[str]:
    """The settings of an LR schedule: its constructor's parameters (``step_size``, ``gamma``, ``T_0``...), not its
    progress (``last_epoch``, ``T_cur``, ``num_bad_epochs``...) nor the optimiser."""
    import inspect

    try:
        names = set(inspect.signature(type(schedule).__init__).parameters)
    except (TypeError, ValueError):
        return set()
    return names - {"self", "optimizer", "last_epoch", "verbose", "schedulers"}


def resumable_training(ckpt_dir: str | Path, trainer: Any, evaluator: Any = None, resume: Any = False) -> int:
    """Make a bundle's training continue where a stopped run left it, and keep earlier trainings' weights.

    After every training epoch (and its validation) the training state is written to ``<ckpt_dir>/resume.pt``
    (atomically, rank 0): the network (without ``DistributedDataParallel``'s wrapper), the optimiser and its class,
    every ``LrScheduleHandler``'s schedule, the AMP scaler, the trainer's epoch and iteration, the evaluator's best
    metric and epoch, the best-checkpoint tracker of its ``CheckpointSaver`` (so a resumed run replaces ``model.pt``
    only with a better one), the rows of its validation curves and the random states. The file is removed when the
    training completes its epochs; a run that stops before (time limit, Ctrl-C, a crash) keeps it.

    With ``resume`` true and ``resume.pt`` present, the state is loaded and the trainer continues from the epoch
    after the saved one up to its ``max_epochs`` (a larger ``--epochs`` extends the run); ``curves.csv`` is written
    again with the stopped run's rows and goes on. With the random states of torch, numpy, Python and of every
    randomised training transform restored, a resumed single-process run trains the same weights as an
    uninterrupted one (tested on the CPU); under ``torchrun`` the weights continue but are not bit-identical
    (``DistributedDataParallel`` rebuilds its gradient buckets, which sums gradients in another order), nor are
    GPU kernels that are not deterministic. A state whose training had run all its epochs (the process ended before
    its last handlers) completes without training. With ``resume`` false, or nothing to resume, the training starts
    from scratch and an earlier training's files move to ``models/previous/`` (:func:`keep_previous_weights`).

    Returns:
        the epoch the training continues after (0 for a training from scratch).

    Raises:
        ValueError: for a ``resume.pt`` that cannot be read, that holds as many epochs as this run's ``--epochs`` or
            more (unless its training had run exactly those), or that does not fit this run (another network,
            optimiser class, optimiser or LR-schedule setting), naming the file and each differing setting
            (:class:`ResumeRefused` for the settings).
    """
    import ignite.distributed as idist
    import torch
    from ignite.engine import Events
    from monai.handlers import CheckpointSaver, LrScheduleHandler

    from calibmonai.bundle_tools import as_bool
    from calibmonai.handlers.curves import ValidationCurveLogger

    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / RESUME_FILE
    resume = as_bool(resume, "resume")
    if idist.get_rank() == 0:
        remove_stale_temporaries(ckpt_dir)  # a resume.pt write cut by SIGTERM/SIGKILL
    schedules = [h.lr_scheduler for h in _attached(trainer, LrScheduleHandler)]
    savers = [h._key_metric_checkpoint for h in (_attached(evaluator, CheckpointSaver) if evaluator is not None else [])
              if getattr(h, "_key_metric_checkpoint", None) is not None]
    curves = _attached(evaluator, ValidationCurveLogger) if evaluator is not None else []
    transforms = _random_transforms(trainer)

    def state() -> dict[str, Any]:
        out: dict[str, Any] = {
            "network": _plain(trainer.network).state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "optimizer_class": type(trainer.optimizer).__name__,
            "lr_schedulers": [s.state_dict() for s in schedules],
            "trainer": {"epoch": int(trainer.state.epoch), "iteration": int(trainer.state.iteration),
                        "max_epochs": int(trainer.state.max_epochs)},
            "random": _random_states(),
            "transforms": [_numpy_state(t.R.get_state()) for t in transforms],
            "curves": [list(c.rows) for c in curves],
        }  # fmt: skip
        if getattr(trainer, "scaler", None) is not None:
            out["scaler"] = trainer.scaler.state_dict()
        if evaluator is not None:
            out["evaluator"] = {"best_metric": evaluator.state.best_metric, "best_metric_epoch": evaluator.state.best_metric_epoch}
            out["checkpointers"] = [c.state_dict() for c in savers]
        return out

    def save(_engine: Any) -> None:
        if idist.get_rank() == 0:
            path.parent.mkdir(parents=True, exist_ok=True)  # before the first checkpoint (val_interval > 1)
            with atomic_file(path) as tmp:
                torch.save(state(), tmp)

    def completed(_engine: Any) -> None:
        if idist.get_rank() == 0 and path.is_file():
            path.unlink()

    epoch = 0
    if resume and path.is_file():
        epoch, finished = _load_resume_state(path, trainer, evaluator, schedules, savers, transforms, curves)
        if finished:  # every epoch had run: only the end of the training is left
            progress(f"[training] {path}: the stopped training had run all its {epoch} epochs; completing it without training")
            trainer.run = lambda: trainer.fire_event(Events.COMPLETED)
        else:
            progress(f"[training] resumed from {path}: epoch {epoch} of {trainer.state.max_epochs} done, continuing")
    else:
        if resume:
            progress(f"[training] --resume: no {RESUME_FILE} in {ckpt_dir} (no stopped training to continue): training from the start")
        elif path.is_file():
            progress(f"[training] {path} holds a stopped training; this run trains from the start (its files move to "
                     f"{ckpt_dir / PREVIOUS_DIR} after the first step): stop it now and add --resume true to continue that one instead")  # fmt: skip
        keep_previous_weights(ckpt_dir, trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, save)  # after the validation (attached earlier)
    trainer.add_event_handler(Events.COMPLETED, completed)
    return epoch


def _load_resume_state(
    path: Path, trainer: Any, evaluator: Any, schedules: list[Any], savers: list[Any], transforms: list[Any], curves: list[Any]
) -> tuple[int, bool]:
    """Load ``path`` into the run; ``(epoch it holds, whether that was the stopped run's last epoch)``."""
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)  # data only: a crafted file runs no code
        epoch, iteration = int(saved["trainer"]["epoch"]), int(saved["trainer"]["iteration"])
    except Exception as e:  # noqa: BLE001 - truncated, not a torch file, another structure
        raise ValueError(f"{path} cannot be read as a training state ({type(e).__name__}: {e}); move it away to train from the start.") from e
    max_epochs = int(trainer.state.max_epochs or 0)
    finished = epoch == max_epochs == int(saved["trainer"].get("max_epochs", -1))
    if epoch >= max_epochs and not finished:  # ignite would start a new run from epoch 1 on the loaded weights
        raise ResumeRefused(
            f"{path} holds a training stopped after epoch {epoch}, and this run's --epochs is {max_epochs}: give more "
            f"epochs than {epoch} to continue it, or move the file away to train from the start."
        )
    differ = []
    if saved.get("optimizer_class", type(trainer.optimizer).__name__) != type(trainer.optimizer).__name__:
        differ.append(f"optimizer: {saved['optimizer_class']} -> {type(trainer.optimizer).__name__}")
    else:
        current = trainer.optimizer.state_dict()["param_groups"]
        # with an LR schedule the learning rate moves: its configured value is the schedule's initial_lr
        ignore = ("lr",) if schedules else ("initial_lr",)
        for k, (a, b) in enumerate(zip(saved["optimizer"]["param_groups"], current)):
            differ += [f"optimizer param group {k} {d}" for d in _setting_differences(a, b, ignore)]
        if len(saved["optimizer"]["param_groups"]) != len(current):
            differ.append(f"optimizer param groups: {len(saved['optimizer']['param_groups'])} -> {len(current)}")
    if len(saved["lr_schedulers"]) != len(schedules):
        differ.append(f"LR schedules: {len(saved['lr_schedulers'])} -> {len(schedules)}")
    else:
        for k, (st, sched) in enumerate(zip(saved["lr_schedulers"], schedules)):
            differ += [f"LR schedule {type(sched).__name__} {d}" for d in _setting_differences(st, sched.state_dict(), only=_schedule_settings(sched))]
    if differ:
        raise ResumeRefused(
            f"{path} was saved by a training with other settings: {'; '.join(differ)}. Resume with the stopped "
            "training's settings (an LR schedule that follows --epochs, as the 2D bundles' step_size = epochs // 2, "
            "keeps the stopped run's with --lr_scheduler#step_size <its value>), or move the file away to train from the start."
        )
    try:
        _plain(trainer.network).load_state_dict(saved["network"])
        trainer.optimizer.load_state_dict(saved["optimizer"])
        for s, st in zip(schedules, saved["lr_schedulers"]):
            s.load_state_dict(st)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(
            f"{path} does not fit this run ({' '.join(str(e).split())[:300]}): resume with the settings of the stopped "
            "training (network, optimiser), or move the file away to train from the start."
        ) from e
    if saved.get("scaler"):  # MONAI's Trainer.run() makes a new AMP scaler: its state is loaded once it exists
        from ignite.engine import Events

        def load_scaler(engine: Any) -> None:
            if getattr(engine, "scaler", None) is not None:
                engine.scaler.load_state_dict(saved["scaler"])

        trainer.add_event_handler(Events.STARTED, load_scaler)
    if evaluator is not None and "evaluator" in saved:
        evaluator.state.best_metric = saved["evaluator"]["best_metric"]
        evaluator.state.best_metric_epoch = saved["evaluator"]["best_metric_epoch"]
        for c, st in zip(savers, saved.get("checkpointers", [])):
            c.load_state_dict(st)
    _set_random_states(saved["random"])
    if len(saved.get("transforms", [])) == len(transforms):  # else other preprocessing: its own fresh states
        for t, st in zip(transforms, saved["transforms"]):
            t.R.set_state(_numpy_state_back(st))
    for logger, rows in zip(curves, saved.get("curves", [])):
        logger.restore(rows)
    # ignite reads its progress from the iteration count: with another number of batches per epoch (torchrun's
    # share of the data, another batch size) the saved count would cut or repeat epochs
    epoch_length = getattr(trainer.state, "epoch_length", None)
    trainer.state.epoch, trainer.state.iteration = epoch, epoch * int(epoch_length) if epoch_length else iteration
    return epoch, finished
