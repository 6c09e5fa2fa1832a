"""Run a study's tasks through an existing engine: a local process pool, Ray, or Slurm through submitit.

Each task declares its resources (GPUs, CPUs, memory; :class:`calibmonai.study.spec.Resources`) and runs
:func:`calibmonai.study.tasks.execute_task`, which writes its result into the study folder; the engines only place
tasks on machines. Dependencies: Ray receives them as object references (a task starts when its inputs are
done); the process pool and submitit are handed each task once its dependencies are done.

- ``local`` (default): a ``concurrent.futures.ProcessPoolExecutor`` (spawned workers, imports paid once per
  worker) sized to the machine: one worker per GPU group when GPUs exist (each worker sees its own GPUs through
  ``CUDA_VISIBLE_DEVICES``), else ``cpu_count // cpus`` workers, also bounded by memory; ``workers=0`` runs the
  tasks one after the other in this process.
- ``ray``: Ray tasks with ``num_cpus``/``num_gpus``/``memory``, on a Ray started here (``num_cpus`` to bound it) or
  an existing cluster (``address="auto"`` or ``ray://host:10001``); the cluster must have calibmonai installed
  and see the study folder at the same path. ``pip install 'calibmonai[ray]'``.
- ``slurm``: submitit job arrays (partition, time limit, GPUs, CPUs, memory per job; ``tasks_per_job`` tasks run
  one after the other in one job); ``cluster="local"`` runs the same jobs as local processes (submitit's
  ``LocalExecutor``) and ``cluster="debug"`` in this process. ``pip install 'calibmonai[slurm]'``.
"""

from __future__ import annotations

import concurrent.futures as cf
import fnmatch
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from calibmonai.study.plan import Task, blocked_bundles, build_plan, marker_path, read_marker, task_status, write_plan
from calibmonai.study.spec import StudySpec, load_study

__all__ = ["LocalExecutor", "RayExecutor", "SlurmExecutor", "EXECUTORS", "run_study", "default_study_dir", "prepare_data", "dependants"]


def default_study_dir(spec: StudySpec) -> Path:
    """``results/studies/<name>`` under the current directory."""
    return Path("results") / "studies" / spec.name


def _physical_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return float("inf")


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class _Driver:
    """Hands tasks to an engine once their dependencies are done; a task whose dependency failed is not run."""

    def __init__(self, tasks: Sequence[Task], done: Iterable[str], max_tasks: int | None, log: Callable[[str], None]) -> None:
        self.tasks = {t.id: t for t in tasks}
        self.order = [t.id for t in tasks]
        self.done = set(done)
        self.failed: set[str] = set()
        self.not_run: set[str] = set()
        self.submitted: set[str] = set()
        self.results: list[dict[str, Any]] = []
        self.budget = max_tasks
        self.log = log

    def ready(self) -> list[Task]:
        out = []
        for tid in self.order:
            if tid in self.submitted or tid in self.not_run:
                continue
            deps = self.tasks[tid].deps
            if any(d in self.failed or d in self.not_run for d in deps):
                self.not_run.add(tid)
                self.results.append({"id": tid, "ok": False, "skipped": True, "wall_s": 0.0, "error": "a dependency failed"})
                continue
            if all(d in self.done for d in deps):
                out.append(self.tasks[tid])
        return out

    def take(self, tasks: list[Task], limit: int | None = None) -> list[Task]:
        """Mark up to ``limit`` (and the ``max_tasks`` budget) of ``tasks`` as submitted."""
        n = len(tasks) if limit is None else max(0, limit)
        if self.budget is not None:
            n = min(n, self.budget)
            self.budget -= n
        chosen = tasks[:n]
        self.submitted.update(t.id for t in chosen)
        return chosen

    def finished(self, result: dict[str, Any]) -> None:
        self.results.append(result)
        if result["ok"]:
            self.done.add(result["id"])
            state = "skipped (finished earlier)" if result.get("skipped") else f"done in {result['wall_s']:.1f} s"
        else:
            self.failed.add(result["id"])
            state = f"FAILED: {result['error']}"
        self.log(f"[study] {result['id']}: {state}")

    def exhausted(self) -> bool:
        return self.budget is not None and self.budget <= 0


# ---------------------------------------------------------------- local process pool
def _exit_quietly(signum: int, frame: Any) -> None:
    """A pool worker's Ctrl-C or termination: stop the trainings it started (torchrun runs in its own process group)
    and leave at once (its task unfinished, no marker), without a traceback; the driver process reports the
    interruption."""
    from calibmonai.study.tasks import stop_child_trainings

    stop_child_trainings()
    os._exit(128 + int(signum))


def _exit_when_orphaned(parent: int, interval: float = 1.0) -> None:
    """A pool worker's watchdog: when the study process that started it is gone (killed with ``kill`` or
    ``kill -9``, which its pool cannot see), leave within ``interval`` seconds: a worker left training would write
    into the run folder that the next ``study run`` trains again."""
    while True:
        time.sleep(interval)
        if os.getppid() != parent:
            from calibmonai.study.tasks import stop_child_trainings

            stop_child_trainings()
            os._exit(143)


def _init_worker(gpu_queue: Any, parent: int | None = None) -> None:
    """Give a pool worker its GPUs (``CUDA_VISIBLE_DEVICES``) before torch initialises CUDA; Ctrl-C ends it quietly
    (a handler, not ``SIG_IGN``: a ``torchrun`` it starts still gets the default); it ends itself when the study
    process ``parent`` is gone (:func:`_exit_when_orphaned`)."""
    import signal
    import threading

    signal.signal(signal.SIGINT, _exit_quietly)
    signal.signal(signal.SIGTERM, _exit_quietly)  # the study terminates its workers on Ctrl-C or kill
    if parent is not None:
        threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True, name="calibmonai-orphan-watchdog").start()
    if gpu_queue is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_queue.get()


def _interrupt(signum: int, frame: Any) -> None:
    """``kill`` (SIGTERM) of the study process: stop as Ctrl-C does (the workers are terminated, their tasks stay
    unfinished)."""
    raise KeyboardInterrupt(f"signal {signum}")


class _TermAsInterrupt:
    """While a study runs, SIGTERM (``kill``) interrupts it as Ctrl-C does, whatever the executor (in the main
    thread only, where Python delivers signals); the previous handler is restored afterwards."""

    def __enter__(self) -> "_TermAsInterrupt":
        import signal
        import threading

        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, _interrupt)
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _pool_entry(study_dir: str, task: dict[str, Any], force: bool) -> dict[str, Any]:
    from calibmonai.study.tasks import execute_task

    return execute_task(study_dir, task, capture_fds=True, force=force)


class LocalExecutor:
    """A process pool on this machine: ``workers`` processes (default: sized to the GPUs, CPUs and memory), each
    running one task at a time; ``workers=0`` runs tasks in this process."""

    name = "local"

    def __init__(self, workers: int | None = None, gpus: int | None = None, log: Callable[[str], None] = print) -> None:
        self.workers = workers
        self.gpus = gpus
        self.log = log

    def pool_size(self, tasks: Sequence[Task]) -> tuple[int, list[str]]:
        """Number of workers and the ``CUDA_VISIBLE_DEVICES`` of each (empty without GPUs)."""
        gpus = _gpu_count() if self.gpus is None else int(self.gpus)
        per_task_gpus = max([t.resources.gpus for t in tasks] + [1])
        cpus = max([t.resources.cpus for t in tasks] + [1])
        mem = max([t.resources.memory_gb for t in tasks] + [0.1])
        if gpus > 0:
            groups = [",".join(str(g) for g in range(i, i + per_task_gpus)) for i in range(0, gpus - per_task_gpus + 1, per_task_gpus)]
            if not groups:
                raise ValueError(f"a task needs {per_task_gpus} GPUs, this machine has {gpus}.")
            n = len(groups)
        else:
            groups = []
            n = max(1, (os.cpu_count() or 1) // cpus)
        n = max(1, min(n, int(_physical_memory_gb() // mem) or 1))
        if self.workers is not None:
            n = int(self.workers)
            if groups:
                groups = (groups * (n // len(groups) + 1))[:n] if n else groups
        return n, groups[:n] if groups else []

    def run(self, tasks: Sequence[Task], study_dir: str, done: Iterable[str], max_tasks: int | None = None, force: Iterable[str] = ()) -> list[dict[str, Any]]:
        from calibmonai.study.tasks import execute_task

        force = set(force)
        driver = _Driver(tasks, done, max_tasks, self.log)
        n, groups = self.pool_size(tasks)
        if n == 0:
            self.log(f"[study] local executor: {len(tasks)} task(s) in this process")
            while not driver.exhausted():
                batch = driver.take(driver.ready(), 1)
                if not batch:
                    break
                driver.finished(execute_task(study_dir, batch[0], force=batch[0].id in force))
            return driver.results
        self.log(f"[study] local executor: {len(tasks)} task(s) on {n} worker process(es)" + (f", GPUs {groups}" if groups else ""))
        ctx = mp.get_context("spawn")
        queue = None
        if groups:
            queue = ctx.Queue()
            for g in groups:
                queue.put(g)
        running: dict[cf.Future, str] = {}
        workers: dict[int, Any] = {}  # pid -> multiprocessing.Process, kept to tell a dead worker from those stopped after it
        with cf.ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_init_worker, initargs=(queue, os.getpid())) as pool:
            try:
                while True:
                    if not driver.exhausted():
                        for t in driver.take(driver.ready(), n - len(running)):
                            try:
                                running[pool.submit(_pool_entry, study_dir, t.to_dict(), t.id in force)] = t.id
                            except cf.process.BrokenProcessPool:  # a worker died: nothing more can start
                                driver.not_run.add(t.id)
                                driver.results.append({"id": t.id, "ok": False, "skipped": True, "wall_s": 0.0, "error": "not started: a worker process died"})
                                driver.budget = 0
                    if not running:
                        break
                    workers.update(getattr(pool, "_processes", None) or {})
                    finished, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
                    for fut in finished:
                        tid = running.pop(fut)
                        try:
                            driver.finished(fut.result())
                        except Exception as e:  # noqa: BLE001 - a worker died (killed, out of memory)
                            self._worker_died(driver, study_dir, tid, e, workers)
            except KeyboardInterrupt:
                for fut in running:
                    fut.cancel()
                for proc in list((getattr(pool, "_processes", None) or {}).values()):
                    if proc.is_alive():  # a worker still training: its task stays unfinished (no marker)
                        proc.terminate()
                raise
        return driver.results

    @staticmethod
    def _worker_died(driver: _Driver, study_dir: str, tid: str, error: BaseException, workers: dict[int, Any]) -> None:
        """A running task whose future broke: when one worker dies the pool stops every other one (SIGTERM, which
        they answer with exit status 143), so only the task of the worker that died fails (with a failure marker);
        the others were stopped and are reported not run, to be run again."""
        import signal

        from calibmonai.study.tasks import task_lock_holder, write_failure_marker

        proc = workers.get(task_lock_holder(Path(study_dir), tid) or -1)
        if proc is not None:
            # the pool's manager thread reaps its workers too: a poll racing with its waitpid reads no exit status
            # once (exitcode None) before the status it collected is cached, so wait for the status, not only the join
            proc.join(timeout=5)
            deadline = time.time() + 5
            while proc.exitcode is None and time.time() < deadline:
                time.sleep(0.05)
        if proc is not None and proc.exitcode in (-signal.SIGTERM, 128 + signal.SIGTERM):
            driver.not_run.add(tid)
            driver.results.append({"id": tid, "ok": False, "skipped": True, "wall_s": 0.0, "error": "stopped: another worker process died"})
            driver.log(f"[study] {tid}: stopped, another worker process died (not run: the next study run runs it)")
            return
        code = f" (exit status {proc.exitcode})" if proc is not None and proc.exitcode is not None else ""
        message = f"its worker process died{code} (killed, or out of memory?): {error!r}"
        write_failure_marker(Path(study_dir), tid, message)
        driver.finished({"id": tid, "ok": False, "skipped": False, "wall_s": 0.0, "error": message})


# ---------------------------------------------------------------- Ray
def _ray_entry(study_dir: str, task: dict[str, Any], force: bool, *deps: dict[str, Any]) -> dict[str, Any]:
    """A Ray task: runs only when every dependency (passed as object references, resolved by Ray) succeeded."""
    from calibmonai.study.tasks import execute_task

    bad = [d["id"] for d in deps if not d.get("ok")]
    if bad:
        return {"id": task["id"], "ok": False, "skipped": True, "wall_s": 0.0, "error": f"dependency {bad[0]} failed"}
    return execute_task(study_dir, task, capture_fds=True, force=force)


class RayExecutor:
    """Ray tasks with the declared ``num_cpus``, ``num_gpus`` and ``memory``; dependencies as object references.

    Args:
        address: an existing cluster (``"auto"``, ``"ray://head:10001"``); ``None`` starts a local Ray.
        num_cpus, num_gpus: size of a Ray started here (defaults: the machine's).
        object_store_memory: bytes of the object store of a Ray started here (tasks pass only small dicts).
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None, object_store_memory: int = 256 * 2**20, log: Callable[[str], None] = print) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.object_store_memory = object_store_memory
        self.log = log

    def run(self, tasks: Sequence[Task], study_dir: str, done: Iterable[str], max_tasks: int | None = None, force: Iterable[str] = ()) -> list[dict[str, Any]]:
        try:
            import ray
        except ImportError as e:
            raise RuntimeError("the ray executor needs Ray: pip install 'calibmonai[ray]'") from e
        force = set(force)
        started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if self.address:
                kwargs["address"] = self.address
            else:
                kwargs.update(num_cpus=self.num_cpus, num_gpus=self.num_gpus, object_store_memory=self.object_store_memory)
            ray.init(**kwargs)
            started = True
        try:
            total = ray.cluster_resources()
            self.log(f"[study] ray executor: {len(tasks)} task(s) on a cluster with {total.get('CPU', 0):g} CPU(s), {total.get('GPU', 0):g} GPU(s)")
            remote = ray.remote(_ray_entry)
            refs: dict[str, Any] = {}
            done = set(done)
            budget = max_tasks
            for t in tasks:
                if budget is not None and budget <= 0:
                    break
                if any(d not in done and d not in refs for d in t.deps):
                    continue  # a dependency left out by max_tasks
                opts = self._options(t, total)
                refs[t.id] = remote.options(**opts).remote(study_dir, t.to_dict(), t.id in force, *[refs[d] for d in t.deps if d in refs])
                if budget is not None:
                    budget -= 1
            results = []
            pending = list(refs.values())
            by_ref = {r: tid for tid, r in refs.items()}
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for r in ready:
                    try:
                        res = ray.get(r)
                    except Exception as e:  # noqa: BLE001 - the worker process died
                        res = {"id": by_ref[r], "ok": False, "skipped": False, "wall_s": 0.0, "error": f"Ray task died: {e!r}"}
                    results.append(res)
                    self.log(f"[study] {res['id']}: " + ("done" if res["ok"] else f"FAILED: {res['error']}") + (f" in {res['wall_s']:.1f} s" if res["ok"] else ""))
            return results
        finally:
            if started:
                ray.shutdown()

    def _options(self, t: Task, total: dict[str, float]) -> dict[str, Any]:
        """Ray resources of a task, bounded by the cluster's (a request larger than every node would wait forever)."""
        gpus = float(t.resources.gpus) if total.get("GPU", 0) > 0 else 0.0
        cpus = min(float(t.resources.cpus), float(total.get("CPU", 1)))
        opts: dict[str, Any] = {"num_cpus": cpus, "num_gpus": min(gpus, float(total.get("GPU", 0))), "name": t.id.replace("/", ":"), "max_retries": 0}
        mem = int(t.resources.memory_gb * 2**30)
        if 0 < mem <= total.get("memory", 0):
            opts["memory"] = mem
        return opts


# ---------------------------------------------------------------- Slurm through submitit
def _submitit_entry(study_dir: str, tasks: list[dict[str, Any]], force: list[str]) -> list[dict[str, Any]]:
    """One submitit job: its tasks one after the other (a later one only when the earlier succeeded)."""
    from calibmonai.study.tasks import execute_task

    out: list[dict[str, Any]] = []
    for t in tasks:
        if out and not out[-1]["ok"]:
            out.append({"id": t["id"], "ok": False, "skipped": True, "wall_s": 0.0, "error": f"{out[-1]['id']} failed in the same job"})
            continue
        out.append(execute_task(study_dir, t, capture_fds=True, force=t["id"] in force))
    return out


class SlurmExecutor:
    """submitit job arrays: every batch of ready tasks of the same resources is one array.

    Args:
        cluster: ``"slurm"`` (default), ``"local"`` (submitit's LocalExecutor: local processes) or ``"debug"``.
        partition: Slurm partition; ``timeout_min``: time limit per job; ``tasks_per_job``: tasks run one after the
            other in one job (amortises start-up for short tasks); ``array_parallelism``: jobs running at once.
        slurm_additional_parameters: passed to submitit (``{"account": "x", "qos": "y"}``).
        poll_s: seconds between checks of the jobs' states.
    """

    name = "slurm"

    def __init__(
        self, cluster: str | None = "slurm", partition: str | None = None, timeout_min: int = 720, tasks_per_job: int = 1,
        array_parallelism: int = 64, slurm_additional_parameters: dict[str, Any] | None = None, poll_s: float = 5.0,
        log: Callable[[str], None] = print,
    ) -> None:  # fmt: skip
        self.cluster = cluster
        self.partition = partition
        self.timeout_min = int(timeout_min)
        self.tasks_per_job = max(1, int(tasks_per_job))
        self.array_parallelism = max(1, int(array_parallelism))
        self.additional = dict(slurm_additional_parameters or {})
        self.poll_s = float(poll_s)
        self.log = log

    def _executor(self, study_dir: str, t: Task) -> Any:
        try:
            import submitit
        except ImportError as e:
            raise RuntimeError("the slurm executor needs submitit: pip install 'calibmonai[slurm]'") from e
        ex = submitit.AutoExecutor(folder=os.path.join(study_dir, "logs", "submitit", "%j"), cluster=self.cluster)
        params: dict[str, Any] = {"timeout_min": self.timeout_min, "cpus_per_task": t.resources.cpus, "gpus_per_node": t.resources.gpus, "tasks_per_node": 1, "nodes": 1, "name": f"study-{t.kind}"}
        if ex.cluster == "slurm":
            params.update(mem_gb=t.resources.memory_gb, slurm_array_parallelism=self.array_parallelism)
            if self.partition:
                params["slurm_partition"] = self.partition
            if self.additional:
                params["slurm_additional_parameters"] = self.additional
        elif ex.cluster == "local":
            params["gpus_per_node"] = min(t.resources.gpus, _gpu_count())
        ex.update_parameters(**params)
        return ex

    def run(self, tasks: Sequence[Task], study_dir: str, done: Iterable[str], max_tasks: int | None = None, force: Iterable[str] = ()) -> list[dict[str, Any]]:
        force = sorted(set(force))
        driver = _Driver(tasks, done, max_tasks, self.log)
        running: list[tuple[Any, list[str]]] = []
        self.log(f"[study] slurm executor (submitit, cluster={self.cluster}): {len(tasks)} task(s)")
        try:
            while True:
                free = self.array_parallelism - len(running)
                if free > 0 and not driver.exhausted():
                    batch = driver.take(driver.ready(), free * self.tasks_per_job)
                    groups: dict[tuple, list[Task]] = {}
                    for t in batch:
                        groups.setdefault((t.resources, t.kind == "train"), []).append(t)
                    for group in groups.values():
                        chunks = [group[i : i + self.tasks_per_job] for i in range(0, len(group), self.tasks_per_job)]
                        ex = self._executor(study_dir, group[0])
                        jobs = ex.map_array(_submitit_entry, [study_dir] * len(chunks), [[t.to_dict() for t in c] for c in chunks], [force] * len(chunks))
                        for job, chunk in zip(jobs, chunks):
                            running.append((job, [t.id for t in chunk]))
                            self.log(f"[study] submitted job {job.job_id}: {', '.join(t.id for t in chunk)}")
                if not running:
                    break
                time.sleep(self.poll_s)
                still = []
                for job, ids in running:
                    if not job.done():
                        still.append((job, ids))
                        continue
                    try:
                        results = job.result()
                    except Exception as e:  # noqa: BLE001 - the job died (time limit, node failure, out of memory)
                        results = [{"id": i, "ok": read_marker(study_dir, i) is not None, "skipped": False, "wall_s": 0.0, "error": f"job {job.job_id} failed: {str(e)[-300:]}"} for i in ids]
                    for r in results:
                        driver.finished(r)
                running = still
        except KeyboardInterrupt:
            for job, _ in running:
                job.cancel(check=False)
            raise
        return driver.results


EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor, "slurm": SlurmExecutor}


# ---------------------------------------------------------------- the study
def prepare_data(spec: StudySpec, log: Callable[[str], None] = print, bundles: Iterable[str] | None = None) -> None:
    """Call each bundle's ``prepare`` (``{_target_: module.function, **kwargs}``) for a ``dataset_dir`` that does not
    exist yet (or is empty), once, here, before any task reads it; ``bundles`` limits it to those names."""
    import pydoc

    wanted = None if bundles is None else set(bundles)
    for b in spec.bundles:
        if not b.prepare or not b.dataset_dir or (wanted is not None and b.name not in wanted):
            continue
        if Path(b.dataset_dir).is_dir() and any(Path(b.dataset_dir).iterdir()):
            continue
        conf = dict(b.prepare)
        target = conf.pop("_target_", None)
        fn = pydoc.locate(str(target)) if target else None
        if not callable(fn):
            raise ValueError(f"bundle {b.name}: prepare needs '_target_' naming a function, got {target!r}.")
        log(f"[study] preparing {b.dataset_dir} with {target}")
        fn(b.dataset_dir, **conf)


def dependants(tasks: Sequence[Task], ids: Iterable[str]) -> set[str]:
    """``ids`` and every task that depends on them, directly or not."""
    out = set(ids)
    changed = True
    while changed:
        changed = False
        for t in tasks:
            if t.id not in out and any(d in out for d in t.deps):
                out.add(t.id)
                changed = True
    return out


def run_study(
    study: str | os.PathLike | StudySpec, out: str | os.PathLike | None = None, executor: str | None = None, redo: str | Sequence[str] | None = None,
    max_tasks: int | None = None, log: Callable[[str], None] = print, **options: Any,
) -> dict[str, Any]:  # fmt: skip
    """Run what is not finished of a study, resumably.

    A task whose marker exists is never run again unless ``redo`` names it: glob patterns on task ids
    (``"train/*/unet/seed0/mbls*"``, ``"noise/*"``; ``"*"`` for all), which also re-run every task depending on a
    re-run one. Tasks of bundles that are not installed are left out (``blocked`` in the plan).

    Args:
        executor: ``local``, ``ray`` or ``slurm`` (default: the study file's ``executor.name``, else ``local``).
        max_tasks: start at most this many tasks now (the rest on the next call).
        options: the executor's arguments (``workers``, ``address``, ``num_cpus``, ``partition``, ``cluster``, ...),
            over the study file's ``executor`` section.

    Returns:
        ``{"study_dir", "ran", "failed", "not_run", "remaining", "blocked", "wall_s"}`` (``blocked``: ``{bundle: why}``
        for the bundles whose unfinished tasks could not run).
    """
    t0 = time.time()
    spec = study if isinstance(study, StudySpec) else load_study(study)
    root = Path(out) if out is not None else default_study_dir(spec)
    tasks = build_plan(spec, root)
    write_plan(spec, tasks, root)
    conf = dict(spec.executor)
    name = executor or conf.pop("name", None) or "local"
    conf.pop("name", None)
    if name not in EXECUTORS:
        raise ValueError(f"Unknown executor {name!r}; available executors: {', '.join(EXECUTORS)}.")
    section = conf.pop(name, {}) if isinstance(conf.get(name), dict) else {}
    kwargs = {**{k: v for k, v in conf.items() if not isinstance(v, dict)}, **section, **{k: v for k, v in options.items() if v is not None}}
    patterns = [p for p in (redo.split(",") if isinstance(redo, str) else (redo or [])) if p]
    forced: set[str] = set()
    if patterns:
        matched = {t.id for t in tasks if any(fnmatch.fnmatchcase(t.id, p) for p in patterns)}
        if not matched:
            raise ValueError(f"--redo {','.join(patterns)} matches no task of the study; see 'study plan'.")
        forced = dependants(tasks, matched)
        for tid in forced:
            m = marker_path(root, tid)
            if m.exists():
                m.unlink()
    status = task_status(tasks, root, spec)
    todo = [t for t in tasks if status[t.id] not in ("done", "changed", "blocked")]
    for bundle, why in blocked_bundles(tasks, spec).items():
        log(f"[study] {sum(1 for t in tasks if t.bundle == bundle and status[t.id] == 'blocked')} task(s) of {bundle} blocked: {why}")
    changed = [t.id for t in tasks if status[t.id] == "changed"]
    if changed:
        log(f"[study] {len(changed)} finished task(s) were run with other settings; kept (redo them with --redo): {changed[:3]}")
    done = {t.id for t in tasks if status[t.id] in ("done", "changed")}
    log(f"[study] {spec.name}: {len(tasks)} task(s), {len(done)} finished, {len(todo)} to run, study folder {root}")
    results: list[dict[str, Any]] = []
    if todo:
        prepare_data(spec, log, bundles={t.bundle for t in todo})
        engine = EXECUTORS[name](log=log, **kwargs)
        with _TermAsInterrupt():
            results = engine.run(todo, str(root.resolve()), done, max_tasks=max_tasks, force=forced)
    ran = [r["id"] for r in results if r["ok"] and not r.get("skipped")]
    failed = [r["id"] for r in results if not r["ok"] and not r.get("skipped")]
    not_run = [r["id"] for r in results if not r["ok"] and r.get("skipped")]
    final = task_status(tasks, root)
    remaining = [t.id for t in tasks if final[t.id] not in ("done", "changed")]
    left = {t.bundle for t in tasks if final[t.id] not in ("done", "changed")}
    blocked = {b: why for b, why in blocked_bundles(tasks, spec).items() if b in left}
    wall = time.time() - t0
    log(f"[study] ran {len(ran)} task(s), {len(failed)} failed, {len(not_run)} not run after a failure, {len(remaining)} remaining; {wall:.0f} s")
    errors = {r["id"]: r.get("error") for r in results}
    for tid in failed:
        path = marker_path(root, tid, failed=True)
        log(f"[study]   failed: {tid} ({f'see {path}' if path.exists() else errors.get(tid)})")
    return {"study_dir": str(root), "ran": ran, "failed": failed, "not_run": not_run, "remaining": remaining, "blocked": blocked, "wall_s": wall}
