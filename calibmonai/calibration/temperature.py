"""Temperature scaling (TS)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from calibmonai.calibration.base import Calibrator, _weighted_nll, fit_lbfgs
from calibmonai.calibration.sampling import VoxelSample
from calibmonai.losses.utils import finite_float

__all__ = ["TemperatureScaling"]


class TemperatureScaling(Calibrator):
    """One temperature ``T > 0`` for every voxel: ``p = softmax(z / T)``, fitted by minimising the NLL on
    validation voxels (LBFGS on ``log T``, with a grid search as fallback). Dividing every logit by the same
    positive number keeps the argmax, so segmentation metrics are unchanged.

    Guo, C., Pleiss, G., Sun, Y., Weinberger, K. Q. "On Calibration of Modern Neural Networks." ICML 2017.
    https://arxiv.org/abs/1706.04599

    Args:
        num_classes: number of classes, an integer >= 2.
        bounds: search interval ``(low, high)`` of ``T``: exactly two finite numbers with ``0 < low < high``; a fit
            that ends on a bound is reported with a warning.

    Raises:
        ValueError: naming the value, for a ``num_classes`` that is not an integer >= 2 or ``bounds`` that are not
            two finite numbers ``0 < low < high``.
    """

    name = "ts"

    def __init__(self, num_classes: int, bounds: tuple[float, float] = (0.05, 20.0)) -> None:
        super().__init__(num_classes)
        if isinstance(bounds, (str, bytes)) or not hasattr(bounds, "__len__") or len(bounds) != 2:
            raise ValueError(f"TemperatureScaling: bounds must be two numbers (low, high) with 0 < low < high, got {bounds!r}.")
        low, high = (finite_float(b, f"bounds[{k}]", "TemperatureScaling") for k, b in enumerate(bounds))
        if not 0 < low < high:
            raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds}.")
        self.bounds = (low, high)
        self.log_t = torch.nn.Parameter(torch.zeros(()))

    def config(self) -> dict[str, Any]:
        return {"bounds": self.bounds}

    @property
    def temperature(self) -> float:
        return float(self.log_t.detach().exp())

    def calibrate_flat(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits / self.log_t.exp().to(logits.dtype), dim=-1)

    def fit(self, sample: VoxelSample) -> dict[str, Any]:
        sample = self._check_sample(sample)
        z, y, w = sample.logits.double(), sample.labels, sample.weights.double()
        self._check_logits(z)
        lo, hi = math.log(self.bounds[0]), math.log(self.bounds[1])
        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)

        def loss() -> torch.Tensor:
            return _weighted_nll(z / log_t.clamp(lo, hi).exp(), y, w)

        method = "lbfgs"
        try:
            value = fit_lbfgs([log_t], loss)
            ok = math.isfinite(value) and math.isfinite(float(log_t.detach()))
        except (RuntimeError, ValueError):  # a failed step: grid search (a diverged one, NaN, is caught by `ok`)
            ok = False
        best = float(log_t.detach().clamp(lo, hi)) if ok else 0.0
        if not ok:
            method = "grid"
            grid = torch.linspace(lo, hi, 400, dtype=torch.float64)
            with torch.no_grad():
                values = torch.stack([_weighted_nll(z / g.exp(), y, w) for g in grid])
            best = float(grid[int(torch.nan_to_num(values, nan=float("inf")).argmin())])
        with torch.no_grad():
            self.log_t.fill_(best)
        self.fitted = True
        t = math.exp(best)
        if best <= lo + 1e-6 or best >= hi - 1e-6:
            warnings.warn(f"temperature scaling: the fitted temperature {t:.4g} lies on the search bound {self.bounds}.")
        with torch.no_grad():
            nll_before = float(_weighted_nll(z, y, w))
            nll_after = float(_weighted_nll(z / t, y, w))
        return {"temperature": t, "method": method, "nll_before": nll_before, "nll_after": nll_after}

    def parameters_summary(self) -> dict[str, Any]:
        return {"temperature": self.temperature}
