"""Ignite handlers reporting calibration metrics in MONAI evaluators."""

from calibmonai.handlers.calibration import (
    BrierScore,
    CalibrationReport,
    ClasswiseCalibrationError,
    ExpectedCalibrationError,
    NegativeLogLikelihood,
    StratifiedBrierScore,
    write_calibration_report,
)

__all__ = [
    "BrierScore",
    "CalibrationReport",
    "ClasswiseCalibrationError",
    "ExpectedCalibrationError",
    "NegativeLogLikelihood",
    "StratifiedBrierScore",
    "write_calibration_report",
]
