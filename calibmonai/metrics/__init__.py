"""Calibration metrics (streaming, MONAI-style) and segmentation-metric glue."""

from calibmonai.metrics.calibration import (
    CALIBRATION_METRICS,
    CECE_CLASS_SETS,
    FOREGROUND_MODES,
    BrierScoreMetric,
    CalibrationHistograms,
    CalibrationMetrics,
    ClasswiseCalibrationErrorMetric,
    ExpectedCalibrationErrorMetric,
    NegativeLogLikelihoodMetric,
    StratifiedBrierScoreMetric,
    calibration_errors,
    compute_calibration_histograms,
    reliability_statistics,
)
from calibmonai.metrics.segmentation import BRATS_REGIONS, SegmentationMetrics, image_diagonal, labels_to_regions
from calibmonai.metrics.plots import plot_reliability_diagram

__all__ = [
    "BRATS_REGIONS",
    "CALIBRATION_METRICS",
    "CECE_CLASS_SETS",
    "FOREGROUND_MODES",
    "BrierScoreMetric",
    "CalibrationHistograms",
    "CalibrationMetrics",
    "ClasswiseCalibrationErrorMetric",
    "ExpectedCalibrationErrorMetric",
    "NegativeLogLikelihoodMetric",
    "StratifiedBrierScoreMetric",
    "calibration_errors",
    "compute_calibration_histograms",
    "reliability_statistics",
    "SegmentationMetrics",
    "labels_to_regions",
    "image_diagonal",
    "plot_reliability_diagram",
]
