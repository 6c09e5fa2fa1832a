"""``calibmonai study plan|run|report``: a python-fire class (``python -m calibmonai.study ...`` works too)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["StudyCLI", "study_folder", "check_same_study"]


def study_folder(study: str, out: str | None = None, replace: bool = False) -> tuple[Any, Path]:
    """The checked study and its folder: ``out``, else the folder ``study`` names (a study folder holding
    ``study.yaml``), else ``results/studies/<name>``.

    A folder holding another study is refused (see :func:`check_same_study`) unless ``replace``."""
    from calibmonai.study.executors import default_study_dir
    from calibmonai.study.spec import load_study

    spec = load_study(study)
    if out:
        root = Path(out)
    elif Path(study).is_dir():
        root = Path(study)
    else:
        root = default_study_dir(spec)
    if not replace:
        check_same_study(spec, root)
    return spec, root


def check_same_study(spec: Any, root: Path, action: str = "plan") -> None:
    """Refuse a study folder ``root`` that holds a different study than ``spec``: another name, or other content
    planned from another study file. The same study file, edited and planned again, is the same study (its finished
    tasks run with other settings show as ``changed``)."""
    import yaml

    from calibmonai.study.plan import study_source

    existing = root / "study.yaml"
    if not existing.is_file() or (spec.source and Path(spec.source) == existing.resolve()):
        return
    try:
        old = yaml.safe_load(existing.read_text()) or {}
    except yaml.YAMLError:
        old = {}
    if not isinstance(old, dict):
        old = {}
    if old == yaml.safe_load(yaml.safe_dump(spec.to_dict(), sort_keys=False)):
        return
    old_source = study_source(root)
    old_name = str(old.get("name", "?"))
    if old_source and spec.source and Path(old_source) == Path(spec.source):
        return
    if not old_source and old_name == spec.name:
        return  # a folder planned before the study file was recorded: the same name is taken as the same study
    what = f"study {old_name!r}" + (f" (from {old_source})" if old_source else "")
    this = f"{spec.source or 'this study'} (study {spec.name!r})"
    if action == "report":
        raise ValueError(
            f"{root}: holds the {what}, not {this}; report the folder itself (`calibmonai study report {root}`) or give its own study file."
        )
    raise ValueError(
        f"{root}: holds the {what}, not {this}; give another --out, or --replace true to plan this study there (the folder's finished tasks stay, shown as changed)."
    )


class StudyCLI:
    """Plan, run and report a comparison study described by a study file (see studies/*.yaml)."""

    def plan(self, study: str, out: str | None = None, verbose: bool = True, replace: bool = False) -> None:
        """List the tasks of STUDY (training, selection, test evaluation, post-hoc, noise evaluation, analysis) with
        their dependencies and state in the study folder, and the run count and estimated GPU-hours per bundle.

        --replace true: plan STUDY into an --out folder that holds another study (refused otherwise)."""
        from calibmonai.bundle_tools import as_bool
        from calibmonai.study.plan import blocked_bundles, build_plan, estimate_gpu_hours, plan_table, task_status, write_plan

        spec, root = study_folder(study, out, as_bool(replace, "replace"))
        tasks = build_plan(spec, root)
        status = task_status(tasks, root, spec)
        print(plan_table(tasks, status, verbose=as_bool(verbose, "verbose")))
        print(f"\n{'bundle':<22}{'training runs':>15}{'tasks':>8}{'evaluations':>13}{'GPU-hours':>11}")
        for bundle, row in estimate_gpu_hours(spec, tasks).items():
            gpu = "n/a" if math.isnan(row["gpu_hours"]) else f"{row['gpu_hours']:.1f}"
            print(f"{Path(bundle).name:<22}{row['training_runs']:>15}{row['tasks']:>8}{row['evaluations']:>13}{gpu:>11}")
        blocked = blocked_bundles(tasks, spec)
        if blocked:
            print("\nblocked (left out by 'study run'):\n" + "\n".join(f"  {b}: {why}" for b, why in blocked.items()))
        path = write_plan(spec, tasks, root)
        print(f"\nplan written to {path}")

    def run(
        self, study: str, out: str | None = None, executor: str | None = None, redo: str | None = None, max_tasks: int | None = None,
        workers: int | None = None, address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
        cluster: str | None = None, partition: str | None = None, timeout_min: int | None = None, tasks_per_job: int | None = None,
        array_parallelism: int | None = None, replace: bool = False,
    ) -> None:  # fmt: skip
        """Run what is not finished of STUDY (resumable; a finished task is redone only when --redo names it).

        --executor local|ray|slurm; local: --workers N (0: in this process); ray: --address auto|ray://host:10001,
        --num_cpus/--num_gpus for a Ray started here; slurm: --partition, --timeout_min, --tasks_per_job,
        --array_parallelism, --cluster local|debug (submitit's local processes / this process).
        --redo 'train/*/unet/seed0/mbls*,noise/*' re-runs those tasks and their dependants; --max_tasks N starts at most N.
        --replace true: run STUDY in an --out folder that holds another study (refused otherwise).
        Exits 1 when a task failed, 2 when tasks remain that nothing could run (blocked), 130 on Ctrl-C.
        """
        try:
            self._run(study, out, executor, redo, max_tasks, workers, address, num_cpus, num_gpus, cluster, partition, timeout_min, tasks_per_job, array_parallelism, replace)
        except KeyboardInterrupt:
            print("calibmonai study: interrupted: finished tasks are kept; run the same command again to resume.", file=sys.stderr, flush=True)
            raise SystemExit(130) from None

    def _run(
        self, study: str, out: str | None, executor: str | None, redo: str | None, max_tasks: int | None, workers: int | None, address: str | None,
        num_cpus: int | None, num_gpus: int | None, cluster: str | None, partition: str | None, timeout_min: int | None, tasks_per_job: int | None,
        array_parallelism: int | None, replace: bool,
    ) -> None:  # fmt: skip
        from calibmonai.bundle_tools import as_bool
        from calibmonai.study.executors import run_study

        spec, root = study_folder(study, out, as_bool(replace, "replace"))
        options = {
            "workers": workers, "address": address, "num_cpus": num_cpus, "num_gpus": num_gpus, "cluster": cluster, "partition": partition,
            "timeout_min": timeout_min, "tasks_per_job": tasks_per_job, "array_parallelism": array_parallelism,
        }  # fmt: skip
        name = executor or spec.executor.get("name") or "local"
        accepted = {"local": {"workers"}, "ray": {"address", "num_cpus", "num_gpus"}, "slurm": {"cluster", "partition", "timeout_min", "tasks_per_job", "array_parallelism"}}.get(name, set())
        wrong = sorted(k for k, v in options.items() if v is not None and k not in accepted)
        if wrong:
            raise ValueError(f"option(s) {', '.join('--' + w for w in wrong)} do not apply to the {name} executor.")
        summary = run_study(spec, out=root, executor=name, redo=redo, max_tasks=max_tasks, **{k: v for k, v in options.items() if k in accepted})
        if summary["failed"]:
            raise SystemExit(1)
        if summary["remaining"] and not summary["ran"] and summary.get("blocked"):
            why = "; ".join(f"{Path(b).name}: {reason}" for b, reason in summary["blocked"].items())
            raise ValueError(f"{study}: nothing could run, {len(summary['remaining'])} task(s) remain blocked ({why}); fix the study file or the data and run again.")

    def report(self, study: str, out: str | None = None, report_dir: str | None = None) -> str:
        """Aggregate what has finished of STUDY (a study file, with --out its study folder, or a study folder) into
        tidy.csv, report.md, tables/*.csv and PNGs in REPORT_DIR (default: <study folder>/report)."""
        from calibmonai.study.report import write_report

        if out and not (Path(out) / "study.yaml").is_file():
            raise FileNotFoundError(f"{out}: no study has been planned or run in this folder (no study.yaml); run `calibmonai study run {study} --out {out}` first.")
        spec, root = study_folder(study, out, replace=True)
        check_same_study(spec, root, action="report")
        if not (root / "study.yaml").is_file():
            raise FileNotFoundError(f"{root}: no study has been planned or run in this folder (no study.yaml); run `calibmonai study run {study}` first.")
        return str(write_report(root, report_dir))
