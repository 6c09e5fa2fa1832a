"""The main job: prepare the embedded task, train CE, MbLS and MEEP (CE + KL), evaluate, compare."""

from __future__ import annotations

import csv
import math
import os
import shutil
import time
from typing import Any, Sequence

from calibmonai.bundle_tools import bundle_parser, config_files, run_workflow
from calibmonai.evaluation import SUMMARY_COLUMNS

__all__ = ["run_demo", "comparison_table"]

DEMO_METHODS = ("ce", "mbls", "meep_ce_kl")
#: the methods of ``--profile paper``: CE, MbLS at the margins 5, 8, 10, and MEEP (``name:key=value`` sets a loss argument)
PROFILE_METHODS = {"paper": ("ce", "mbls:margin=5", "mbls:margin=8", "mbls:margin=10", "meep_ce_kl")}


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


def _profile_settings(bundle: str, profile: str) -> dict[str, Any]:
    """``epochs`` and ``prepare_kwargs`` of ``configs/profiles/<profile>.yaml`` composed over the bundle."""
    parser = bundle_parser(config_files(bundle, "ce", f"profiles/{profile}.yaml"))
    return {"epochs": int(parser.get_parsed_content("epochs")), "prepare_kwargs": dict(parser.get_parsed_content("prepare_kwargs"))}


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
    runs: str = "runs",
    methods: Sequence[str] | None = None,
    epochs: int | None = None,
    subjects: int = 24,
    bundle: str = "mni_tissue_seg2d",
    profile: str | None = None,
    seed: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Prepare the embedded task, train and evaluate each method, and write ``out`` (comparison table, PNGs).

    ``profile`` (e.g. ``"paper"``) composes ``configs/profiles/<profile>.yaml``: its own cohort (``subjects`` is
    ignored; the data folder defaults to ``<data>_<profile>``), schedule (``epochs`` defaults to the profile's) and
    methods (:data:`PROFILE_METHODS`). ``epochs`` defaults to 30 without a profile. ``seed`` sets the bundle's
    training seed (initialisation, sampling, augmentation; the data stay the same): give each seed its own ``runs``.
    """
    from calibmonai.data import prepare_mni_tissue
    from calibmonai.metrics.plots import plot_reliability_diagram  # noqa: F401 - fail early without matplotlib

    t0 = time.time()
    if methods is None:
        methods = PROFILE_METHODS.get(profile or "", DEMO_METHODS)
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    extra = [f"profiles/{profile}.yaml"] if profile else []
    if profile:
        settings = _profile_settings(bundle, profile)
        epochs = settings["epochs"] if epochs is None else epochs
        if os.path.normpath(data) == os.path.normpath("data/mni_tissue"):
            data = f"data/mni_tissue_{profile}"
        prepare_mni_tissue(data, **settings["prepare_kwargs"])
        subjects = int(settings["prepare_kwargs"].get("num_subjects", subjects))
    else:
        epochs = 30 if epochs is None else epochs
        n_val = max(1, subjects // 6)
        prepare_mni_tissue(data, num_subjects=subjects, split=(subjects - 2 * n_val, n_val, n_val))
    os.makedirs(out, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    curve_files: dict[str, str] = {}  # the profile logs validation curves: {method: its copy in out}
    overrides: dict[str, Any] = {"dataset_dir": data, "runs_dir": runs, "epochs": epochs}
    if seed is not None:
        overrides["seed"] = int(seed)
    for i, spec in enumerate(methods):
        method, loss_overrides = _method_spec(spec)
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
    return results
