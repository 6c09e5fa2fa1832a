"""Post-hoc calibration: temperature scaling, local temperature scaling, Platt scaling, isotonic regression."""

from calibmonai.calibration.base import CALIBRATORS, Calibrator, load_calibrator, weighted_nll
from calibmonai.calibration.isotonic import IsotonicCalibration
from calibmonai.calibration.lts import LocalTemperatureScaling
from calibmonai.calibration.platt import PlattScaling
from calibmonai.calibration.sampling import StratifiedVoxelSampler, VoxelSample
from calibmonai.calibration.temperature import TemperatureScaling
from calibmonai.calibration.workflow import calibrate_run, calibrator_path, run_calibrator

__all__ = [
    "CALIBRATORS",
    "Calibrator",
    "load_calibrator",
    "weighted_nll",
    "IsotonicCalibration",
    "LocalTemperatureScaling",
    "PlattScaling",
    "StratifiedVoxelSampler",
    "VoxelSample",
    "TemperatureScaling",
    "calibrate_run",
    "calibrator_path",
    "run_calibrator",
]
