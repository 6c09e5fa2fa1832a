"""The task graph of a study: training runs, selection by validation DSC per method, test evaluation, post-hoc
calibration, noise evaluation and the logit/reliability analysis, each with its dependencies and resources.

Layout of a study folder (one folder on a shared filesystem, whatever executor runs the tasks)::

    <study>/study.yaml                         the checked study, absolute paths
    <study>/plan.json                          the tasks and their dependencies
    <study>/state/<task id>.json               written when a task finishes (what "done" means)
    <study>/state/<task id>.failed.json        the traceback of a failed try (removed by the next success)
    <study>/logs/<task id>.log                 the task's output
    <study>/runs/<bundle>/<backbone>/seed<k>[-fold<f>]/<run name>/   a bundle's run_dir (models/, eval/, ...)
    <study>/report/                            tidy.csv, report.md, tables/*.csv, *.png

Task ids read ``<kind>/<bundle>/<backbone>/<replicate>/<run or method>``:

- ``train/...``: one training run per bundle x backbone x seed/fold x method x grid point;
- ``evaluate/...``: its evaluation on the test split (``<run_dir>/eval``), after ``train``;
- ``select/<bundle>/<backbone>/<method>``: the grid point with the best mean validation DSC over seeds/folds,
  after every ``train`` of the method;
- ``posthoc/...``: the calibrators fitted on validation and evaluated on test (``<run_dir>/eval_<calibrator>``),
  after ``train`` (``posthoc_on: all``) or after ``select`` for the selected run (``posthoc_on: selected``);
- ``noise/...``: the selected run evaluated with Gaussian noise on the test images (``<run_dir>/noise/sigma*``);
- ``analysis/...``: logit distances, reliability statistics and a confidence map of the selected run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from calibmonai.run_files import atomic_file
from calibmonai.study.spec import BundleSpec, Resources, StudySpec, grid_points, swept_parameter

__all__ = ["Task", "build_plan", "task_status", "blocked_bundles", "plan_table", "estimate_gpu_hours", "write_plan", "marker_path", "read_marker", "KINDS"]

KINDS = ("train", "evaluate", "select", "posthoc", "noise", "analysis")
#: which entry of ``StudySpec.resources`` each kind uses
RESOURCE_OF = {"train": "train", "evaluate": "evaluate", "posthoc": "evaluate", "noise": "evaluate", "analysis": "evaluate", "select": "select"}


@dataclass
class Task:
    """One unit of work of a study: plain data, so that any executor can ship it to a worker.

    ``params`` holds what the kind needs (``run_dir``, ``loss_kwargs``, ``candidates``, ...); ``deps`` the ids of the
    tasks that must be done first.
    """

    id: str
    kind: str
    bundle: str
    backbone: str
    method: str
    seed: int | None = None
    fold: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    deps: list[str] = field(default_factory=list)
    resources: Resources = field(default_factory=Resources)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["resources"] = asdict(self.resources)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        d = dict(d)
        d["resources"] = Resources(**d.get("resources", {}))
        return cls(**d)

    def fingerprint(self) -> str:
        """A hash of what the task computes (kind and parameters, not its resources): a finished task whose
        fingerprint changed was run with other settings."""
        payload = json.dumps({"kind": self.kind, "params": self.params}, sort_keys=True, default=str)
        return hashlib.sha1(payload.encode()).hexdigest()[:12]


def _short(bundle: str) -> str:
    return Path(bundle).name


def replicate_tag(seed: int, fold: int | None) -> str:
    """``seed0`` or ``seed0-fold2``: the folder that keeps one seed/fold's runs apart."""
    return f"seed{seed}" if fold is None else f"seed{seed}-fold{fold}"


def _fragment_kwargs(method: str) -> dict[str, Any]:
    """The ``loss_kwargs`` of ``bundles/methods/<method>.yaml``: a grid point completes them, so a run is named as the
    same run trained from the fragment alone (``mbls_alpha0.1_margin10.0``)."""
    return dict(_fragment_kwargs_cached(method))


@functools.lru_cache(maxsize=None)
def _fragment_kwargs_cached(method: str) -> dict[str, Any]:
    import yaml

    from calibmonai.bundle_tools import fragment

    try:
        path = fragment("methods", method)
    except ValueError:
        return {}
    return dict((yaml.safe_load(path.read_text()) or {}).get("loss_kwargs") or {})


def run_overrides(spec: StudySpec, bundle: BundleSpec, backbone: str, seed: int, fold: int | None, loss_kwargs: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """The bundle config keys a study sets for one run: its folder, data, epochs, seed/fold, hyper-parameters and
    the study's, bundle's and backbone's overrides (in that order, later ones winning)."""
    out: dict[str, Any] = {"run_dir": run_dir, "runs_dir": str(Path(run_dir).parent), "seed": int(seed), "loss_kwargs": dict(loss_kwargs)}
    if bundle.dataset_dir:
        out["dataset_dir"] = bundle.dataset_dir
    if spec.epochs is not None:
        out["epochs"] = int(spec.epochs)
    if fold is not None:
        out["fold"] = int(fold)
    out.update(spec.overrides)
    out.update(bundle.overrides)
    out.update(spec.backbone_overrides.get(backbone, {}))
    return out


def build_plan(spec: StudySpec, study_dir: str | os.PathLike) -> list[Task]:
    """Every task of ``spec`` for the study folder ``study_dir``, dependencies before dependants."""
    from calibmonai.bundle_tools import run_name

    root = Path(study_dir).resolve()
    res = {kind: spec.resources[RESOURCE_OF[kind]] for kind in KINDS}
    tasks: list[Task] = []
    for bundle in spec.bundles:
        b = _short(bundle.name)
        for backbone in spec.backbones:
            for method, grid in spec.methods_for(bundle, backbone).items():
                base = _fragment_kwargs(method)
                points = [{**base, **p} for p in grid_points(grid)]
                names = [run_name(method, p, backbone) for p in points]
                twice = sorted({n for n in names if names.count(n) > 1})
                if twice:
                    raise ValueError(
                        f"the grid of {method!r} names the run {twice[0]} twice (its values "
                        f"{[p for p, n in zip(points, names) if n == twice[0]]} are one setting: a whole number given for "
                        f"a float hyper-parameter is that float); list each value once."
                    )
                param = swept_parameter(method, grid)
                train_ids: dict[str, list[str]] = {n: [] for n in names}
                for seed, fold in spec.replicates():
                    rep = replicate_tag(seed, fold)
                    for point, name in zip(points, names):
                        run_dir = str(root / "runs" / b / backbone / rep / name)
                        common = dict(bundle=bundle.name, backbone=backbone, method=method, seed=seed, fold=fold)
                        params = {
                            "run_dir": run_dir, "run_name": name, "loss_kwargs": point, "param": param,
                            "overrides": run_overrides(spec, bundle, backbone, seed, fold, point, run_dir),
                        }  # fmt: skip
                        tid = f"train/{b}/{backbone}/{rep}/{name}"
                        tasks.append(Task(tid, "train", params=params, resources=res["train"], **common))
                        train_ids[name].append(tid)
                        tasks.append(Task(f"evaluate/{b}/{backbone}/{rep}/{name}", "evaluate", params={"run_dir": run_dir, "run_name": name}, deps=[tid], resources=res["evaluate"], **common))
                        if spec.posthoc and spec.posthoc_on == "all":
                            tasks.append(Task(f"posthoc/{b}/{backbone}/{rep}/{name}", "posthoc", params={"run_dir": run_dir, "run_name": name, "calibrators": list(spec.posthoc)}, deps=[tid], resources=res["posthoc"], **common))
                sel_id = f"select/{b}/{backbone}/{method}"
                candidates = [{"run_name": n, "loss_kwargs": p, "train": train_ids[n]} for n, p in zip(names, points)]
                tasks.append(
                    Task(sel_id, "select", bundle=bundle.name, backbone=backbone, method=method,
                         params={"candidates": candidates, "metric": spec.selection_metric, "param": param},
                         deps=[t for n in names for t in train_ids[n]], resources=res["select"])
                )  # fmt: skip
                for seed, fold in spec.replicates():
                    rep = replicate_tag(seed, fold)
                    common = dict(bundle=bundle.name, backbone=backbone, method=method, seed=seed, fold=fold)
                    runs_root = str(root / "runs" / b / backbone / rep)
                    after = {"runs_root": runs_root, "select": sel_id}
                    if spec.posthoc and spec.posthoc_on == "selected":
                        tasks.append(Task(f"posthoc/{b}/{backbone}/{rep}/{method}", "posthoc", params={**after, "calibrators": list(spec.posthoc)}, deps=[sel_id], resources=res["posthoc"], **common))
                    sigmas = [s for s in spec.noise_sigmas if s > 0]
                    if sigmas:
                        tasks.append(Task(f"noise/{b}/{backbone}/{rep}/{method}", "noise", params={**after, "sigmas": sigmas}, deps=[sel_id], resources=res["noise"], **common))
                    tasks.append(Task(f"analysis/{b}/{backbone}/{rep}/{method}", "analysis", params=dict(after), deps=[sel_id], resources=res["analysis"], **common))
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"the study yields duplicate runs {dup[:5]}: a method or backbone is listed twice.")
    return tasks


def marker_path(study_dir: str | os.PathLike, task_id: str, failed: bool = False) -> Path:
    """``<study>/state/<task id>.json`` (``.failed.json`` for the last failed try)."""
    return Path(study_dir) / "state" / f"{task_id}{'.failed' if failed else ''}.json"


def read_marker(study_dir: str | os.PathLike, task_id: str) -> dict[str, Any] | None:
    """The marker of a finished task, or ``None`` when it has not finished."""
    path = marker_path(study_dir, task_id)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:  # a marker is written atomically; an unreadable one counts as not done
        return None


def _bundle_available(bundle: str) -> str | None:
    from calibmonai.bundle_tools import bundle_dir

    try:
        bundle_dir(bundle)
    except FileNotFoundError as e:
        return str(e)
    return None


def blocked_bundles(tasks: Sequence[Task], spec: StudySpec | None = None) -> dict[str, str]:
    """``{bundle: why}`` for the bundles whose tasks cannot run: not installed, or (with ``spec``) a ``dataset_dir``
    that does not exist and that the study cannot prepare."""
    out = {}
    for b in sorted({t.bundle for t in tasks}):
        problem = _bundle_available(b)
        if problem:
            out[b] = problem
    for b in spec.bundles if spec is not None else []:
        if b.name not in out and b.dataset_dir and not Path(b.dataset_dir).exists() and not b.prepare:
            out[b.name] = f"dataset_dir {b.dataset_dir} does not exist (prepare the data, or give the bundle a 'prepare' entry)"
    return out


def task_status(tasks: Sequence[Task], study_dir: str | os.PathLike, spec: StudySpec | None = None) -> dict[str, str]:
    """``done``, ``changed`` (done with other settings; kept unless redone on request), ``failed`` (last try failed),
    ``ready`` (dependencies done), ``waiting`` or ``blocked`` (see :func:`blocked_bundles`) for every task."""
    status: dict[str, str] = {}
    missing = blocked_bundles(tasks, spec)
    for t in tasks:
        marker = read_marker(study_dir, t.id)
        if marker is not None:
            status[t.id] = "done" if marker.get("fingerprint") in (None, t.fingerprint()) else "changed"
        elif t.bundle in missing:
            status[t.id] = "blocked"
        elif marker_path(study_dir, t.id, failed=True).is_file():
            status[t.id] = "failed"
        elif all(status.get(d) in ("done", "changed") for d in t.deps):
            status[t.id] = "ready"
        else:
            status[t.id] = "waiting"
    return status


@functools.lru_cache(maxsize=None)
def _bundle_epochs(bundle: str) -> float:
    """The ``epochs`` of a bundle's ``configs/train.yaml`` (NaN when absent, not a number, or no such bundle)."""
    import yaml

    from calibmonai.bundle_tools import bundle_dir

    try:
        value = (yaml.safe_load((bundle_dir(bundle) / "configs" / "train.yaml").read_text()) or {}).get("epochs")
    except (FileNotFoundError, yaml.YAMLError):
        return float("nan")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def estimate_gpu_hours(spec: StudySpec, tasks: Iterable[Task]) -> dict[str, dict[str, float]]:
    """Run counts and GPU-hours per bundle from each bundle's ``estimate`` (``train_gpu_hours_per_epoch`` x epochs (the
    study's, else the bundle's) x GPUs per training run; ``eval_gpu_hours`` per test evaluation, a calibrator fit counting as one); NaN where the
    bundle states no estimate."""
    out: dict[str, dict[str, float]] = {}
    per_bundle = {b.name: b for b in spec.bundles}
    for t in tasks:
        b = per_bundle[t.bundle]
        row = out.setdefault(b.name, {"training_runs": 0, "tasks": 0, "evaluations": 0, "gpu_hours": 0.0})
        row["tasks"] += 1
        per_epoch = b.estimate.get("train_gpu_hours_per_epoch", float("nan"))
        per_eval = b.estimate.get("eval_gpu_hours", float("nan"))
        if t.kind == "train":
            row["training_runs"] += 1
            epochs = t.params["overrides"].get("epochs", b.estimate.get("epochs", _bundle_epochs(b.name)))
            row["gpu_hours"] += per_epoch * float(epochs) * max(1, t.resources.gpus)
        else:
            n = {"evaluate": 1, "analysis": 1, "posthoc": 2 * len(t.params.get("calibrators", [])), "noise": len(t.params.get("sigmas", [])), "select": 0}[t.kind]
            row["evaluations"] += n
            row["gpu_hours"] += per_eval * n
    return out


def plan_table(tasks: Sequence[Task], status: dict[str, str], verbose: bool = True) -> str:
    """The plan as text: one line per task (status, id, dependencies), then the counts per kind and status."""
    lines = []
    if verbose:
        width = max(len(t.id) for t in tasks) if tasks else 10
        for t in tasks:
            deps = ", ".join(t.deps[:3]) + (f" (+{len(t.deps) - 3})" if len(t.deps) > 3 else "")
            res = f"{t.resources.gpus}g/{t.resources.cpus}c"
            lines.append(f"{status[t.id]:<8} {t.id:<{width}}  {res:<6} <- {deps or '-'}")
        lines.append("")
    kinds = [k for k in KINDS if any(t.kind == k for t in tasks)]
    states = ["done", "changed", "failed", "ready", "waiting", "blocked"]
    lines.append(f"{'kind':<10}" + "".join(f"{s:>9}" for s in states) + f"{'total':>9}")
    for k in kinds:
        counts = [sum(1 for t in tasks if t.kind == k and status[t.id] == s) for s in states]
        lines.append(f"{k:<10}" + "".join(f"{c:>9}" for c in counts) + f"{sum(counts):>9}")
    return "\n".join(lines)


#: the first line of a study folder's ``study.yaml``: the study file it was planned from
SOURCE_COMMENT = "# planned from the study file: "


def study_source_line(path: str | os.PathLike) -> str | None:
    """The :data:`SOURCE_COMMENT` line of a study folder's ``study.yaml`` (``None`` when it has none)."""
    try:
        first = Path(path).read_text().split("\n", 1)[0]
    except OSError:
        return None
    return first if first.startswith(SOURCE_COMMENT) else None


def study_source(study_dir: str | os.PathLike) -> str | None:
    """The study file a study folder was planned from (``None``: not recorded)."""
    line = study_source_line(Path(study_dir) / "study.yaml")
    return line[len(SOURCE_COMMENT):].strip() if line else None


def write_plan(spec: StudySpec, tasks: Sequence[Task], study_dir: str | os.PathLike) -> Path:
    """Write ``study.yaml`` (the checked study; its first line names the study file it came from) and ``plan.json``
    (the tasks) into the study folder."""
    import yaml

    root = Path(study_dir)
    root.mkdir(parents=True, exist_ok=True)
    own = spec.source and Path(spec.source).resolve() == (root / "study.yaml").resolve()
    source = study_source(root) if own or not spec.source else spec.source  # re-planned from the folder: kept
    header = f"{SOURCE_COMMENT}{source}\n" if source else ""
    with atomic_file(root / "study.yaml") as tmp:
        tmp.write_text(header + yaml.safe_dump(spec.to_dict(), sort_keys=False))
    path = root / "plan.json"
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps([t.to_dict() for t in tasks], indent=1))
    return path
