"""Whole-volume evaluation of a trained run: segmentation and calibration metrics, tables and PNGs."""

from __future__ import annotations

import csv
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from calibmonai.progress import progress

from calibmonai.handlers.calibration import write_calibration_report
from calibmonai.metrics import CalibrationMetrics, SegmentationMetrics
from calibmonai.prediction import load_checkpoint, predict_logits, to_probabilities

__all__ = ["evaluate_run", "evaluate_posthoc", "load_checkpoint", "SUMMARY_COLUMNS"]

#: columns of the method-comparison table: (key in the summary, printed name)
SUMMARY_COLUMNS = [
    ("dsc_mean", "DSC"), ("asd_mean", "ASD"), ("hd95_mean", "HD95"), ("ece", "ECE"), ("cece", "CECE"),
    ("brier", "Brier"), ("brier_plus", "Brier+"), ("nll", "NLL"), ("ref_mad", "ref MAD"),
]  # fmt: skip


def _spacing(meta_img: Any) -> list[float] | None:
    pixdim = getattr(meta_img, "pixdim", None)
    return None if pixdim is None else [float(v) for v in torch.as_tensor(pixdim).flatten().tolist()]


def _load_reference(path: str, like: Any) -> torch.Tensor:
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation

    ref = Compose([LoadImage(image_only=True), EnsureChannelFirst(), Orientation(axcodes="RAS")])(path)
    if tuple(ref.shape[1:]) != tuple(like.shape[1:]):
        raise ValueError(f"reference probabilities {path} have shape {tuple(ref.shape)}, the image {tuple(like.shape)}.")
    return torch.as_tensor(ref).float()


def save_slice_png(image: torch.Tensor, label: torch.Tensor, pred: torch.Tensor, conf: torch.Tensor, path: str, title: str = "", num_classes: int = 4) -> str:
    """Image / ground truth / prediction / confidence of the middle axial slice, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = image.shape[-1] // 2  # the middle axial slice of a volume; a 2D image is shown whole
    panels = [(image, "image", "gray", None), (label, "ground truth", "viridis", (0, num_classes - 1)), (pred, "prediction", "viridis", (0, num_classes - 1)), (conf, "confidence (max p)", "magma", (0, 1))]
    fig, axes = plt.subplots(1, 4, figsize=(13, 4))
    for ax, (vol, name, cmap, lim) in zip(axes, panels):
        sl = np.asarray(vol if np.ndim(vol) == 2 else vol[..., z], dtype=float).T[::-1]
        im = ax.imshow(sl, cmap=cmap, vmin=None if lim is None else lim[0], vmax=None if lim is None else lim[1])
        ax.set_title(name)
        ax.axis("off")
        if name.startswith("confidence"):
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _write_rows(path: str, rows: Sequence[dict[str, Any]]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})


def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


# ---- torch.distributed (multi_gpu_evaluate.yaml): each process evaluates a contiguous share of the cases ----


def _rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of an initialised ``torch.distributed`` group, ``(0, 1)`` otherwise."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _case_share(datalist: Sequence[Any]) -> list[tuple[int, Any]]:
    """``(index, item)`` of the cases this process evaluates: all of them, or under ``torch.distributed`` a
    contiguous share (rank order is datalist order, so gathered results keep the single-process order)."""
    rank, world = _rank_world()
    if world > 1 and len(datalist) < world:
        raise ValueError(f"{len(datalist)} case(s) for {world} processes: every process needs at least one case.")
    return [(int(i), datalist[int(i)]) for i in np.array_split(np.arange(len(datalist)), world)[rank]]


class _WithCaseNames:
    """``metric`` seen with ``case_names`` of every process (its values and histograms it gathers itself)."""

    def __init__(self, metric: CalibrationMetrics, case_names: list[str]) -> None:
        self._metric, self.case_names = metric, case_names

    def __getattr__(self, name: str) -> Any:
        return getattr(self._metric, name)


def _gather_cases(rows: list[dict[str, Any]], cal: CalibrationMetrics, sums: Sequence[torch.Tensor], output_dir: str) -> tuple[list[dict[str, Any]], Any, str, Any]:
    """Under ``torch.distributed``: every process's rows (in datalist order), ``sums`` all-reduced in place, ``cal``
    with every case name, and the folder to write (``output_dir`` on rank 0, a scratch folder elsewhere: every
    process makes the same collective calls of the report, only rank 0's files are kept)."""
    import tempfile

    dist = torch.distributed
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, rows)
    rows = [r for part in parts for r in part]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    for t in sums:
        buf = t.to(device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        t.copy_(buf.cpu())
    scratch = None if dist.get_rank() == 0 else tempfile.TemporaryDirectory(prefix="calibmonai_eval_")
    return rows, _WithCaseNames(cal, [r["case"] for r in rows]), output_dir if scratch is None else scratch.name, scratch


def evaluate_run(
    network: torch.nn.Module,
    checkpoint: str,
    datalist: Sequence[dict[str, str]],
    preprocessing: Callable,
    inferer: Callable,
    num_classes: int,
    class_names: Sequence[str],
    output_dir: str,
    device: Any = "cpu",
    title: str = "",
    calibrator: Any = None,
    num_bins: int = 15,
    regions: Mapping[str, Sequence[int]] | None = None,
    mask_key: str | None = None,
    cece_classes: str = "all",
    missed_distance: str | float = "diagonal",
    empty_reference: str = "nan",
) -> dict[str, Any]:
    """Evaluate a trained network on whole volumes and write ``output_dir``:
    ``per_case.csv``, ``summary.csv``, ``summary.md``, ``reliability.png``, ``reference_reliability.png``,
    ``slice.png``, and the calibration CSVs.

    ``regions`` (e.g. BraTS ``{"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3)}``) scores DSC/ASD/HD95 on those unions of
    labels instead of on each class (:class:`calibmonai.metrics.SegmentationMetrics`); calibration is per class.

    ``mask_key`` names a boolean voxel mask in the preprocessed item (WMH's "other pathology",
    :class:`calibmonai.datasets.wmh.IgnoreMaskd`): voxels where it is false count in no metric (left out of ECE, CECE,
    Brier, Brier+ and NLL; background in both prediction and reference for DSC, ASD and HD95).

    ``cece_classes``: ``"all"`` (default) averages the class-wise ECE over every class; ``"up_to_max_label"``
    over classes 0 .. the highest label of the case, as the MbLS reference code does (to compare with its tables).

    ``missed_distance`` and ``empty_reference``: the scores of a class that the prediction or the reference lacks
    (:class:`calibmonai.metrics.SegmentationMetrics`; by default a missed structure's ASD and HD95 are the image's
    diagonal and a class absent from the reference is left out).

    Under an initialised ``torch.distributed`` group (``multi_gpu_evaluate.yaml``, one process per GPU) each
    process evaluates a contiguous share of the cases; the per-case rows are gathered and the calibration
    histograms all-reduced, so rank 0 writes the same files as one process would, and every process returns the
    same summary.

    Returns the summary: mean over cases of every column (``dsc_mean``, ``ece``, ...), with ``*_std``.
    """
    from calibmonai.metrics.plots import plot_reliability_diagram

    load_checkpoint(network, checkpoint, device)
    cal = CalibrationMetrics(num_bins=num_bins, foreground="label", cece_classes=cece_classes)
    seg = SegmentationMetrics(num_classes, class_names, regions=regions, missed_distance=missed_distance, empty_reference=empty_reference)
    ref_count = torch.zeros(num_bins, dtype=torch.float64)
    ref_p = torch.zeros(num_bins, dtype=torch.float64)
    ref_q = torch.zeros(num_bins, dtype=torch.float64)
    rows: list[dict[str, Any]] = []
    first_slice: tuple | None = None
    t0 = time.time()
    for i, item in _case_share(datalist):
        name = item.get("case") or item.get("subject") or os.path.basename(str(item["image"]))
        d = preprocessing(item)
        image = d["image"]
        label = torch.as_tensor(d["label"]).long().unsqueeze(0).cpu()
        prob = to_probabilities(predict_logits(image, network, inferer, device), image, calibrator)
        conf, _ = prob.max(1)
        pred = prob.argmax(1, keepdim=True)
        mask = None if mask_key is None else torch.as_tensor(d[mask_key]).bool().reshape(label.shape).cpu()
        values = cal(prob, label, mask=mask, case_names=[name])[0]
        if mask is not None:
            pred, label = pred.masked_fill(~mask, 0), label.masked_fill(~mask, 0)
        row: dict[str, Any] = {"case": name}
        row.update(seg(pred, label, spacing=_spacing(image))[0])
        row.update({m: float(v) for m, v in zip(cal.metric_names, values)})
        if item.get("probs"):
            ref = _load_reference(item["probs"], prob[0])
            brain = ref[0] < 0.5
            diff = (prob[0] - ref).abs().mean(0)
            row["ref_mad"] = float(diff[brain].mean()) if bool(brain.any()) else float("nan")
            p_b, q_b = prob[0][:, brain].flatten().double(), ref[:, brain].flatten().double()
            bins = (p_b * num_bins).long().clamp_(0, num_bins - 1)
            ref_count += torch.bincount(bins, minlength=num_bins)
            ref_p += torch.bincount(bins, weights=p_b, minlength=num_bins)
            ref_q += torch.bincount(bins, weights=q_b, minlength=num_bins)
        rows.append(row)
        if i == 0:  # written with the other outputs once every case is scored: a failing case leaves output_dir as it was
            first_slice = (np.asarray(image[0]), np.asarray(label[0, 0]), np.asarray(pred[0, 0]), np.asarray(conf[0]), f"{title} {name}")
        progress(f"[evaluate] {title} case {i + 1}/{len(datalist)} {name}: DSC {_fmt(row['dsc_mean'])}, ECE {_fmt(row['ece'])} ({time.time() - t0:.0f} s)", "calibmonai.evaluation")
    if _rank_world()[1] > 1:  # every process's cases to every process; rank 0 writes output_dir
        rows, cal, output_dir, _scratch = _gather_cases(rows, cal, (ref_count, ref_p, ref_q), output_dir)
    os.makedirs(output_dir, exist_ok=True)
    if first_slice is not None:
        save_slice_png(*first_slice[:4], os.path.join(output_dir, "slice.png"), first_slice[4], num_classes=num_classes)
    _write_rows(os.path.join(output_dir, "per_case.csv"), rows)
    summary: dict[str, Any] = {}
    for key in rows[0]:
        if key == "case":
            continue
        col = np.array([r.get(key, float("nan")) for r in rows], dtype=float)
        ok = col[~np.isnan(col)]
        summary[key] = float(ok.mean()) if ok.size else float("nan")
        summary[f"{key}_std"] = float(ok.std()) if ok.size else float("nan")
    report = write_calibration_report(cal, output_dir, title=f"{title} (test, foreground voxels)")
    summary.update({f"pooled_{k}": v for k, v in report["pooled"].items()})
    if ref_count.sum() > 0:
        safe = ref_count.clamp_min(1)
        nan = torch.full_like(ref_count, float("nan"))
        stats = {
            "edges": torch.linspace(0, 1, num_bins + 1, dtype=torch.float64), "count": ref_count,
            "confidence": torch.where(ref_count > 0, ref_p / safe, nan), "accuracy": torch.where(ref_count > 0, ref_q / safe, nan),
            "ece": (ref_q - ref_p).abs().sum() / ref_count.sum(),
        }  # fmt: skip
        summary["ref_ece"] = float(stats["ece"])
        plot_reliability_diagram(stats, os.path.join(output_dir, "reference_reliability.png"), title=f"{title}: predicted vs reference tissue probability")
    _write_rows(os.path.join(output_dir, "summary.csv"), [{"metric": k, "value": v} for k, v in summary.items()])
    with open(os.path.join(output_dir, "summary.md"), "w") as f:
        f.write(f"# {title} on {len(rows)} test case(s)\n\n| metric | mean | std |\n|---|---|---|\n")
        for k, v in summary.items():
            if not k.endswith("_std") and not k.startswith("pooled_"):
                f.write(f"| {k} | {_fmt(v)} | {_fmt(summary.get(k + '_std', float('nan')))} |\n")
    if _rank_world()[0] == 0:
        progress(f"[evaluate] {title}: " + ", ".join(f"{n} {_fmt(summary.get(k, float('nan')))}" for k, n in SUMMARY_COLUMNS) + f"; written to {output_dir}", "calibmonai.evaluation")
    return summary


POSTHOC_ROWS = {"ts": "TS", "lts": "LTS", "platt": "Platt", "isotonic": "Isotonic"}


def evaluate_posthoc(
    calibrators: Sequence[str],
    output_dir: str,
    num_classes: int,
    title: str = "",
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Evaluate a run before calibration and with each fitted calibrator, and write the MbLS paper's Table 3
    layout to ``<output_dir>/posthoc/table3.{md,csv}``: rows Pre / TS / LTS / Platt / Isotonic, columns ECE, CECE,
    DSC. Calibrators without a fitted file are skipped with a message.

    ``kwargs`` are passed to :func:`evaluate_run` (network, checkpoint, datalist, preprocessing, inferer, ...).
    """
    from calibmonai.calibration import calibrator_path, run_calibrator

    results: dict[str, dict[str, Any]] = {"Pre": evaluate_run(num_classes=num_classes, output_dir=os.path.join(output_dir, "eval"), title=title, **kwargs)}
    for name in calibrators:
        if not os.path.isfile(calibrator_path(output_dir, name)):
            progress(f"[evaluate_posthoc] no fitted {name} calibrator at {calibrator_path(output_dir, name)}: skipped (run 'calibrate' with bundles/calibrate/{name}.yaml)", "calibmonai.evaluation")
            continue
        cal = run_calibrator(name, output_dir, num_classes, checkpoint=kwargs.get("checkpoint"))
        results[POSTHOC_ROWS.get(name, name)] = evaluate_run(
            num_classes=num_classes, output_dir=os.path.join(output_dir, f"eval_{name}"), title=f"{title} + {name}", calibrator=cal, **kwargs
        )
    out = os.path.join(output_dir, "posthoc")
    os.makedirs(out, exist_ok=True)
    cols = [("ece", "ECE"), ("cece", "CECE"), ("dsc_mean", "DSC")]
    with open(os.path.join(out, "table3.md"), "w") as f:
        f.write(f"# Post-hoc calibration of {title}\n\n| | " + " | ".join(n for _, n in cols) + " |\n|---|---|---|---|\n")
        for row, s in results.items():
            f.write(f"| {row} | " + " | ".join(f"{s[k]:.4f} ± {s[k + '_std']:.4f}" for k, _ in cols) + " |\n")
    _write_rows(os.path.join(out, "table3.csv"), [{"row": r, **{k: s[k] for k, _ in cols}} for r, s in results.items()])
    progress(open(os.path.join(out, "table3.md")).read(), "calibmonai.evaluation")
    return results
