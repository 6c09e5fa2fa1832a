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
    "DisabledHandler",
    "EpochLossLogger",
    "tensorboard_stats_handler",
    "UndecollatedOutput",
]
