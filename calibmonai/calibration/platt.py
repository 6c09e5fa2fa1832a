"""Platt scaling (per-class affine logits)."""

from __future__ import annotations

import math
from typing import Any

import torch

from calibmonai.calibration.base import Calibrator, _weighted_nll, fit_lbfgs
from calibmonai.calibration.sampling import VoxelSample

__all__ = ["PlattScaling"]


class PlattScaling(Calibrator):
    """Per class an affine map of that class's logit, ``a_c z_c + b_c``, then a softmax; fitted by NLL.

    For two classes this is the classic sigmoid form ``sigmoid((a_1 z_1 + b_1) - (a_0 z_0 + b_0))``.
    (Called vector scaling with a diagonal matrix by Guo et al. 2017.)

    Platt, J. "Probabilistic Outputs for Support Vector Machines and Comparisons to Regularized Likelihood
    Methods." Advances in Large Margin Classifiers, 1999; Guo et al., ICML 2017.

    Args:
        num_classes: number of classes ``C`` (one ``a_c, b_c`` pair each), an integer >= 2.

    Raises:
        ValueError: naming the value, for a ``num_classes`` that is not an integer >= 2.
    """

    name = "platt"

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.a = torch.nn.Parameter(torch.ones(self.num_classes))
        self.b = torch.nn.Parameter(torch.zeros(self.num_classes))

    def calibrate_flat(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits * self.a.to(logits.dtype) + self.b.to(logits.dtype), dim=-1)

    def fit(self, sample: VoxelSample) -> dict[str, Any]:
        sample = self._check_sample(sample)
        z, y, w = sample.logits.double(), sample.labels, sample.weights.double()
        self._check_logits(z)
        self._warn_absent_classes(sample.labels)
        a = torch.ones(self.num_classes, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(self.num_classes, dtype=torch.float64, requires_grad=True)
        value = fit_lbfgs([a, b], lambda: _weighted_nll(z * a + b, y, w))
        if not (math.isfinite(value) and bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
            raise ValueError(f"Platt scaling diverged (NLL {value}, a {a.detach().tolist()}, b {b.detach().tolist()}): no parameters were set.")
        with torch.no_grad():
            self.a.copy_(a.float())
            self.b.copy_(b.float())
            before = float(_weighted_nll(z, y, w))
        self.fitted = True
        return {"a": a.detach().tolist(), "b": b.detach().tolist(), "nll_before": before, "nll_after": value}

    def parameters_summary(self) -> dict[str, Any]:
        return {"a": self.a.detach().tolist(), "b": self.b.detach().tolist()}
