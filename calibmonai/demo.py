"""The main job: prepare the embedded task, train CE, MbLS and MEEP (CE + KL), evaluate, compare."""

from __future__ import annotations

import csv
import difflib
import inspect
import math
import os
import shutil
import time
from typing import Any, Sequence

from calibmonai.bundle_tools import as_bool, bundle_parser, check_profile, config_files, method_names, run_workflow
from calibmonai.evaluation import SUMMARY_COLUMNS

__all__ = ["run_demo", "comparison_table", "check_method_spec", "integer_flag", "folder_flag"]

#: the methods of ``--profile none`` (the 24-subject task): CE, MbLS with the paper's margin 10, MEEP (CE + KL)
DEMO_METHODS = ("ce", "mbls", "meep_ce_kl")
#: the methods of ``--profile paper --full true``: CE, MbLS at the margins 5, 8, 10, and MEEP (``name:key=value`` sets
#: a loss argument)
PROFILE_METHODS = {"paper": ("ce", "mbls:margin=5", "mbls:margin=8", "mbls:margin=10", "meep_ce_kl")}
#: the demo's default: the over-confidence regime (profile ``paper``) cut to what fits 15 minutes on 2 CPU cores:
#: its first 400 of 600 epochs (constant learning rate, so the same training up to there; CE's validation NLL is
#: already 11% above its minimum), CE, MbLS at margin 5 and MEEP
DEFAULT_PROFILE = "paper"
#: the schedule of the task without a profile (``--profile none``)
NO_PROFILE_EPOCHS = 30
PROFILE_DEMO = {"paper": {"epochs": 400, "methods": ("ce", "mbls:margin=5", "meep_ce_kl")}}


def _method_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"mbls:margin=5"`` -> ``("mbls", {"loss_kwargs::margin": 5.0})``: the fragment and its config overrides."""
    name, *args = spec.split(":")
    overrides: dict[str, Any] = {}
    for a in args:
        key, eq, value = a.partition("=")
        if not eq or not key:
            raise ValueError(f"method {spec!r}: loss arguments are written name:key=value, got {a!r}.")
        try:
            overrides[f"loss_kwargs::{key}"] = float(value)
        except ValueError:
            overrides[f"loss_kwargs::{key}"] = value
    return name, overrides


def integer_flag(value: Any, flag: str, minimum: int = 1, maximum: int | None = None, what: str = "a positive integer") -> int:
    """``value`` of the command-line flag ``--flag`` as an int in ``[minimum, maximum]``: an int or a string of
    digits (python-fire hands over ``--epochs abc`` as the string ``'abc'``, ``--epochs 2.5`` as a float).

    Raises:
        ValueError: ``--epochs must be a positive integer, got 'abc'.``
    """
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    if number is None or number < minimum or (maximum is not None and number > maximum):
        raise ValueError(f"--{flag} must be {what}, got {value!r}.")
    return number


def folder_flag(value: Any, flag: str) -> str:
    """``value`` of the folder flag ``--flag`` as a path string (python-fire reads ``--out 2024`` as an int)."""
    if isinstance(value, (str, os.PathLike)) and str(value).strip():
        return os.fspath(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"--{flag} must be a folder path, got {value!r}.")


def check_method_spec(spec: str, bundle: str = "mni_tissue_seg2d", extra: Sequence[str] = ()) -> tuple[str, dict[str, Any]]:
    """Check one ``--methods`` entry and return its method fragment and config overrides (:func:`_checked_method`)."""
    name, overrides, _ = _checked_method(spec, bundle, extra)
    return name, overrides


def _checked_method(spec: str, bundle: str = "mni_tissue_seg2d", extra: Sequence[str] = ()) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Check one ``--methods`` entry (``name`` or ``name:key=value[:key=value]``) before anything is trained and
    return its method fragment and config overrides, as :func:`_method_spec`, and the loss arguments they compose.

    The name must be a method fragment (``bundles/methods/<name>.yaml``) and every ``key`` a parameter of that
    method's loss, with a value the loss accepts: the loss is built with the composed ``loss_kwargs``.

    Raises:
        ValueError: naming the spec and the valid methods or parameters.
    """
    from calibmonai.losses import METHODS, get_loss, loss_parameters

    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"--methods: every entry must be a method name such as 'mbls' or 'mbls:margin=5', got {spec!r}.")
    name, overrides = _method_spec(spec)
    available = method_names(bundle)
    if name not in available:
        near = difflib.get_close_matches(name, available, n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
        raise ValueError(f"--methods {spec!r}: unknown method {name!r}.{hint} Methods: {', '.join(available)}.")
    parser = bundle_parser(config_files(bundle, name, *extra), **overrides)
    method = parser.get_parsed_content("method")
    kwargs = dict(parser.get_parsed_content("loss_kwargs"))
    if method not in METHODS:
        raise ValueError(f"--methods {spec!r}: the fragment names the loss {method!r}, which is not one of {', '.join(METHODS)}.")
    names, open_ended = loss_parameters(method)
    listed = ", ".join(names) if names else "none by name"
    if open_ended:
        listed += " (and the keyword arguments of the MONAI loss it wraps)"
    given = [k.split("::", 1)[1] for k in overrides]
    unknown = [k for k in given if k not in names]
    if unknown and not open_ended:
        near = difflib.get_close_matches(unknown[0], names, n=1, cutoff=0.5)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"--methods {spec!r}: {unknown[0]!r} is not a parameter of method {name!r} (loss {method!r}).{hint} Its parameters: {listed}.")
    try:
        get_loss(method, parser.get_parsed_content("num_classes"), parser.get_parsed_content("spatial_dims"), **kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--methods {spec!r}: method {name!r} does not accept the loss arguments {kwargs}: {str(e).rstrip('.')}. Its parameters: {listed}.") from None
    return name, overrides, kwargs


def _profile_settings(bundle: str, profile: str) -> dict[str, Any]:
    """``epochs`` and ``prepare_kwargs`` of ``configs/profiles/<profile>.yaml`` composed over the bundle."""
    parser = bundle_parser(config_files(bundle, "ce", f"profiles/{profile}.yaml"))
    return {"epochs": int(parser.get_parsed_content("epochs")), "prepare_kwargs": dict(parser.get_parsed_content("prepare_kwargs"))}


def next_steps(runs_of: dict[str, tuple[str, dict[str, Any] | None]], runs: str, profile: str | None) -> str:
    """How to use the demo's runs afterwards (``{spec: (method, loss arguments or None for the fragment's)}``): the
    ``calibmonai infer`` command that finds each run (its runs folder, profile and, when not the fragment's
    defaults, all its loss arguments: runs are named by them); ``export-bundle`` takes the same flags."""
    lines = ["use a run (README, 'Using the demo's networks'; `calibmonai export-bundle` takes the same flags and --out DIR):"]
    for spec, (method, loss_kwargs) in runs_of.items():
        flags = f"--method {method}" + (f" --profile {profile}" if profile else "") + (f" --runs_dir {runs}" if os.path.normpath(runs) != "runs" else "")
        if loss_kwargs:
            flags += f' --loss_kwargs "{loss_kwargs!r}"'
        lines.append(f"  {spec}: calibmonai infer --input scans/ --output out/ {flags}")
    return "\n".join(lines)


def comparison_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table: one row per method, the SUMMARY_COLUMNS as mean ± std over test cases."""
    head = "| method | " + " | ".join(n for _, n in SUMMARY_COLUMNS) + " |\n|---|" + "---|" * len(SUMMARY_COLUMNS) + "\n"
    rows = []
    for method, s in results.items():
        cells = []
        for key, _ in SUMMARY_COLUMNS:
            v, sd = s.get(key, math.nan), s.get(f"{key}_std", math.nan)
            cells.append("nan" if math.isnan(v) else f"{v:.4f} ± {sd:.4f}")
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def run_demo(
    out: str = "results/demo",
    data: str = "data/mni_tissue",
    runs: str | None = None,
    methods: Sequence[str] | None = None,
    epochs: int | None = None,
    subjects: int | None = None,
    bundle: str = "mni_tissue_seg2d",
    profile: str | None = DEFAULT_PROFILE,
    seed: int | None = None,
    full: bool = False,
) -> dict[str, dict[str, Any]]:
    """Prepare the embedded task, train and evaluate each method, and write ``out`` (comparison table, PNGs).

    ``profile`` (default ``"paper"``, the over-confidence regime) composes ``configs/profiles/<profile>.yaml``: its
    own cohort (the data folder defaults to ``<data>_<profile>``) and schedule. By default the demo runs the
    profile's first :data:`PROFILE_DEMO` epochs with its three methods; ``full`` runs the profile's whole schedule
    (``epochs`` of the profile) with :data:`PROFILE_METHODS`. ``profile`` ``None``/``"none"``: the 24-subject task
    (``subjects``, default 24), 30 epochs, :data:`DEMO_METHODS`. ``epochs`` and ``methods`` override any of these;
    ``subjects`` needs ``profile`` none (a profile has its own cohort). ``runs`` defaults to ``runs`` for the task's
    own schedule and to ``runs/<epochs>_epochs`` for any other (the default demo: ``runs/400_epochs``), so that runs
    of different lengths never overwrite each other. ``seed`` sets the bundle's training seed (initialisation, sampling, augmentation; the data stay the
    same): give each seed its own ``runs``.

    Every argument is checked before anything is prepared, trained or written: the numbers (``epochs``,
    ``subjects``, ``seed``), the profile, and each method spec as :func:`check_method_spec` checks it.

    Raises:
        ValueError: naming the flag (``--epochs must be a positive integer, got 'abc'.``) or the method spec and the
            valid choices (``--methods 'mbls:margn=5': 'margn' is not a parameter of method 'mbls'...``).
    """
    from calibmonai.data import prepare_mni_tissue
    from calibmonai.metrics.plots import plot_reliability_diagram  # noqa: F401 - fail early without matplotlib

    t0 = time.time()
    # ---- every flag and method checked before anything is prepared, trained or written ----
    out, data = folder_flag(out, "out"), folder_flag(data, "data")
    if epochs is not None:
        epochs = integer_flag(epochs, "epochs")
    if seed is not None:
        seed = integer_flag(seed, "seed", minimum=0, maximum=2**32 - 1, what="an integer in [0, 2**32 - 1]")
    full = as_bool(full, "full")
    profile = check_profile(bundle, profile, alternatives=", or none (the 24-subject task)")
    if profile is None:
        subjects = integer_flag(24 if subjects is None else subjects, "subjects", minimum=3, what="an integer >= 3 (training, validation and test subjects)")
    else:
        if subjects is not None:
            raise ValueError(f"--subjects sets the cohort of the task without a profile; profile {profile!r} has its own: add --profile none.")
    if full and profile is None:
        raise ValueError("--full true runs a profile's whole schedule: name the profile (--profile paper).")
    shortened = profile is not None and not full and profile in PROFILE_DEMO
    if runs is not None:
        runs = folder_flag(runs, "runs")
    if methods is None:
        methods = PROFILE_DEMO[profile]["methods"] if shortened else PROFILE_METHODS.get(profile or "", DEMO_METHODS)
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    elif isinstance(methods, (list, tuple)):
        methods = [m.strip() if isinstance(m, str) else m for m in methods]
    else:
        raise ValueError(f"--methods must be comma-separated method names such as 'ce,mbls:margin=5', got {methods!r}.")
    if not methods:
        raise ValueError(f"--methods names no method; methods: {', '.join(method_names(bundle))}.")
    duplicates = sorted({m for m in methods if methods.count(m) > 1})
    if duplicates:
        raise ValueError(f"--methods names {duplicates[0]!r} more than once (its results would overwrite each other).")
    extra = [f"profiles/{profile}.yaml"] if profile else []
    checked = {spec: _checked_method(spec, bundle, extra) for spec in methods}
    specs = {spec: (name, overrides) for spec, (name, overrides, _) in checked.items()}
    settings = _profile_settings(bundle, profile) if profile else {"epochs": NO_PROFILE_EPOCHS}
    if epochs is None:
        epochs = PROFILE_DEMO[profile]["epochs"] if shortened else settings["epochs"]
    if runs is None:  # runs of another schedule than the task's own never overwrite the full runs, nor each other
        runs = "runs" if epochs == settings["epochs"] else os.path.join("runs", f"{epochs}_epochs")
    if profile:
        if os.path.normpath(data) == os.path.normpath("data/mni_tissue"):
            data = f"data/mni_tissue_{profile}"
        prepare_mni_tissue(data, **settings["prepare_kwargs"])
        subjects = int(settings["prepare_kwargs"].get("num_subjects", subjects))
    else:
        n_val = max(1, subjects // 6)
        prepare_mni_tissue(data, num_subjects=subjects, split=(subjects - 2 * n_val, n_val, n_val))
    os.makedirs(out, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    curve_files: dict[str, str] = {}  # the profile logs validation curves: {method: its copy in out}
    overrides: dict[str, Any] = {"dataset_dir": data, "runs_dir": runs, "epochs": epochs}
    if seed is not None:
        overrides["seed"] = int(seed)
    for i, spec in enumerate(methods):
        method, loss_overrides = specs[spec]
        print(f"\n=== [{i + 1}/{len(methods)}] {spec}: training ({epochs} epochs) — {time.time() - t0:.0f} s elapsed ===", flush=True)
        run_workflow("training", config_files(bundle, method, *extra), **overrides, **loss_overrides)
        print(f"=== [{i + 1}/{len(methods)}] {spec}: evaluating on the test subjects ===", flush=True)
        files = config_files(bundle, method, *extra, "evaluate.yaml")
        parser = bundle_parser(files, **overrides, **loss_overrides)
        parser.get_parsed_content("evaluate")
        eval_dir = parser.get_parsed_content("eval_dir")
        summary = {r["metric"]: float(r["value"]) for r in csv.DictReader(open(os.path.join(eval_dir, "summary.csv")))}
        results[spec] = summary
        tag = spec.replace(":", "_").replace("=", "")
        for png in ("reliability.png", "slice.png", "reference_reliability.png"):
            if os.path.isfile(os.path.join(eval_dir, png)):
                shutil.copy(os.path.join(eval_dir, png), os.path.join(out, f"{tag}_{png}"))
        curves = os.path.join(os.path.dirname(eval_dir), "curves.csv")
        if os.path.isfile(curves):
            curve_files[spec] = os.path.join(out, f"{tag}_curves.csv")
            shutil.copy(curves, curve_files[spec])
    if curve_files:  # every method's NLL / ECE / DSC per epoch in one figure
        from calibmonai.handlers.curves import plot_curves

        plot_curves(curve_files, os.path.join(out, "curves.png"), title=f"validation curves, profile {profile}")
    table = comparison_table(results)
    elapsed = time.time() - t0
    with open(os.path.join(out, "comparison.md"), "w") as f:
        f.write(f"# Embedded MNI152 tissue task{' (profile ' + profile + ')' if profile else ''}: {len(methods)} methods, {epochs} epochs, {subjects} subjects{'' if seed is None else f', seed {seed}'}\n\n")
        f.write("Mean ± std over test subjects. DSC/ASD/HD95: mean over CSF, GM, WM (ASD/HD95 in mm). ECE, CECE, NLL on ground-truth "
                "foreground voxels (15 bins); Brier over all voxels; Brier+ over foreground; ref MAD: mean absolute difference "
                "between predicted and reference tissue probabilities over brain voxels.\n\n")  # fmt: skip
        f.write(table)
        f.write(f"\nTotal time: {elapsed / 60:.1f} min.\n")
    with open(os.path.join(out, "comparison.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method"] + [k for k, _ in SUMMARY_COLUMNS] + [f"{k}_std" for k, _ in SUMMARY_COLUMNS])
        for m, s in results.items():
            w.writerow([m] + [s.get(k, math.nan) for k, _ in SUMMARY_COLUMNS] + [s.get(f"{k}_std", math.nan) for k, _ in SUMMARY_COLUMNS])
    print("\n" + table)
    print(f"results in {out}/ (comparison.md, comparison.csv, *_reliability.png, *_slice.png{', curves.png' if curve_files else ''}); total {elapsed / 60:.1f} min")
    print(next_steps({spec: (name, kwargs if overrides else None) for spec, (name, overrides, kwargs) in checked.items()}, runs, profile))
    return results
