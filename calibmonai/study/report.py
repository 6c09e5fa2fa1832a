"""The report of a study: one tidy CSV (run x case x metric) of whatever has finished, and a Markdown report with
the papers' tables and figures.

Tables and figures (per bundle and backbone; the selected hyper-parameters of each method unless said otherwise):

- Table 1: DSC and ASD per class and their mean; Table 2: ECE and CECE, with the sum-rank and the mean case-rank
  over DSC, ASD, ECE and CECE (:mod:`calibmonai.study.stats`); mean ± std over test cases (seeds/folds averaged
  per case first);
- paired comparisons: per-case differences of every method against the reference (CE), Wilcoxon signed-rank p;
- Table 3: ECE, CECE and DSC before (Pre) and after each post-hoc calibrator (TS, LTS);
- Table 4: the L1 against the L2 margin penalty (``mbls`` vs ``mbls_l2``) at every margin of the grid;
- MEEP's table: DSC, HD95, Brier, Brier+, ECE of CE, CE + Dice and the MEEP variants, mean ± std over seeds;
- robustness: DSC and ECE against the standard deviation of Gaussian noise on the test images;
- sensitivity: DSC and ECE against each method's balancing term (every grid point);
- backbones: CE against MbLS for every backbone;
- reliability diagrams and confidence maps side by side, one panel per method;
- the distribution of logit distances ``max_j z_j - z_k`` per ground-truth class, CE against MbLS.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from calibmonai.study.plan import Task, read_marker, replicate_tag
from calibmonai.study.stats import mean_case_rank, paired_wilcoxon, sum_rank
from calibmonai.study.tasks import noise_dir_name

__all__ = ["TIDY_COLUMNS", "RANK_METRICS", "collect_tidy", "write_tidy", "read_tidy", "write_report", "table1", "table2", "table3", "table4", "meep_table", "paired_table", "noise_table", "sensitivity_table", "backbone_table"]

TIDY_COLUMNS = ["bundle", "backbone", "seed", "fold", "method", "run", "param", "param_value", "selected", "evaluation", "sigma", "case", "metric", "value"]
#: the metrics of Tables 1 and 2, ranked together (MbLS's ranking)
RANK_METRICS = ["dsc_mean", "asd_mean", "ece", "cece"]
NAMES = {
    "dsc_mean": "DSC", "asd_mean": "ASD", "hd95_mean": "HD95", "ece": "ECE", "cece": "CECE", "brier": "Brier",
    "brier_plus": "Brier+", "nll": "NLL", "ref_mad": "ref MAD",
}  # fmt: skip


# ---------------------------------------------------------------- the tidy CSV
def _rerooted(study_dir: Path, run_dir: str) -> Path:
    """A run folder under this study folder (``runs/<bundle>/<backbone>/<replicate>/<run>``), wherever the study
    ran: the report reads a study folder mounted at another path too."""
    return study_dir.joinpath(*Path(run_dir).parts[-5:])


def _read_per_case(path: Path) -> list[tuple[str, str, float]]:
    out = []
    if not path.is_file():
        return out
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            case = row.pop("case", "")
            for k, v in row.items():
                if v in (None, ""):
                    continue
                try:
                    out.append((case, k, float(v)))
                except ValueError:
                    continue
    return out


def _load_tasks(study_dir: Path) -> list[Task]:
    plan = study_dir / "plan.json"
    if not plan.is_file():
        raise FileNotFoundError(f"{plan} does not exist: {study_dir} is not a study folder (run 'study plan' or 'study run' first).")
    return [Task.from_dict(d) for d in json.loads(plan.read_text())]


def _noise_dir(run_dir: Path, sigma: float, sigmas: Sequence[float]) -> Path:
    """The evaluation folder of noise ``sigma``: :func:`noise_dir_name`, or the three-decimal name that studies
    before it used (``sigma0.013`` for 0.0125) when only that one exists and no other level of the task shares it."""
    folder = run_dir / "noise" / noise_dir_name(sigma)
    legacy = run_dir / "noise" / f"sigma{float(sigma):.3f}"
    if not folder.is_dir() and legacy.is_dir() and sum(1 for s in sigmas if f"{float(s):.3f}" == f"{float(sigma):.3f}") == 1:
        return legacy
    return folder


def collect_tidy(study_dir: str | Path) -> list[dict[str, Any]]:
    """Every number of the finished tasks of a study, one row per run x evaluation x case x metric.

    ``evaluation``: ``validation`` (the best validation key metric, case empty), ``test``, a calibrator name
    (``ts``, ``lts``) or ``noise`` (with ``sigma``). ``selected``: whether the run is its method's selected grid
    point (empty until the selection finished). Rows are sorted, so equal studies give equal files.
    """
    root = Path(study_dir)
    tasks = _load_tasks(root)
    selected: dict[tuple[str, str, str], str] = {}
    for t in tasks:
        if t.kind == "select":
            m = read_marker(root, t.id)
            if m is not None:
                selected[(t.bundle, t.backbone, t.method)] = m["result"]["run_name"]
    meta: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for t in tasks:
        if t.kind == "train":
            rep = replicate_tag(t.seed or 0, t.fold)
            param = t.params.get("param")
            meta[(t.bundle, t.backbone, rep, t.params["run_name"])] = {
                "bundle": Path(t.bundle).name, "backbone": t.backbone, "seed": t.seed, "fold": "" if t.fold is None else t.fold,
                "method": t.method, "run": t.params["run_name"], "param": param or "",
                "param_value": t.params["loss_kwargs"].get(param, "") if param else "",
                "selected": "" if (t.bundle, t.backbone, t.method) not in selected else selected[(t.bundle, t.backbone, t.method)] == t.params["run_name"],
            }  # fmt: skip
    rows: list[dict[str, Any]] = []

    def add(key: tuple[str, str, str, str], evaluation: str, sigma: float, values: Iterable[tuple[str, str, float]]) -> None:
        base = meta.get(key)
        if base is None:
            return
        for case, metric, value in values:
            rows.append({**base, "evaluation": evaluation, "sigma": sigma, "case": case, "metric": metric, "value": value})

    for t in tasks:
        marker = read_marker(root, t.id)
        if marker is None or t.kind in ("select", "analysis"):
            continue
        rep = replicate_tag(t.seed or 0, t.fold)
        res = marker["result"]
        if t.kind == "train":
            add((t.bundle, t.backbone, rep, t.params["run_name"]), "validation", 0.0, [("", str(res.get("metric") or "val_key_metric"), float(res["best_metric"]))])
            continue
        run_dir = _rerooted(root, t.params["run_dir"] if t.kind == "evaluate" else res["run_dir"])
        key = (t.bundle, t.backbone, rep, run_dir.name)
        if t.kind == "evaluate":
            add(key, "test", 0.0, _read_per_case(run_dir / "eval" / "per_case.csv"))
        elif t.kind == "posthoc":
            for name in t.params["calibrators"]:
                add(key, name, 0.0, _read_per_case(run_dir / f"eval_{name}" / "per_case.csv"))
        elif t.kind == "noise":
            for sigma in t.params["sigmas"]:
                add(key, "noise", float(sigma), _read_per_case(_noise_dir(run_dir, sigma, t.params["sigmas"]) / "per_case.csv"))
    order = ("bundle", "backbone", "seed", "fold", "method", "run", "evaluation", "sigma", "case", "metric")
    rows.sort(key=lambda r: tuple(str(r[k]) if not isinstance(r[k], (int, float)) or isinstance(r[k], bool) else f"{r[k]:020.6f}" for k in order))
    return rows


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return format(v, ".10g")
    return str(v)


def write_tidy(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write the tidy rows as CSV with :data:`TIDY_COLUMNS`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(TIDY_COLUMNS)
        for r in rows:
            w.writerow([_fmt_value(r[k]) for k in TIDY_COLUMNS])
    return path


def read_tidy(path: str | Path) -> list[dict[str, Any]]:
    """Read a tidy CSV back (``value``, ``sigma`` as floats; ``seed`` as int; ``selected`` as bool or ``""``)."""
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            r = dict(r)
            r["value"] = float(r["value"])
            r["sigma"] = float(r["sigma"])
            r["seed"] = int(r["seed"]) if r["seed"] not in ("", "None") else None
            r["selected"] = {"True": True, "False": False}.get(r["selected"], "")
            out.append(r)
    return out


# ---------------------------------------------------------------- aggregation
def _rows(rows: Iterable[Mapping[str, Any]], **eq: Any) -> list[Mapping[str, Any]]:
    return [r for r in rows if all(r[k] == v for k, v in eq.items())]


def _per_case(rows: Iterable[Mapping[str, Any]], by: str = "method") -> dict[str, dict[str, dict[str, float]]]:
    """``{group: {metric: {case: value averaged over seeds/folds}}}``."""
    acc: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        acc[str(r[by])][r["metric"]][r["case"]].append(float(r["value"]))
    return {g: {m: {c: float(np.nanmean(v)) if np.any(~np.isnan(v)) else math.nan for c, v in cases.items()} for m, cases in ms.items()} for g, ms in acc.items()}


def _mean_std(values: Iterable[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    return (float(v.mean()), float(v.std())) if v.size else (math.nan, math.nan)


def _pm(values: Iterable[float], digits: int = 4) -> str:
    m, s = _mean_std(values)
    return "n/a" if math.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


def _method_order(methods: Iterable[str], reference: str) -> list[str]:
    ms = sorted(set(methods))
    return ([reference] if reference in ms else []) + [m for m in ms if m != reference]


def _selected_test(rows: Sequence[Mapping[str, Any]], bundle: str, backbone: str, evaluation: str = "test", sigma: float = 0.0) -> list[Mapping[str, Any]]:
    return [r for r in rows if r["bundle"] == bundle and r["backbone"] == backbone and r["selected"] is True and r["evaluation"] == evaluation and r["sigma"] == sigma]


def _classes(metrics: Iterable[str], prefix: str) -> list[str]:
    return [m[len(prefix) :] for m in sorted(set(metrics)) if m.startswith(prefix) and m != f"{prefix}mean"]


def table1(rows: Sequence[Mapping[str, Any]], bundle: str, backbone: str, reference: str = "ce", class_order: Sequence[str] = ()) -> tuple[list[str], list[list[str]]]:
    """Table 1: DSC and ASD per class and their mean, mean ± std over test cases, one row per method; classes in
    ``class_order`` (the bundle's order) first, any other alphabetically."""
    data = _per_case(_selected_test(rows, bundle, backbone))
    metrics = {m for d in data.values() for m in d}
    found = _classes(metrics, "dsc_")
    classes = [c for c in class_order if c in found] + [c for c in found if c not in class_order]
    cols = [f"dsc_{c}" for c in classes] + ["dsc_mean"] + [f"asd_{c}" for c in classes] + ["asd_mean"]
    header = ["method"] + [f"DSC {c}" for c in classes] + ["DSC mean"] + [f"ASD {c}" for c in classes] + ["ASD mean"]
    body = [[m] + [_pm(data[m].get(k, {}).values()) for k in cols] for m in _method_order(data, reference)]
    return header, body


def table2(rows: Sequence[Mapping[str, Any]], bundle: str, backbone: str, reference: str = "ce") -> tuple[list[str], list[list[str]]]:
    """Table 2: ECE and CECE (mean ± std over test cases) and the rankings over :data:`RANK_METRICS`.

    The mean case-rank ranks the methods on every case any of them has: a case a method lacks (a partly finished
    study) ranks it last there, as a missing value does (:func:`calibmonai.study.stats.rank_values`)."""
    data = _per_case(_selected_test(rows, bundle, backbone))
    methods = _method_order(data, reference)
    header = ["method", "ECE", "CECE", "sum-rank", "mean case-rank"]
    if not methods:
        return header, []
    metrics = [k for k in RANK_METRICS if all(k in data[m] for m in methods)]
    cases = sorted(set.union(*[set(data[m][k]) for m in methods for k in metrics])) if metrics else []
    means = {m: {k: _mean_std(data[m][k].values())[0] for k in metrics} for m in methods}
    sr = sum_rank(means, metrics) if metrics else {}
    cr = mean_case_rank({m: {k: [data[m][k].get(c, math.nan) for c in cases] for k in metrics} for m in methods}, metrics) if metrics and cases else {}
    body = [[m, _pm(data[m].get("ece", {}).values()), _pm(data[m].get("cece", {}).values()), f"{sr.get(m, math.nan):g}", f"{cr.get(m, math.nan):.2f}"] for m in methods]
    return header, body


def paired_table(rows: Sequence[Mapping[str, Any]], bundle: str, backbone: str, reference: str = "ce", metrics: Sequence[str] = ("dsc_mean", "hd95_mean", "ece", "cece", "brier")) -> list[dict[str, Any]]:
    """Per-case differences of every method against ``reference`` with the Wilcoxon signed-rank p-value; one record
    per method x metric. Each case is first averaged over seeds/folds (as in the tables): the pairs are the test
    cases both methods have, since the seeds' repeats of one case are not independent cases (counting them as such
    would make the p-value too small)."""
    values = _per_case(_selected_test(rows, bundle, backbone))
    out: list[dict[str, Any]] = []
    if reference not in values:
        return out
    for m in _method_order(values, reference):
        if m == reference:
            continue
        for k in metrics:
            ref, other = values[reference].get(k, {}), values[m].get(k, {})
            keys = sorted(set(ref) & set(other))
            if not keys:
                continue
            res = paired_wilcoxon([other[i] for i in keys], [ref[i] for i in keys])
            out.append({"method": m, "reference": reference, "metric": k, **res})
    return out


def table3(rows: Sequence[Mapping[str, Any]], bundle: str, backbone: str, calibrators: Sequence[str], reference: str = "ce") -> tuple[list[str], list[list[str]]]:
    """Table 3: ECE, CECE and DSC of each method before (Pre) and after each calibrator, mean ± std over cases."""
    header = ["method", "calibration", "ECE", "CECE", "DSC"]
    body = []
    pre = _per_case(_selected_test(rows, bundle, backbone))
    after = {c: _per_case(_selected_test(rows, bundle, backbone, evaluation=c)) for c in calibrators}
    for m in _method_order(pre, reference):
        if not any(m in after[c] for c in calibrators):
            continue
        for stage, data in [("Pre", pre)] + [(c.upper(), after[c]) for c in calibrators]:
            if m in data:
                body.append([m, stage] + [_pm(data[m].get(k, {}).values()) for k in ("ece", "cece", "dsc_mean")])
    return header, body


def table4(rows: Sequence[Mapping[str, Any]], bundle: str, backbone: str) -> tuple[list[str], list[list[str]]]:
    """Table 4: MbLS with the L1 (``mbls``) against the L2 (``mbls_l2``) penalty, every margin of the grid."""
    header = ["margin", "L1 DSC", "L1 ECE", "L1 CECE", "L2 DSC", "L2 ECE", "L2 CECE"]
    test = [r for r in rows if r["bundle"] == bundle and r["backbone"] == backbone and r["evaluation"] == "test" and r["method"] in ("mbls", "mbls_l2") and r["param"] == "margin"]
    if not {r["method"] for r in test} >= {"mbls", "mbls_l2"}:
        return header, []
    by = defaultdict(list)
    for r in test:
        by[(r["method"], str(r["param_value"]))].append(r)
    margins = sorted({str(r["param_value"]) for r in test}, key=float)
    body = []
    for mg in margins:
        cells = [mg]
        for method in ("mbls", "mbls_l2"):
            data = _per_case(by.get((method, mg), [])).get(method, {})
            cells += [_pm(data.get(k, {}).values()) for k in ("dsc_mean", "ece", "cece")]
        body.append(cells)
    return header, body


MEEP_COLUMNS = ["dsc_mean", "hd95_mean", "brier", "brier_plus", "ece"]
#: MEEP's rows (Larrazabal et al.): the CE-based losses, then the Dice-based ones
MEEP_ROWS = ("ce", "ecp", "focal", "meep_ce_entropy", "meep_ce_kl", "ce_dice", "meep_dice_entropy", "meep_dice_kl")


def meep_table(rows: Sequence[Mapping[str, Any]], bundle: str, backbone: str) -> tuple[list[str], list[list[str]]]:
    """MEEP's table: DSC, HD95, Brier, Brier+ and ECE of the methods of :data:`MEEP_ROWS` in the study; the mean over
    test cases of each seed/fold, then mean ± std over seeds/folds."""
    header = ["method"] + [NAMES[k] for k in MEEP_COLUMNS]
    sel = [r for r in _selected_test(rows, bundle, backbone) if r["method"] in MEEP_ROWS]
    if not any(r["method"].startswith("meep") for r in sel):
        return header, []
    per_seed: dict[str, dict[str, dict[tuple, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in sel:
        per_seed[r["method"]][r["metric"]][(r["seed"], r["fold"])].append(float(r["value"]))
    order = [m for m in MEEP_ROWS if m in per_seed]
    body = [[m] + [_pm([_mean_std(v)[0] for v in per_seed[m].get(k, {}).values()]) for k in MEEP_COLUMNS] for m in order]
    return header, body


def noise_table(rows: Sequence[Mapping[str, Any]], bundle: str, backbone: str, reference: str = "ce") -> tuple[list[str], list[list[str]], dict[str, dict[str, dict[float, float]]]]:
    """DSC and ECE (mean over cases) of each method at every noise level (sigma 0: the plain test evaluation)."""
    curves: dict[str, dict[str, dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
    sel = [r for r in rows if r["bundle"] == bundle and r["backbone"] == backbone and r["selected"] is True and (r["evaluation"] == "noise" or (r["evaluation"] == "test" and r["sigma"] == 0.0))]
    for (method, sigma), data in _group_cases(sel, ("method", "sigma")).items():
        for k in ("dsc_mean", "ece"):
            if k in data:
                curves[method][k][sigma] = _mean_std(data[k].values())[0]
    sigmas = sorted({s for c in curves.values() for s in c.get("dsc_mean", {})})
    header = ["method"] + [f"DSC σ={s:g}" for s in sigmas] + [f"ECE σ={s:g}" for s in sigmas]
    body = [[m] + [_num(curves[m]["dsc_mean"].get(s)) for s in sigmas] + [_num(curves[m]["ece"].get(s)) for s in sigmas] for m in _method_order(curves, reference)]
    if len(sigmas) < 2:
        body = []
    return header, body, curves


def _group_cases(rows: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> dict[tuple, dict[str, dict[str, float]]]:
    acc: dict[tuple, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        acc[tuple(r[k] for k in keys)][r["metric"]][r["case"]].append(float(r["value"]))
    return {g: {m: {c: float(np.nanmean(v)) for c, v in cs.items()} for m, cs in ms.items()} for g, ms in acc.items()}


def _num(v: float | None, digits: int = 4) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def sensitivity_table(rows: Sequence[Mapping[str, Any]], bundle: str, backbone: str) -> tuple[list[str], list[list[str]], dict[str, dict[str, dict[float, float]]]]:
    """DSC and ECE (test, mean over cases and seeds) of every grid point of the methods whose balancing term takes
    several values."""
    test = [r for r in rows if r["bundle"] == bundle and r["backbone"] == backbone and r["evaluation"] == "test" and r["param"] != ""]
    curves: dict[str, dict[str, dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
    params: dict[str, str] = {}
    for (method, param, value), data in _group_cases(test, ("method", "param", "param_value")).items():
        params[method] = param
        for k in ("dsc_mean", "ece"):
            if k in data:
                curves[method][k][float(value)] = _mean_std(data[k].values())[0]
    curves = {m: c for m, c in curves.items() if len(c.get("dsc_mean", {})) > 1}
    header = ["method", "balancing term", "value", "DSC", "ECE"]
    body = [[m, params[m], f"{v:g}", _num(curves[m]["dsc_mean"][v]), _num(curves[m].get("ece", {}).get(v))] for m in sorted(curves) for v in sorted(curves[m]["dsc_mean"])]
    return header, body, curves


def backbone_table(rows: Sequence[Mapping[str, Any]], bundle: str, reference: str = "ce", other: str = "mbls") -> tuple[list[str], list[list[str]]]:
    """CE against MbLS for every backbone: DSC and ECE, mean ± std over test cases (selected runs)."""
    header = ["backbone", f"{reference} DSC", f"{reference} ECE", f"{other} DSC", f"{other} ECE"]
    body = []
    for backbone in sorted({r["backbone"] for r in rows if r["bundle"] == bundle}):
        data = _per_case(_selected_test(rows, bundle, backbone))
        if reference in data or other in data:
            body.append([backbone] + [_pm(data.get(m, {}).get(k, {}).values()) for m in (reference, other) for k in ("dsc_mean", "ece")])
    return header, body


# ---------------------------------------------------------------- figures
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_curves(curves: Mapping[str, Mapping[str, Mapping[float, float]]], path: Path, xlabel: str, title: str, per_method: bool = False) -> Path:
    plt = _plt()
    keys = [("dsc_mean", "DSC"), ("ece", "ECE")]
    if per_method:
        methods = list(curves)
        fig, axes = plt.subplots(2, len(methods), figsize=(3.6 * len(methods), 5.5), squeeze=False)
        for j, m in enumerate(methods):
            for i, (k, name) in enumerate(keys):
                xs = sorted(curves[m].get(k, {}))
                axes[i, j].plot(xs, [curves[m][k][x] for x in xs], "o-")
                axes[i, j].set_xlabel(f"{m}: {xlabel}" if i == 1 else "")
                axes[i, j].set_ylabel(name)
                axes[i, j].set_title(m if i == 0 else "")
    else:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), squeeze=False)
        for i, (k, name) in enumerate(keys):
            for m, c in curves.items():
                xs = sorted(c.get(k, {}))
                axes[0, i].plot(xs, [c[k][x] for x in xs], "o-", label=m)
            axes[0, i].set_xlabel(xlabel)
            axes[0, i].set_ylabel(name)
            axes[0, i].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_reliability(analyses: Mapping[str, Mapping[str, np.ndarray]], path: Path, title: str) -> Path:
    plt = _plt()
    methods = list(analyses)
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.8), squeeze=False)
    for ax, m in zip(axes[0], methods):
        a = analyses[m]
        edges = a["rel_edges"]
        width = edges[1] - edges[0]
        acc = np.nan_to_num(a["rel_accuracy"])
        ax.bar(edges[:-1], acc, width=width, align="edge", edgecolor="k", lw=0.4, alpha=0.8, label="accuracy")
        conf = a["rel_confidence"]
        ok = ~np.isnan(conf)
        ax.plot((edges[:-1] + width / 2)[ok], conf[ok], "r_", mew=2, ms=8, label="confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{m}\nECE {float(a['rel_ece']):.4f}", fontsize=9)
        ax.set_xlabel("confidence")
    axes[0, 0].set_ylabel("accuracy")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_confidence_maps(analyses: Mapping[str, Mapping[str, np.ndarray]], path: Path, title: str) -> Path:
    plt = _plt()
    methods = list(analyses)
    first = analyses[methods[0]]
    n_cls = max(int(first["panel_label"].max()), max(int(a["panel_pred"].max()) for a in analyses.values()), 1)
    fig, axes = plt.subplots(2, len(methods) + 1, figsize=(2.8 * (len(methods) + 1), 5.6), squeeze=False)

    def show(ax: Any, img: np.ndarray, name: str, **kw: Any) -> Any:
        im = ax.imshow(np.asarray(img, dtype=float).T[::-1], **kw)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
        return im

    show(axes[0, 0], first["panel_image"], "image", cmap="gray")
    show(axes[1, 0], first["panel_label"], "ground truth", cmap="viridis", vmin=0, vmax=n_cls)
    im = None
    for j, m in enumerate(methods, start=1):
        show(axes[0, j], analyses[m]["panel_pred"], f"{m}: prediction", cmap="viridis", vmin=0, vmax=n_cls)
        im = show(axes[1, j], analyses[m]["panel_confidence"], f"{m}: confidence", cmap="magma", vmin=0, vmax=1)
    if im is not None:
        fig.colorbar(im, ax=axes[1, :].tolist(), fraction=0.02)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_logit_gaps(analyses: Mapping[str, Mapping[str, np.ndarray]], path: Path, title: str) -> Path:
    plt = _plt()
    methods = list(analyses)
    first = analyses[methods[0]]
    names = [str(c) for c in first["class_names"]]
    edges = first["gap_edges"]
    centres = (edges[:-1] + edges[1:]) / 2
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.4), squeeze=False)
    for c, name in enumerate(names):
        ax = axes[0, c]
        for m in methods:
            h = analyses[m]["gap_hist"][c].astype(float)
            if h.sum() > 0:
                ax.step(centres, h / h.sum(), where="mid", label=m)
        ax.set_yscale("log")
        ax.set_xlabel("max_j z_j - z_k")
        ax.set_title(f"ground truth: {name}", fontsize=9)
    axes[0, 0].set_ylabel("fraction of distances")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def gap_fractions(hist: np.ndarray, edges: np.ndarray, margin: float) -> np.ndarray:
    """Per class, the fraction of logit distances larger than ``margin`` (a multiple of the bin width)."""
    h = np.asarray(hist, dtype=float)
    first = int(np.searchsorted(edges, margin, side="left"))
    total = h.sum(1)
    return np.where(total > 0, h[:, first:].sum(1) / np.maximum(total, 1), math.nan)


# ---------------------------------------------------------------- the report
def _md(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    return "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n" + "".join("| " + " | ".join(map(str, r)) + " |\n" for r in body)


def _csv(path: Path, header: Sequence[str], body: Sequence[Sequence[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(body)


def _class_order(root: Path, tasks: Sequence[Task], bundle: str) -> list[str]:
    """The class names of a bundle in its own order: the ``dsc_<class>`` columns of a finished evaluation."""
    for t in tasks:
        if t.kind == "evaluate" and Path(t.bundle).name == bundle and read_marker(root, t.id) is not None:
            path = _rerooted(root, t.params["run_dir"]) / "eval" / "per_case.csv"
            if path.is_file():
                with open(path, newline="") as f:
                    header = next(csv.reader(f), [])
                return [c[4:] for c in header if c.startswith("dsc_") and c != "dsc_mean"]
    return []


def _analyses(root: Path, tasks: Sequence[Task], bundle: str, backbone: str) -> dict[str, dict[str, np.ndarray]]:
    """The analysis of each method's selected run (first seed/fold that has one)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for t in tasks:
        if t.kind != "analysis" or Path(t.bundle).name != bundle or t.backbone != backbone or t.method in out:
            continue
        m = read_marker(root, t.id)
        if m is None:
            continue
        path = _rerooted(root, m["result"]["run_dir"]) / "analysis" / "analysis.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                out[t.method] = {k: z[k] for k in z.files}
    return out


def write_report(study_dir: str | Path, out: str | Path | None = None) -> Path:
    """Aggregate whatever has finished into ``<out>/tidy.csv``, ``<out>/report.md``, ``<out>/tables/*.csv`` and the
    PNGs (default ``out``: ``<study>/report``); returns the path of ``report.md``."""
    from calibmonai.study.plan import task_status
    from calibmonai.study.spec import load_study

    root = Path(study_dir)
    spec = load_study(root)
    tasks = _load_tasks(root)
    out = Path(out) if out is not None else root / "report"
    (out / "tables").mkdir(parents=True, exist_ok=True)
    rows = collect_tidy(root)
    write_tidy(rows, out / "tidy.csv")
    rows = read_tidy(out / "tidy.csv")  # the report reads what the CSV holds
    status = task_status(tasks, root)
    finished = sum(1 for s in status.values() if s in ("done", "changed"))
    ref = spec.reference
    md = [f"# Study {spec.name}\n", f"{finished} of {len(tasks)} tasks finished ({time.strftime('%Y-%m-%d %H:%M')}); tidy data: `tidy.csv` ({len(rows)} rows, run x case x metric).\n"]
    changed = [t.id for t in tasks if status[t.id] == "changed"]
    if changed:
        shown = ", ".join(f"`{c}`" for c in changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        md.append(
            f"**{len(changed)} finished task(s) ran with other settings than the study file now gives** ({shown}): e.g. a "
            "selection made before a grid point was added, which has not compared it. Their results are shown as they are; "
            "`calibmonai study run STUDY.yaml --redo '<id>'` re-runs them and what depends on them.\n"
        )
    unfinished = sorted({t.kind for t in tasks if status[t.id] not in ("done", "changed")})
    if unfinished:
        md.append(f"Unfinished task kinds: {', '.join(unfinished)} (`study plan` lists them); the tables below use what has finished.\n")
    md.append(
        f"Selected run per method: the grid point with the best mean validation {spec.selection_metric} over seeds/folds. Mean ± std over "
        "test cases (each case averaged over seeds/folds first); DSC/ASD/HD95 over the foreground classes; ECE/CECE with 15 bins on "
        "ground-truth foreground voxels.\n"
    )  # fmt: skip
    figures: list[str] = []

    def section(title: str, text: str) -> None:
        md.append(f"\n### {title}\n\n{text}\n")

    def table(name: str, title: str, header: Sequence[str], body: Sequence[Sequence[str]], missing: str) -> None:
        if body:
            _csv(out / "tables" / f"{name}.csv", header, body)
            section(title, _md(header, body))
        else:
            section(title, f"_Not available: {missing}._")

    for bundle in sorted({r["bundle"] for r in rows} | {Path(b.name).name for b in spec.bundles}):
        backbones = [b for b in spec.backbones if any(r["bundle"] == bundle and r["backbone"] == b for r in rows)]
        if not backbones:
            md.append(f"\n## {bundle}\n\n_No finished run yet._\n")
            continue
        for backbone in backbones:
            tag = f"{bundle}__{backbone}"
            md.append(f"\n## {bundle}, {backbone}\n")
            table(f"{tag}__table1", "Table 1: DSC and ASD per class", *table1(rows, bundle, backbone, ref, _class_order(root, tasks, bundle)), "no finished test evaluation of a selected run")
            table(f"{tag}__table2", "Table 2: ECE and CECE; sum-rank and mean case-rank over DSC, ASD, ECE, CECE", *table2(rows, bundle, backbone, ref), "no finished test evaluation of a selected run")
            pairs = paired_table(rows, bundle, backbone, ref)
            if pairs:
                cols = ["method", "metric", "n", "mean_diff", "median_diff", "statistic", "p_value"]
                _csv(out / "tables" / f"{tag}__paired.csv", cols, [[p[c] for c in cols] for p in pairs])
                metrics = list(dict.fromkeys(p["metric"] for p in pairs))
                methods = list(dict.fromkeys(p["method"] for p in pairs))
                cell = {(p["method"], p["metric"]): f"{p['mean_diff']:+.4f} (p={p['p_value']:.3g}, n={int(p['n'])})" for p in pairs}
                section(
                    f"Paired comparisons against {ref}: mean per-case difference (Wilcoxon signed-rank p, cases)",
                    _md(["method"] + [NAMES.get(k, k) for k in metrics], [[m] + [cell.get((m, k), "n/a") for k in metrics] for m in methods])
                    + "\nA p-value above 0.05 means the difference is within case-to-case variation (few cases cannot reach small p-values: "
                    "with n pairs the exact two-sided test cannot go below 2^(1-n)).",
                )  # fmt: skip
            else:
                section(f"Paired comparisons against {ref}", f"_Not available: needs the reference {ref} and another method with finished test evaluations._")
            table(f"{tag}__table3", "Table 3: post-hoc calibration (Pre / " + " / ".join(c.upper() for c in spec.posthoc) + ")", *table3(rows, bundle, backbone, spec.posthoc, ref), "no finished post-hoc task")
            table(f"{tag}__table4", "Table 4: MbLS penalty, L1 against L2", *table4(rows, bundle, backbone), "needs methods mbls and mbls_l2 with a margin grid")
            table(f"{tag}__meep", "MEEP: DSC, HD95, Brier, Brier+, ECE (mean ± std over seeds)", *meep_table(rows, bundle, backbone), "needs a MEEP method")
            h, b, curves = noise_table(rows, bundle, backbone, ref)
            if b:
                png = _plot_curves(curves, out / f"{tag}__noise.png", "noise sigma (fraction of the intensity range)", f"{bundle} ({backbone}): Gaussian noise on the test images")
                figures.append(png.name)
                _csv(out / "tables" / f"{tag}__noise.csv", h, b)
                section("Robustness to Gaussian noise on the test images", _md(h, b) + f"\n![noise]({png.name})")
            else:
                section("Robustness to Gaussian noise on the test images", "_Not available: needs finished noise evaluations._")
            h, b, curves = sensitivity_table(rows, bundle, backbone)
            if b:
                png = _plot_curves(curves, out / f"{tag}__sensitivity.png", "balancing term", f"{bundle} ({backbone}): hyper-parameter sensitivity (test)", per_method=True)
                figures.append(png.name)
                _csv(out / "tables" / f"{tag}__sensitivity.csv", h, b)
                section("Hyper-parameter sensitivity (every grid point, test)", _md(h, b) + f"\n![sensitivity]({png.name})")
            else:
                section("Hyper-parameter sensitivity", "_Not available: needs a method with several values of its balancing term._")
            analyses = _analyses(root, tasks, bundle, backbone)
            order = _method_order(analyses, ref)
            analyses = {m: analyses[m] for m in order}
            if analyses:
                rel = _plot_reliability(analyses, out / f"{tag}__reliability.png", f"{bundle} ({backbone}): reliability (test, foreground voxels)")
                conf = _plot_confidence_maps(analyses, out / f"{tag}__confidence.png", f"{bundle} ({backbone}): first test case, middle slice")
                figures += [rel.name, conf.name]
                section("Reliability diagrams and confidence maps", f"![reliability]({rel.name})\n\n![confidence]({conf.name})")
            else:
                section("Reliability diagrams and confidence maps", "_Not available: no finished analysis task._")
            gap_methods = {m: a for m, a in analyses.items() if m == ref or m.startswith("mbls")}
            if ref in gap_methods and len(gap_methods) > 1:
                png = _plot_logit_gaps(gap_methods, out / f"{tag}__logit_gaps.png", f"{bundle} ({backbone}): logit distances per ground-truth class")
                figures.append(png.name)
                margins = sorted({float(v) for m, g in spec.methods.items() if m.startswith("mbls") for v in g.get("margin", [])} or {5.0, 8.0, 10.0})
                first = next(iter(gap_methods.values()))
                names = [str(c) for c in first["class_names"]]
                h = ["method", "margin"] + [f"> margin, GT {n}" for n in names]
                b = [[m, f"{mg:g}"] + [_num(v) for v in gap_fractions(a["gap_hist"], a["gap_edges"], mg)] for m, a in gap_methods.items() for mg in margins]
                _csv(out / "tables" / f"{tag}__logit_gaps.csv", h, b)
                section(f"Logit distances max_j z_j - z_k per ground-truth class, {ref} against MbLS", f"Fraction of the distances above each margin:\n\n{_md(h, b)}\n![logit distances]({png.name})")
            else:
                section("Logit distances, CE against MbLS", f"_Not available: needs finished analyses of {ref} and an MbLS method._")
        md.append(f"\n## {bundle}, every backbone\n")
        table(f"{bundle}__backbones", f"Backbones: {ref} against MbLS", *backbone_table(rows, bundle, ref), f"needs {ref} or mbls runs")
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path
