"""Search for the over-confidence regime of the embedded task: train cross-entropy under candidate settings and
read each run's validation curves for the over-fitting signature of the probabilities — validation NLL rising
past its minimum while DSC holds, ECE worse than at the best-calibrated validation (Mukhoti et al., "Calibrating
deep neural networks using focal loss", NeurIPS 2020, Fig. 1; Guo et al., "On calibration of modern neural
networks", ICML 2017, Sec. 3).

Usage (writes ``<out>/<candidate>_curves.csv``, ``candidates.md`` and ``candidates.png``)::

    python -m calibmonai.regime --out results/regime --candidates long,wide_long,clean_long
"""

from __future__ import annotations

import math
import os
import shutil
import time
from typing import Any, Mapping, Sequence

__all__ = ["CANDIDATES", "overfit_signature", "signature_table", "run_candidates"]

#: candidate settings, each composed over ``configs/profiles/paper.yaml`` (config overrides; ``data_suffix`` names the
#: candidate's own prepared folder when it changes ``prepare_kwargs``)
CANDIDATES: dict[str, dict[str, Any]] = {
    "short": {"epochs": 150, "val_interval": 10},  # the profile's first schedule: NLL plateaus, no signature
    "long": {"epochs": 600, "val_interval": 20},  # the profile's schedule now
    "wide_long": {"epochs": 400, "val_interval": 20, "network_def::channels": [32, 64, 128, 256]},
    "clean_long": {"epochs": 600, "val_interval": 20, "prepare_kwargs::label_noise": None, "data_suffix": "clean"},
}


def overfit_signature(rows: Sequence[Mapping[str, float]], dsc_tolerance: float = 0.01, nll_rise: float = 0.02) -> dict[str, Any]:
    """Read one run's validation curves (rows of ``curves.csv``, in epoch order) for the over-fitting signature.

    Returns the epoch of the lowest validation NLL and, at that epoch and at the last one, NLL, DSC, ECE and
    reference ECE (NaN when absent), the relative NLL rise ``(nll_last - nll_min) / nll_min``, and ``signature``:
    True when the NLL rose by more than ``nll_rise`` (relative) after its minimum, the last DSC is no more than
    ``dsc_tolerance`` below the DSC at that minimum, and the last ECE is worse than the ECE there.

    Raises:
        ValueError: no rows, or a row without ``epoch``/``nll``/``dsc``/``ece``.
    """
    if not rows:
        raise ValueError("overfit_signature needs at least one row of validation curves, got none.")
    for key in ("epoch", "nll", "dsc", "ece"):
        if any(key not in r for r in rows):
            raise ValueError(f"every row of the curves needs {key!r}; columns found: {sorted(rows[0])}.")
    best = min(range(len(rows)), key=lambda i: (rows[i]["nll"], i))
    at_min, last = rows[best], rows[-1]
    rise = (last["nll"] - at_min["nll"]) / at_min["nll"] if at_min["nll"] > 0 else math.nan
    out: dict[str, Any] = {"min_nll_epoch": int(at_min["epoch"]), "last_epoch": int(last["epoch"]), "nll_rise": rise}
    for key in ("nll", "dsc", "ece", "ref_ece"):
        out[f"{key}_at_min"] = float(at_min.get(key, math.nan))
        out[f"{key}_last"] = float(last.get(key, math.nan))
    out["best_ece"] = min(float(r["ece"]) for r in rows)
    out["signature"] = bool(rise > nll_rise and last["dsc"] >= at_min["dsc"] - dsc_tolerance and last["ece"] > at_min["ece"])
    return out


def signature_table(signatures: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of :func:`overfit_signature` results, one row per candidate."""
    head = (
        "| candidate | min-NLL epoch | NLL min → last (rise) | DSC at min → last | ECE at min → last (best) | ref ECE at min → last | signature |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for name, s in signatures.items():
        rows.append(
            f"| {name} | {s['min_nll_epoch']} of {s['last_epoch']} | {s['nll_at_min']:.3f} → {s['nll_last']:.3f} ({100 * s['nll_rise']:+.1f}%) "
            f"| {s['dsc_at_min']:.3f} → {s['dsc_last']:.3f} | {s['ece_at_min']:.3f} → {s['ece_last']:.3f} ({s['best_ece']:.3f}) "
            f"| {s['ref_ece_at_min']:.3f} → {s['ref_ece_last']:.3f} | {'yes' if s['signature'] else 'no'} |"
        )
    return head + "\n".join(rows) + "\n"


def run_candidates(
    candidates: Sequence[str] | str = ("long", "wide_long", "clean_long"),
    out: str = "results/regime",
    data: str = "data/mni_tissue_paper",
    runs: str = "runs/regime",
    method: str = "ce",
    bundle: str = "mni_tissue_seg2d",
) -> dict[str, dict[str, Any]]:
    """Train ``method`` under each candidate of :data:`CANDIDATES` (over the paper profile), copy its curves to
    ``out`` and write ``candidates.md`` (signature table) and ``candidates.png`` (NLL/ECE/DSC per epoch)."""
    from calibmonai.bundle_tools import bundle_parser, config_files, run_workflow
    from calibmonai.handlers.curves import plot_curves, read_curves

    if isinstance(candidates, str):
        candidates = [c.strip() for c in candidates.split(",") if c.strip()]
    unknown = [c for c in candidates if c not in CANDIDATES]
    if unknown:
        raise ValueError(f"unknown candidate(s) {unknown}; available: {sorted(CANDIDATES)}.")
    os.makedirs(out, exist_ok=True)
    files = config_files(bundle, method, "profiles/paper.yaml")
    signatures: dict[str, dict[str, Any]] = {}
    curves: dict[str, str] = {}
    t0 = time.time()
    for i, name in enumerate(candidates):
        settings = dict(CANDIDATES[name])
        suffix = settings.pop("data_suffix", "")
        folder = f"{data}_{suffix}" if suffix else data
        overrides = {"dataset_dir": folder, "default_dataset_dir": folder, "runs_dir": os.path.join(runs, name), **settings}
        print(f"=== [{i + 1}/{len(candidates)}] candidate {name}: {settings or 'the paper profile'} — {time.time() - t0:.0f} s elapsed ===", flush=True)
        t_run = time.time()
        run_workflow("training", files, **overrides)
        src = os.path.join(bundle_parser(files, **overrides).get_parsed_content("run_dir"), "curves.csv")
        if not os.path.isfile(src):
            raise FileNotFoundError(f"candidate {name}: its training wrote no validation curves ({src}).")
        dst = os.path.join(out, f"{name}_curves.csv")
        shutil.copy(src, dst)
        curves[name] = dst
        signatures[name] = overfit_signature(read_curves(dst))
        signatures[name]["minutes"] = (time.time() - t_run) / 60
        print(signature_table({name: signatures[name]}), flush=True)
    plot_curves(curves, os.path.join(out, "candidates.png"), columns=("dsc", "nll", "ece", "ref_ece", "mean_confidence"), title=f"{method}: validation curves per candidate")
    with open(os.path.join(out, "candidates.md"), "w") as f:
        f.write(f"# Over-confidence regime: {method} under each candidate (validation curves, clean labels)\n\n")
        for name in candidates:
            f.write(f"- {name}: {CANDIDATES[name] or 'profiles/paper.yaml as it is'} ({signatures[name]['minutes']:.1f} min)\n")
        f.write("\n" + signature_table(signatures))
    print(f"results in {out}/ (candidates.md, candidates.png, *_curves.csv); total {(time.time() - t0) / 60:.1f} min")
    return signatures


if __name__ == "__main__":
    import fire

    fire.Fire(run_candidates)
