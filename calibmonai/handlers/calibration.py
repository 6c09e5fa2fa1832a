"""Ignite handlers for the calibration metrics: scalar metrics for evaluators and an end-of-evaluation report."""

from __future__ import annotations

import csv
import logging
import os
from typing import Any, Callable

import torch
from monai.handlers import IgniteMetricHandler, from_engine
from monai.utils import min_version, optional_import

from calibmonai.metrics.calibration import (
    CALIBRATION_METRICS,
    BrierScoreMetric,
    CalibrationMetrics,
    ClasswiseCalibrationErrorMetric,
    ExpectedCalibrationErrorMetric,
    NegativeLogLikelihoodMetric,
    StratifiedBrierScoreMetric,
)
from calibmonai.metrics.plots import plot_reliability_diagram

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = [
    "ExpectedCalibrationError",
    "ClasswiseCalibrationError",
    "BrierScore",
    "StratifiedBrierScore",
    "NegativeLogLikelihood",
    "CalibrationReport",
    "write_calibration_report",
]


def _default_transform() -> Callable:
    return from_engine(["pred", "label"])


class _CalibrationHandler(IgniteMetricHandler):
    metric_cls: type = ExpectedCalibrationErrorMetric

    def __init__(
        self,
        num_bins: int = 15,
        foreground: str = "label",
        include_background: bool = True,
        softmax: bool = False,
        level: str = "case",
        output_transform: Callable | None = None,
        save_details: bool = True,
        cece_classes: str = "all",
    ) -> None:
        """
        Args:
            num_bins: equal-width confidence bins.
            foreground: ``"label"``, ``"none"`` or ``"label_or_pred"`` (see :class:`CalibrationMetrics`).
            include_background: whether class 0 enters the class-wise mean (CECE).
            softmax: whether the engine's ``pred`` are logits.
            level: ``"case"`` (mean over cases) or ``"pooled"`` (dataset histograms).
            output_transform: maps ``engine.state.output`` to ``(y_pred, y)``; defaults to
                ``from_engine(["pred", "label"])``.
            save_details: keep per-case values in ``engine.state.metric_details`` (for MONAI's ``MetricsSaver``).
            cece_classes: the classes of the CECE mean, ``"all"`` or ``"up_to_max_label"`` (the MbLS/NACL
                reference code's class set; see :class:`CalibrationMetrics`).
        """
        metric_fn = self.metric_cls(
            level=level, num_bins=num_bins, foreground=foreground, include_background=include_background, softmax=softmax,
            cece_classes=cece_classes,
        )  # fmt: skip
        super().__init__(metric_fn=metric_fn, output_transform=output_transform or _default_transform(), save_details=save_details)


class ExpectedCalibrationError(_CalibrationHandler):
    """Top-label ECE of an evaluator's ``pred``/``label`` (see :class:`ExpectedCalibrationErrorMetric`)."""

    metric_cls = ExpectedCalibrationErrorMetric


class ClasswiseCalibrationError(_CalibrationHandler):
    """Class-wise ECE (CECE) of an evaluator (see :class:`ClasswiseCalibrationErrorMetric`)."""

    metric_cls = ClasswiseCalibrationErrorMetric


class BrierScore(_CalibrationHandler):
    """Brier score of an evaluator (see :class:`BrierScoreMetric`)."""

    metric_cls = BrierScoreMetric


class StratifiedBrierScore(_CalibrationHandler):
    """Stratified Brier score (Brier+) of an evaluator (see :class:`StratifiedBrierScoreMetric`)."""

    metric_cls = StratifiedBrierScoreMetric


class NegativeLogLikelihood(_CalibrationHandler):
    """Voxel NLL of an evaluator (see :class:`NegativeLogLikelihoodMetric`)."""

    metric_cls = NegativeLogLikelihoodMetric


class CalibrationReport:
    """At the end of each evaluation, write a per-case CSV, a summary CSV (per-case mean/std and pooled values)
    and a reliability-diagram PNG of all calibration metrics, and log the summary.

    Args:
        output_dir: folder for ``calibration_per_case.csv``, ``calibration_summary.csv`` and ``reliability.png``.
        num_bins, foreground, include_background, softmax, cece_classes: see :class:`CalibrationMetrics`.
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)``.
        name_transform: maps ``engine.state.batch`` to case names (defaults to the image file names in the
            MONAI meta data, or ``case N``).
        prefix: prefix of the output file names.
    """

    def __init__(
        self,
        output_dir: str,
        num_bins: int = 15,
        foreground: str = "label",
        include_background: bool = True,
        softmax: bool = False,
        output_transform: Callable | None = None,
        name_transform: Callable | None = None,
        prefix: str = "",
        cece_classes: str = "all",
    ) -> None:
        self.output_dir = output_dir
        self.metric = CalibrationMetrics(
            CALIBRATION_METRICS, num_bins=num_bins, foreground=foreground, include_background=include_background, softmax=softmax,
            cece_classes=cece_classes,
        )  # fmt: skip
        self.output_transform = output_transform or _default_transform()
        self.name_transform = name_transform
        self.prefix = prefix
        self.logger = logging.getLogger("calibmonai.CalibrationReport")
        self.summary: dict[str, Any] = {}

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.metric.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _names(self, engine: Any) -> list[str] | None:
        if self.name_transform is not None:
            return list(self.name_transform(engine.state.batch))
        try:
            return [os.path.basename(str(d["image"].meta["filename_or_obj"])) for d in engine.state.batch]
        except Exception:  # noqa: BLE001 - names are cosmetic
            return None

    def _update(self, engine: Any) -> None:
        y_pred, y = self.output_transform(engine.state.output)
        if isinstance(y_pred, (list, tuple)):
            y_pred, y = torch.stack(list(y_pred)), torch.stack(list(y))
        names = self._names(engine)
        self.metric(y_pred, y, case_names=names)

    def _write(self, engine: Any) -> None:
        self.summary = self.write(self.output_dir, self.prefix)
        if hasattr(engine.state, "metrics"):
            engine.state.metrics.update({f"pooled_{k}": v for k, v in self.summary["pooled"].items()})
        self.logger.info("calibration (mean over cases): %s", ", ".join(f"{k}={self.summary['case'][k]:.4f}" for k in CALIBRATION_METRICS))

    def write(self, output_dir: str, prefix: str = "") -> dict[str, Any]:
        """Write the CSVs and the PNG of everything seen so far; returns ``{"case": ..., "pooled": ...}``."""
        return write_calibration_report(self.metric, output_dir, prefix)


def write_calibration_report(metric: CalibrationMetrics, output_dir: str, prefix: str = "", title: str = "") -> dict[str, Any]:
    """Write ``{prefix}calibration_per_case.csv``, ``{prefix}calibration_summary.csv`` and ``{prefix}reliability.png``.

    Args:
        metric: a :class:`~calibmonai.metrics.CalibrationMetrics` that has seen at least one case.
        output_dir: the folder of the three files (created when missing).
        prefix: prefix of the file names (e.g. ``"ts_"`` for a calibrated evaluation).
        title: title of the reliability diagram (default: "Reliability diagram (pooled)").

    Returns:
        ``{"case": ..., "pooled": ...}``, the metric's two aggregations.

    Raises:
        ValueError: when the metric holds no case (nothing is written).
    """
    values = metric.get_buffer()
    if values is None or len(metric.case_names) == 0:
        raise ValueError(f"write_calibration_report: the metric holds no case (call it on (y_pred, y) batches first); nothing was written to {output_dir}.")
    os.makedirs(output_dir, exist_ok=True)
    names = metric.case_names
    with open(os.path.join(output_dir, f"{prefix}calibration_per_case.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", *metric.metric_names])
        for name, row in zip(names, values.tolist()):
            w.writerow([name, *[f"{v:.6f}" for v in row]])
    case, pooled = metric.aggregate("case"), metric.aggregate("pooled")
    with open(os.path.join(output_dir, f"{prefix}calibration_summary.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "mean_over_cases", "std_over_cases", "cases_skipped", "pooled"])
        for m in metric.metric_names:
            w.writerow([m, f"{case[m]:.6f}", f"{case[m + '_std']:.6f}", case[m + "_skipped"], f"{pooled[m]:.6f}"])
    plot_reliability_diagram(metric.reliability(), os.path.join(output_dir, f"{prefix}reliability.png"), title=title or "Reliability diagram (pooled)")
    return {"case": case, "pooled": pooled}
