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
from calibmonai.handlers.curves import CURVE_COLUMNS, ValidationCurveLogger, plot_curves, read_curves
from calibmonai.handlers.progress import DisabledHandler, EpochLossLogger, tensorboard_stats_handler
from calibmonai.handlers.trainer_output import UndecollatedOutput

__all__ = [
    "BrierScore",
    "CalibrationReport",
    "ClasswiseCalibrationError",
    "ExpectedCalibrationError",
    "NegativeLogLikelihood",
    "StratifiedBrierScore",
    "write_calibration_report",
    "ValidationCurveLogger",
    "CURVE_COLUMNS",
    "read_curves",
    "plot_curves",
    "DisabledHandler",
    "EpochLossLogger",
    "tensorboard_stats_handler",
    "UndecollatedOutput",
]
