"""``calibmonai study plan|run|report``: a python-fire class (``python -m calibmonai.study ...`` works too)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["StudyCLI", "study_folder"]


def study_folder(study: str, out: str | None = None) -> tuple[Any, Path]:
    """The checked study and its folder: ``out``, else the folder ``study`` names (a study folder holding
    ``study.yaml``), else ``results/studies/<name>``."""
    from calibmonai.study.executors import default_study_dir
    from calibmonai.study.spec import load_study

    spec = load_study(study)
    if out:
        return spec, Path(out)
    if Path(study).is_dir():
        return spec, Path(study)
    return spec, default_study_dir(spec)


class StudyCLI:
    """Plan, run and report a comparison study described by a study file (see studies/*.yaml)."""

    def plan(self, study: str, out: str | None = None, verbose: bool = True) -> None:
        """List the tasks of STUDY (training, selection, test evaluation, post-hoc, noise evaluation, analysis) with
        their dependencies and state in the study folder, and the run count and estimated GPU-hours per bundle."""
        from calibmonai.bundle_tools import as_bool
        from calibmonai.study.plan import blocked_bundles, build_plan, estimate_gpu_hours, plan_table, task_status, write_plan

        spec, root = study_folder(study, out)
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
        array_parallelism: int | None = None,
    ) -> None:  # fmt: skip
        """Run what is not finished of STUDY (resumable; a finished task is redone only when --redo names it).

        --executor local|ray|slurm; local: --workers N (0: in this process); ray: --address auto|ray://host:10001,
        --num_cpus/--num_gpus for a Ray started here; slurm: --partition, --timeout_min, --tasks_per_job,
        --array_parallelism, --cluster local|debug (submitit's local processes / this process).
        --redo 'train/*/unet/seed0/mbls*,noise/*' re-runs those tasks and their dependants; --max_tasks N starts at most N.
        """
        from calibmonai.study.executors import run_study

        spec, root = study_folder(study, out)
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

    def report(self, study: str, out: str | None = None, report_dir: str | None = None) -> str:
        """Aggregate what has finished of STUDY (a study file, with --out its study folder, or a study folder) into
        tidy.csv, report.md, tables/*.csv and PNGs in REPORT_DIR (default: <study folder>/report)."""
        from calibmonai.study.report import write_report

        _, root = study_folder(study, out)
        return str(write_report(root, report_dir))
