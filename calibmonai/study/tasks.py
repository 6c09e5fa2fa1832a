"""What one study task does, in the process (or ``torchrun`` group) an executor gives it.

Every task runs the bundle's own workflows (``training``, ``evaluate``, ``calibrate``) through the same config files
a user would compose (``<bundle>/configs/train.yaml``, ``methods/<m>.yaml``, ``backbones/<b>.yaml``), plus
``<run_dir>/study/overrides.yaml`` (the study's keys for the run: folder, data, epochs, seed, hyper-parameters);
so a run of a study can be re-run by hand with the command written beside it. A task is finished when its marker
``<study>/state/<id>.json`` exists; it is written last, atomically, so a killed task is simply not finished.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import socket
import sys
import time
import traceback
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from calibmonai.run_files import RESUME_FILE, LockBusy, ResumeRefused, atomic_file, locked_file
from calibmonai.study.plan import Task, marker_path, read_marker

__all__ = ["execute_task", "record_training", "AddRelativeGaussianNoise", "capture_evaluation", "logit_gap_histograms", "GAP_EDGES"]

#: bin edges of the logit-distance histograms (0.5 wide up to 50; the last bin also holds everything above 50)
GAP_EDGES = np.arange(0.0, 50.5, 0.5)


# ---------------------------------------------------------------- helpers used inside the bundle configs
def record_training(evaluator: Any, run_dir: str, ckpt_path: str) -> None:
    """Write ``<run_dir>/study/train_record.json``: the validation key metric of the kept checkpoint (what
    selection compares), its epoch and the checkpoint path. Composed into the training workflow's ``finalize`` by
    the study (``+finalize``), so it runs in-process and under ``torchrun`` alike (rank 0 writes)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    state = evaluator.state
    record = {
        "metric": getattr(state, "key_metric_name", None), "best_metric": float(getattr(state, "best_metric", float("nan"))),
        "best_metric_epoch": int(getattr(state, "best_metric_epoch", -1)), "ckpt_path": str(ckpt_path),
    }  # fmt: skip
    _write_json(Path(run_dir) / "study" / "train_record.json", record)


# ---------------------------------------------------------------- files
def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=float))


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))


_RECORD = {
    "+imports": ["$import calibmonai.study.tasks"],
    "+finalize": ["$calibmonai.study.tasks.record_training(@validate#evaluator, @run_dir, @ckpt_path)"],
}


def _backbone_arg(backbone: str) -> str | None:
    from calibmonai.bundle_tools import backbone_names

    return None if backbone == "unet" and "unet" not in backbone_names() else backbone


def _run_files(task: Task, run_dir: str, *extra: str, workflow: str = "train.yaml") -> list[str]:
    from calibmonai.bundle_tools import config_files

    files = config_files(task.bundle, task.method, *extra, backbone=_backbone_arg(task.backbone), workflow=workflow)
    overrides = Path(run_dir) / "study" / "overrides.yaml"
    if not overrides.is_file():
        raise FileNotFoundError(f"{overrides} does not exist: the run's training task has not written it (run the study's train task first).")
    return files + [str(overrides)]


def _workflow(files: list[str], run_id: str, **overrides: Any) -> Any:
    """``initialize``, ``run_id``, ``finalize`` of a bundle config (as :func:`calibmonai.bundle_tools.run_workflow`)."""
    from calibmonai.bundle_tools import run_workflow

    return run_workflow(run_id, files, **overrides)


# ---------------------------------------------------------------- the evaluation's inputs, whatever the bundle
@contextlib.contextmanager
def capture_evaluation() -> Iterator[dict[str, Any]]:
    """Within the block, :func:`calibmonai.evaluation.evaluate_run` records its arguments instead of evaluating.

    Running a bundle's ``evaluate`` workflow inside it yields exactly what that bundle evaluates with (network,
    checkpoint, test datalist, preprocessing, inferer, classes, device), without this module knowing the bundle's
    keys; the noise evaluation and the analysis then call the real function or the network with them.
    """
    import calibmonai.evaluation as ev

    original = ev.evaluate_run
    captured: dict[str, Any] = {}
    signature = inspect.signature(original)

    def record(*args: Any, **kwargs: Any) -> dict[str, Any]:
        captured.update(signature.bind(*args, **kwargs).arguments)
        return {}

    ev.evaluate_run = record  # type: ignore[assignment]
    try:
        yield captured
    finally:
        ev.evaluate_run = original  # type: ignore[assignment]


def _evaluation_inputs(task: Task, run_dir: str) -> dict[str, Any]:
    with capture_evaluation() as captured:
        _workflow(_run_files(task, run_dir, "evaluate.yaml"), "evaluate")
    if not captured:
        raise ValueError(f"the 'evaluate' workflow of bundle {task.bundle!r} does not call calibmonai.evaluation.evaluate_run; the study cannot evaluate it.")
    return captured


class AddRelativeGaussianNoise:
    """Wrap a bundle's evaluation preprocessing: add Gaussian noise of standard deviation ``sigma x (max - min)`` of
    the preprocessed image to every voxel of ``d["image"]`` (MONAI ``RandGaussianNoise``, fixed std), seeded per case
    from ``seed`` and the image file name, so every method sees the same noise.

    With an affine intensity normalisation (z-score, scaling), noise relative to the intensity range after it equals
    noise relative to the raw image's range: ``sigma`` reads as a fraction of the intensity range (0.05 = 5%).
    """

    def __init__(self, preprocessing: Callable[[Any], Any], sigma: float, seed: int = 0) -> None:
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}.")
        self.preprocessing = preprocessing
        self.sigma = float(sigma)
        self.seed = int(seed)

    def __call__(self, item: Any) -> Any:
        import torch
        from monai.transforms import RandGaussianNoise

        d = self.preprocessing(item)
        if self.sigma == 0:
            return d
        image = d["image"]
        scale = float(torch.as_tensor(image).max() - torch.as_tensor(image).min())
        noise = RandGaussianNoise(prob=1.0, mean=0.0, std=self.sigma * scale, sample_std=False)
        name = os.path.basename(str(item.get("image", ""))) if isinstance(item, dict) else ""
        noise.set_random_state(seed=(self.seed * 1_000_003 + zlib.crc32(name.encode())) % (2**32))
        d["image"] = noise(image)
        return d


# ---------------------------------------------------------------- the kinds
def _train(task: Task, study_dir: Path) -> dict[str, Any]:
    run_dir = Path(task.params["run_dir"])
    _write_yaml(run_dir / "study" / "overrides.yaml", task.params["overrides"])
    _write_yaml(run_dir / "study" / "record.yaml", _RECORD)
    record_file = run_dir / "study" / "train_record.json"
    if record_file.exists():
        record_file.unlink()  # a killed earlier try must not pass for this one
    started = time.time()
    gpus = int(task.resources.gpus)
    extra = ["multi_gpu_train.yaml"] if gpus > 1 else []
    files = _run_files(task, str(run_dir), *extra)
    resume_file = run_dir / "study" / "resume.yaml"
    resumed = (run_dir / "models" / RESUME_FILE).is_file()  # a training stopped before its last epoch (time limit, kill)
    if resumed:
        _write_yaml(resume_file, {"resume": True})
        files.append(str(resume_file))
        print(f"[study] {task.id}: continuing the stopped training from {run_dir / 'models' / RESUME_FILE}", flush=True)
    elif resume_file.exists():
        resume_file.unlink()
    files.append(str(run_dir / "study" / "record.yaml"))
    (run_dir / "study" / "command.sh").write_text(training_command(files, gpus) + "\n")
    if gpus > 1:
        cmd = training_argv(files, gpus)
        print("[study] " + " ".join(cmd), flush=True)
        sys.stderr.flush()
        run_child_training(cmd)  # into the task's log
    else:
        try:
            _workflow(files, "training")
        except Exception as e:  # MONAI wraps an expression's error in a RuntimeError
            from calibmonai.bundle_tools import cause_chain

            refused = next((c for c in cause_chain(e) if isinstance(c, ResumeRefused)), None)
            if refused is None:
                raise
            # the task's settings changed since the stop (epochs, lr): its state cannot go on
            print(f"[study] {task.id}: the stopped training's state does not fit the task's settings ({refused}); training from the start", flush=True)
            files.remove(str(resume_file))
            resume_file.unlink()
            resumed = False
            (run_dir / "study" / "command.sh").write_text(training_command(files, gpus) + "\n")
            _workflow(files, "training")  # the stopped run's files move to models/previous/ after its first step
    if not record_file.is_file():
        raise RuntimeError(f"training of {task.id} finished without writing {record_file}.")
    record = json.loads(record_file.read_text())
    if not os.path.isfile(record["ckpt_path"]):
        raise FileNotFoundError(f"training of {task.id} kept no checkpoint at {record['ckpt_path']} (did validation run? val_interval <= epochs).")
    if not resumed and os.path.getmtime(record["ckpt_path"]) < started - 2:  # resumed: the best may predate the stop
        raise RuntimeError(f"training of {task.id} wrote no new checkpoint: {record['ckpt_path']} is from an earlier try (did validation run? val_interval <= epochs).")
    return record


#: process groups of the trainings this process started (torchrun and its ranks), stopped with it
_CHILD_GROUPS: set[int] = set()


def run_child_training(cmd: list[str]) -> None:
    """Run a training command (``torchrun ...``) in its own process group, its output into this process's log, and
    stop the whole group when this process stops: on an error or Ctrl-C here, and, through
    :func:`stop_child_trainings`, when a pool worker is ended (terminated by the study, or its study process killed).
    Without this, ``torchrun`` and its ranks outlived a killed worker and went on writing into the run folder.

    Raises:
        subprocess.CalledProcessError: when the training exits with an error.
    """
    import subprocess

    proc = subprocess.Popen(cmd, stdout=sys.stdout, stderr=sys.stderr, start_new_session=True)
    _CHILD_GROUPS.add(proc.pid)
    try:
        code = proc.wait()
    except BaseException:
        stop_child_trainings()
        proc.wait()
        raise
    finally:
        _CHILD_GROUPS.discard(proc.pid)
    if code:
        raise subprocess.CalledProcessError(code, cmd)


def stop_child_trainings() -> None:
    """Kill the process groups of the trainings this process started (:func:`run_child_training`)."""
    import signal

    for group in list(_CHILD_GROUPS):
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def training_argv(files: list[str], gpus: int) -> list[str]:
    """``torchrun --standalone --nproc_per_node=<gpus> -m monai.bundle run training --config_file [...]``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", "-m", "monai.bundle", "run", "training", "--config_file", repr(list(files))]


def training_command(files: list[str], gpus: int = 1) -> str:
    """The shell command that trains the run by hand (what ``<run_dir>/study/command.sh`` holds)."""
    import shlex

    if gpus > 1:
        return " ".join(shlex.quote(a) for a in training_argv(files, gpus))
    return f"python -m monai.bundle run training --config_file {shlex.quote(repr(list(files)))}"


def _evaluate(task: Task, study_dir: Path) -> dict[str, Any]:
    run_dir = task.params["run_dir"]
    _workflow(_run_files(task, run_dir, "evaluate.yaml"), "evaluate")
    eval_dir = Path(run_dir) / "eval"
    if not (eval_dir / "per_case.csv").is_file():
        raise FileNotFoundError(f"the evaluation of {task.id} wrote no {eval_dir / 'per_case.csv'}.")
    return {"run_dir": run_dir, "eval_dir": str(eval_dir)}


def _selected_run(task: Task, study_dir: Path) -> tuple[str, dict[str, Any]]:
    marker = read_marker(study_dir, task.params["select"])
    if marker is None:
        raise RuntimeError(f"{task.id} needs {task.params['select']}, which has not finished.")
    sel = marker["result"]
    return os.path.join(task.params["runs_root"], sel["run_name"]), sel


def _posthoc(task: Task, study_dir: Path) -> dict[str, Any]:
    run_dir = task.params.get("run_dir") or _selected_run(task, study_dir)[0]
    fitted = {}
    for name in task.params["calibrators"]:
        fitted[name] = _workflow(_run_files(task, run_dir, f"calibrate/{name}.yaml"), "calibrate")
        _workflow(_run_files(task, run_dir, "evaluate.yaml"), "evaluate", calibrator=name)
        if not (Path(run_dir) / f"eval_{name}" / "per_case.csv").is_file():
            raise FileNotFoundError(f"the {name} evaluation of {task.id} wrote no {Path(run_dir) / f'eval_{name}' / 'per_case.csv'}.")
    summary = {}
    for name, info in fitted.items():
        if isinstance(info, list):  # the calibrate workflow is a list of expressions; the last returns the summary
            info = next((i for i in reversed(info) if isinstance(i, dict)), {})
        summary[name] = {k: v for k, v in (info or {}).items() if isinstance(v, (int, float, str))}
    return {"run_dir": run_dir, "calibrators": summary}


def _select(task: Task, study_dir: Path) -> dict[str, Any]:
    scores: dict[str, float] = {}
    metric_names = set()
    for cand in task.params["candidates"]:
        values = []
        for tid in cand["train"]:
            marker = read_marker(study_dir, tid)
            if marker is None:
                raise RuntimeError(f"{task.id} needs {tid}, which has not finished.")
            values.append(float(marker["result"]["best_metric"]))
            metric_names.add(marker["result"].get("metric"))
        scores[cand["run_name"]] = float(np.mean(values))
    wanted = task.params.get("metric")
    if wanted and metric_names and wanted not in metric_names:
        raise ValueError(f"selection by {wanted!r}, but the bundle's validation key metric is {sorted(map(str, metric_names))}; set selection_metric to it.")
    order = [c["run_name"] for c in task.params["candidates"]]
    best = max(order, key=lambda n: (np.nan_to_num(scores[n], nan=-np.inf), -order.index(n)))  # ties: the first listed
    chosen = next(c for c in task.params["candidates"] if c["run_name"] == best)
    return {"run_name": best, "loss_kwargs": chosen["loss_kwargs"], "scores": scores, "metric": wanted, "param": task.params.get("param")}


def noise_dir_name(sigma: float) -> str:
    """The folder of a run's evaluation under noise ``sigma``: ``sigma0.050`` (three decimals, as studies have always
    named them) where three decimals hold ``sigma`` exactly, else every digit it needs (``sigma0.0125``), so two
    levels never share a folder."""
    sigma = float(sigma)
    return f"sigma{sigma:.3f}" if float(f"{sigma:.3f}") == sigma else f"sigma{sigma!r}"


def _noise(task: Task, study_dir: Path) -> dict[str, Any]:
    import calibmonai.evaluation as ev

    run_dir, sel = _selected_run(task, study_dir)
    inputs = _evaluation_inputs(task, run_dir)
    done = {}
    for sigma in task.params["sigmas"]:
        out = Path(run_dir) / "noise" / noise_dir_name(sigma)
        kwargs = dict(inputs)
        kwargs.update(preprocessing=AddRelativeGaussianNoise(inputs["preprocessing"], sigma, seed=task.seed or 0), output_dir=str(out), title=f"{sel['run_name']} + noise {sigma:g}")
        ev.evaluate_run(**kwargs)
        done[f"{sigma:g}"] = str(out)
    return {"run_dir": run_dir, "noise_dirs": done}


def logit_gap_histograms(logits: Any, label: Any, num_classes: int, edges: np.ndarray = GAP_EDGES) -> np.ndarray:
    """Histograms ``(num_classes, len(edges) - 1)`` of the logit distances ``max_j z_j - z_k`` of every non-maximal
    class ``k`` (the ``C - 1`` distances MbLS's margin bounds), over the voxels of each ground-truth class; the last
    bin also counts distances beyond ``edges[-1]``.

    Args:
        logits: ``(1, C, *spatial)`` network outputs.
        label: ``(1, 1, *spatial)`` or ``(1, *spatial)`` ground-truth labels.
    """
    import torch

    z = torch.as_tensor(logits).float()
    if z.ndim < 3 or z.shape[0] != 1 or z.shape[1] != num_classes:
        raise ValueError(f"logits must be (1, {num_classes}, *spatial), got {tuple(z.shape)}.")
    y = torch.as_tensor(label).long().reshape(-1)
    z = z[0].reshape(num_classes, -1)
    if y.numel() != z.shape[1]:
        raise ValueError(f"label has {y.numel()} voxels, the logits {z.shape[1]}.")
    top, arg = z.max(0)
    gaps = top.unsqueeze(0) - z  # (C, N)
    keep = torch.ones_like(gaps, dtype=torch.bool)
    keep[arg, torch.arange(z.shape[1])] = False  # the maximal class's own distance (0) is not a distance to bound
    n_bins = len(edges) - 1
    idx = torch.bucketize(gaps, torch.as_tensor(edges[1:-1], dtype=gaps.dtype), right=True).clamp_(0, n_bins - 1)
    out = np.zeros((num_classes, n_bins), dtype=np.int64)
    for c in range(num_classes):
        sel = keep & (y == c).unsqueeze(0)
        if bool(sel.any()):
            out[c] = torch.bincount(idx[sel], minlength=n_bins).numpy()
    return out


def _analysis(task: Task, study_dir: Path) -> dict[str, Any]:
    import torch

    from calibmonai.evaluation import load_checkpoint, predict_logits, to_probabilities
    from calibmonai.metrics import CalibrationMetrics

    run_dir, sel = _selected_run(task, study_dir)
    inp = _evaluation_inputs(task, run_dir)
    num_classes = int(inp["num_classes"])
    network = load_checkpoint(inp["network"], inp["checkpoint"], inp.get("device", "cpu"))
    cal = CalibrationMetrics(num_bins=int(inp.get("num_bins", 15)), foreground="label")
    gaps = np.zeros((num_classes, len(GAP_EDGES) - 1), dtype=np.int64)
    panel: dict[str, np.ndarray] = {}
    for i, item in enumerate(inp["datalist"]):
        d = inp["preprocessing"](item)
        image = d["image"]
        label = torch.as_tensor(d["label"]).long().unsqueeze(0).cpu()
        logits = predict_logits(image, network, inp["inferer"], inp.get("device", "cpu"))
        prob = to_probabilities(logits, image)
        cal(prob, label)
        gaps += logit_gap_histograms(logits, label, num_classes)
        if i == 0:
            z = image.shape[-1] // 2
            conf, pred = prob.max(1)
            panel = {
                "image": np.asarray(torch.as_tensor(image)[0, ..., z], dtype=np.float32), "label": np.asarray(label[0, 0, ..., z]),
                "pred": np.asarray(pred[0, ..., z]), "confidence": np.asarray(conf[0, ..., z], dtype=np.float32),
            }  # fmt: skip
    rel = {k: np.asarray(v, dtype=np.float64) for k, v in cal.reliability().items()}
    out = Path(run_dir) / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out / "analysis.npz", gap_edges=GAP_EDGES, gap_hist=gaps, **{f"rel_{k}": v for k, v in rel.items()},
        **{f"panel_{k}": v for k, v in panel.items()}, class_names=np.array(list(inp.get("class_names") or [str(c) for c in range(num_classes)])),
    )  # fmt: skip
    return {"run_dir": run_dir, "analysis": str(out / "analysis.npz"), "pooled_ece": float(rel["ece"])}


_KINDS: dict[str, Callable[[Task, Path], dict[str, Any]]] = {
    "train": _train, "evaluate": _evaluate, "select": _select, "posthoc": _posthoc, "noise": _noise, "analysis": _analysis,
}  # fmt: skip


# ---------------------------------------------------------------- running one task
@contextlib.contextmanager
def _task_log(path: Path, capture_fds: bool) -> Iterator[None]:
    """Send the task's output to ``path``: file descriptors 1 and 2 in a worker process (native output too), the
    Python streams and the ``calibmonai``/``ignite`` loggers otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as f:
        f.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()} pid {os.getpid()}\n")
        handler = logging.StreamHandler(f)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        loggers = [logging.getLogger(n) for n in ("calibmonai", "ignite", "py.warnings")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.addHandler(handler)
            lg.setLevel(logging.INFO)
        saved = []
        try:
            if capture_fds:
                sys.stdout.flush()
                sys.stderr.flush()
                saved = [os.dup(1), os.dup(2)]
                os.dup2(f.fileno(), 1)
                os.dup2(f.fileno(), 2)
                yield
            else:
                with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                    yield
        finally:
            if saved:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in saved:
                    os.close(fd)
            for lg, lv in zip(loggers, levels):
                lg.removeHandler(handler)
                lg.setLevel(lv)


def write_failure_marker(study_dir: Path, task_id: str, error: str, trace: str = "") -> Path:
    """``<study>/state/<id>.failed.json``: the error, its traceback, the task's log and the host (``study plan``
    lists the task as failed). Written by a failing task, or by the study process for a task whose worker died."""
    path = marker_path(study_dir, task_id, failed=True)
    log = Path(study_dir) / "logs" / f"{task_id}.log"
    _write_json(path, {"id": task_id, "error": error, "traceback": trace, "log": str(log), "host": socket.gethostname()})
    return path


def task_lock_holder(study_dir: Path, task_id: str) -> int | None:
    """The pid that last took the task's lock (:func:`task_lock`), ``None`` when unknown."""
    try:
        text = marker_path(study_dir, task_id).with_suffix(".lock").read_text()
        return int(text.split()[1]) if text.startswith("pid ") else None
    except (OSError, ValueError, IndexError):
        return None


class TaskBusy(RuntimeError):
    """Another process is running the task (it holds the task's lock)."""


@contextlib.contextmanager
def task_lock(study_dir: Path, task_id: str) -> Iterator[None]:
    """Hold ``<study>/state/<task id>.lock`` (an exclusive ``flock``, released by the system when the holder dies)
    while a task runs, so two processes never run one task into the same run folder (a study run started again
    while a worker of a killed one is still training). Where file locks are unavailable (no ``fcntl``, a file system
    refusing them) the task runs unlocked.

    Raises:
        TaskBusy: naming the process that holds the lock.
    """
    path = marker_path(study_dir, task_id).with_suffix(".lock")
    try:
        with locked_file(path, blocking=False) as f:
            if f is not None:
                f.seek(0)
                f.truncate()
                f.write(f"pid {os.getpid()} on {socket.gethostname()}")
                f.flush()
            yield
    except LockBusy as busy:
        raise TaskBusy(f"another process ({busy.holder}) is running this task; wait for it to finish or stop it, then run the study again") from None


def execute_task(study_dir: str | os.PathLike, task: dict[str, Any] | Task, threads: int | None = None, capture_fds: bool = False, force: bool = False) -> dict[str, Any]:
    """Run one task here and write its marker; never raises for a failing task.

    Returns ``{"id", "ok", "skipped", "wall_s", "error"}``: ``ok`` when the task is finished (now, or earlier, then
    ``skipped``). A failure writes ``<study>/state/<id>.failed.json`` with the traceback and the log path.

    Args:
        threads: torch threads of the task (default: its declared ``cpus``), the same whatever the executor, so
            that a study gives the same numbers through every executor.
        capture_fds: redirect file descriptors 1/2 to the task log (worker processes), not only Python's streams.
        force: run even when the marker exists (``study run --redo``).

    A task that another process is running (it holds the task's lock, :func:`task_lock`) is not run: ``ok`` is
    false and ``error`` names that process; nothing of the task is written.
    """
    t = task if isinstance(task, Task) else Task.from_dict(task)
    root = Path(study_dir)
    if not force and read_marker(root, t.id) is not None:
        return {"id": t.id, "ok": True, "skipped": True, "wall_s": 0.0, "error": None}
    try:
        with task_lock(root, t.id):
            if not force and read_marker(root, t.id) is not None:  # finished by the lock's previous holder
                return {"id": t.id, "ok": True, "skipped": True, "wall_s": 0.0, "error": None}
            return _execute_locked(t, root, threads, capture_fds)
    except TaskBusy as e:
        return {"id": t.id, "ok": False, "skipped": False, "wall_s": 0.0, "error": str(e)}


def _execute_locked(t: Task, root: Path, threads: int | None, capture_fds: bool) -> dict[str, Any]:
    """:func:`execute_task` once the task's lock is held."""
    import torch

    log = root / "logs" / f"{t.id}.log"
    failed = marker_path(root, t.id, failed=True)
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads or t.resources.cpus))
    t0 = time.time()
    try:
        with _task_log(log, capture_fds):
            print(f"[study] {t.id}: start ({t.kind}, {torch.get_num_threads()} thread(s))", flush=True)
            result = _KINDS[t.kind](t, root)
            print(f"[study] {t.id}: done in {time.time() - t0:.1f} s", flush=True)
    except BaseException as e:  # noqa: BLE001 - a task failure is recorded, never propagated to the executor
        if isinstance(e, KeyboardInterrupt):
            raise
        write_failure_marker(root, t.id, f"{type(e).__name__}: {e}", traceback.format_exc())
        return {"id": t.id, "ok": False, "skipped": False, "wall_s": time.time() - t0, "error": f"{type(e).__name__}: {e}"}
    finally:
        torch.set_num_threads(before)
    marker = {
        "id": t.id, "kind": t.kind, "fingerprint": t.fingerprint(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "wall_s": round(time.time() - t0, 3), "host": socket.gethostname(), "log": str(log), "result": result,
    }  # fmt: skip
    _write_json(marker_path(root, t.id), marker)
    if failed.exists():
        failed.unlink()
    return {"id": t.id, "ok": True, "skipped": False, "wall_s": marker["wall_s"], "error": None}
