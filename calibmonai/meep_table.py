"""MEEP's results table from the evaluated runs of one dataset: DSC, HD95, Brier, Brier+ and ECE, mean ± std over seeds.

Larrazabal, A. J., Martinez, C., Dolz, J., Ferrante, E. "Maximum Entropy on Erroneous Predictions (MEEP): Improving
Model Calibration for Medical Image Segmentation." MICCAI 2023 (Tables 1-2: every loss and regulariser, and post-hoc
calibration of the CE and Dice models, on the left atrium and WMH, mean over three seeds).

The 3D bundles (``bundles/left_atrium_seg3d``, ``bundles/wmh_seg3d``) train each seed into its own folder,
``<runs_dir>/<dataset>/<run>`` for seed 0 and ``<run>_seed<k>`` for seed ``k``, and evaluate it into ``eval/``
(``eval_platt/``, ``eval_isotonic/`` with a post-hoc calibrator). :func:`collect_runs` reads every
``summary.csv`` found there; :func:`meep_table` averages each run's test means over its seeds; :func:`write_meep_table`
writes ``meep_table.md`` and ``meep_table.csv`` (the bundles' ``meep_table`` workflow).

For a study (``calibmonai study``: several bundles, hyper-parameter grids and model selection), the study report's
own MEEP table (:func:`calibmonai.study.report.meep_table`) serves the same purpose from the study's tidy CSV.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["MEEP_COLUMNS", "EVALUATIONS", "run_and_seed", "read_summary", "collect_runs", "meep_table", "write_meep_table"]

#: (key of ``summary.csv``, column of the table)
MEEP_COLUMNS: tuple[tuple[str, str], ...] = (
    ("dsc_mean", "DSC"), ("hd95_mean", "HD95"), ("brier", "Brier"), ("brier_plus", "Brier+"), ("ece", "ECE"),
)  # fmt: skip
#: evaluation folder of a run -> suffix of its row (the model's own probabilities, then post-hoc calibrators)
EVALUATIONS: dict[str, str] = {"eval": "", "eval_platt": " + Platt", "eval_isotonic": " + isotonic", "eval_ts": " + TS", "eval_lts": " + LTS"}
#: rows in MEEP's order: the CE-based losses, then the Dice-based ones; other methods after them
_ORDER = ("ce", "ecp", "focal", "meep_ce_entropy", "meep_ce_kl", "ce_dice", "dice", "meep_dice_entropy", "meep_dice_kl")
_SEED = re.compile(r"^(?P<run>.+)_seed(?P<seed>\d+)$")


def run_and_seed(folder_name: str) -> tuple[str, int]:
    """``("meep_ce_kl_lam0.3", 2)`` for a run folder ``meep_ce_kl_lam0.3_seed2``; seed 0 for a name without suffix."""
    m = _SEED.match(folder_name)
    return (m.group("run"), int(m.group("seed"))) if m else (folder_name, 0)


def read_summary(path: str | Path) -> dict[str, float]:
    """The ``metric -> value`` rows of an evaluation's ``summary.csv`` (:func:`calibmonai.evaluation.evaluate_run`).

    Raises:
        FileNotFoundError: naming the file when it does not exist.
        ValueError: naming the file when it has no ``metric``/``value`` columns.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation summary at {path}: run the 'evaluate' workflow of this run first.")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"metric", "value"} <= set(reader.fieldnames):
            raise ValueError(f"{path} is not an evaluation summary (columns {reader.fieldnames}, expected metric, value).")
        return {r["metric"]: float(r["value"]) if r["value"] not in ("", "nan") else math.nan for r in reader}


def collect_runs(dataset_runs_dir: str | Path, evaluations: Mapping[str, str] | None = None) -> dict[str, dict[int, dict[str, float]]]:
    """``{row: {seed: summary}}`` of every evaluated run under ``dataset_runs_dir`` (``<runs_dir>/<dataset>``).

    A row is a run name plus the suffix of its evaluation folder (``"ce"``, ``"ce + Platt"``); runs that were not
    evaluated are left out.

    Raises:
        FileNotFoundError: naming the folder when it does not exist.
    """
    root = Path(dataset_runs_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no runs folder {root}: train and evaluate runs of this dataset first.")
    evaluations = EVALUATIONS if evaluations is None else evaluations
    rows: dict[str, dict[int, dict[str, float]]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        run, seed = run_and_seed(folder.name)
        for sub, suffix in evaluations.items():
            summary = folder / sub / "summary.csv"
            if summary.is_file():
                rows.setdefault(run + suffix, {})[seed] = read_summary(summary)
    return rows


def _method_rank(row: str) -> tuple[int, str]:
    run = row.split(" + ")[0]
    for i, method in sorted(enumerate(_ORDER), key=lambda t: -len(t[1])):
        if run == method or run.startswith(method + "_"):
            return i, row
    return len(_ORDER), row


def meep_table(rows: Mapping[str, Mapping[int, Mapping[str, float]]], digits: int = 4) -> tuple[list[str], list[list[str]], list[dict[str, Any]]]:
    """MEEP's table of :func:`collect_runs`' rows: for each row and column, the mean ± std over seeds of the test mean
    over cases (population std; ``n/a`` where no seed has the value).

    Returns ``(header, body, records)``: the Markdown header and body, and one record a row with ``row``, ``seeds``
    and ``<key>``/``<key>_std`` for each column key.
    """
    header = ["run", "seeds"] + [name for _, name in MEEP_COLUMNS]
    body: list[list[str]] = []
    records: list[dict[str, Any]] = []
    for row in sorted(rows, key=_method_rank):
        seeds = sorted(rows[row])
        record: dict[str, Any] = {"row": row, "seeds": " ".join(str(s) for s in seeds)}
        cells = [row, str(len(seeds))]
        for key, _ in MEEP_COLUMNS:
            v = np.asarray([rows[row][s].get(key, math.nan) for s in seeds], dtype=float)
            v = v[~np.isnan(v)]
            mean, std = (float(v.mean()), float(v.std())) if v.size else (math.nan, math.nan)
            record[key], record[f"{key}_std"] = mean, std
            cells.append("n/a" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}")
        body.append(cells)
        records.append(record)
    return header, body, records


def write_meep_table(dataset_runs_dir: str | Path, out_dir: str | Path | None = None, title: str = "", evaluations: Mapping[str, str] | None = None) -> Path:
    """Write ``meep_table.md`` and ``meep_table.csv`` of every evaluated run under ``dataset_runs_dir`` into
    ``out_dir`` (default: ``dataset_runs_dir``), print the Markdown and return its path.

    Raises:
        FileNotFoundError: when the folder does not exist or holds no evaluated run.
    """
    rows = collect_runs(dataset_runs_dir, evaluations)
    if not rows:
        raise FileNotFoundError(f"no evaluated run under {dataset_runs_dir} (no <run>/eval*/summary.csv): run 'evaluate' first.")
    header, body, records = meep_table(rows)
    out = Path(out_dir) if out_dir is not None else Path(dataset_runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = title or Path(dataset_runs_dir).name
    lines = [f"# MEEP table: {name}", "", "Test mean over cases of each seed, then mean ± std over seeds (HD95 in mm; ECE with 15 bins on "
             "ground-truth foreground voxels).", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
    lines += ["| " + " | ".join(r) + " |" for r in body]
    md = out / "meep_table.md"
    md.write_text("\n".join(lines) + "\n")
    keys = ["row", "seeds"] + [k for key, _ in MEEP_COLUMNS for k in (key, f"{key}_std")]
    with open(out / "meep_table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for r in records:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    print(md.read_text(), flush=True)
    return md
