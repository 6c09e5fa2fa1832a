"""Isotonic regression, one-vs-rest per class."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from calibmonai.calibration.base import Calibrator
from calibmonai.calibration.sampling import VoxelSample

__all__ = ["IsotonicCalibration", "interp_monotone"]


def interp_monotone(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of ``(xp, fp)`` at ``x`` (``xp`` increasing), clipped at the ends
    (what scikit-learn's ``IsotonicRegression.predict`` does with ``out_of_bounds="clip"``)."""
    if xp.numel() == 1:
        return fp.expand_as(x).clone()
    x = x.clamp(float(xp[0]), float(xp[-1]))
    idx = torch.searchsorted(xp, x.contiguous()).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    gap = x1 - x0  # knots are increasing; a zero gap (equal knots) takes the left value
    t = torch.where(gap > 0, (x - x0) / torch.where(gap > 0, gap, torch.ones_like(gap)), torch.zeros_like(x))
    return f0 + t * (f1 - f0)


class IsotonicCalibration(Calibrator):
    """Per class, an isotonic (non-decreasing) map of ``p_c`` fitted on ``1[y == c]`` with scikit-learn's
    ``IsotonicRegression`` (on ``log p_c``, so that probabilities below 1e-15 keep their order) and interpolated
    linearly in ``p_c`` between its knots; the calibrated class probabilities are then renormalised to sum to 1.

    Zadrozny, B., Elkan, C. "Transforming Classifier Scores into Accurate Multiclass Probability Estimates."
    KDD 2002.

    Args:
        num_classes: number of classes ``C`` (one isotonic map each), an integer >= 2.

    Raises:
        ValueError: naming the value, for a ``num_classes`` that is not an integer >= 2.
    """

    name = "isotonic"

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.xp: list[torch.Tensor] = [torch.tensor([0.0, 1.0]) for _ in range(self.num_classes)]
        self.fp: list[torch.Tensor] = [torch.tensor([0.0, 1.0]) for _ in range(self.num_classes)]

    def extra_state(self) -> dict[str, Any]:
        return {"xp": [t.tolist() for t in self.xp], "fp": [t.tolist() for t in self.fp]}

    def set_extra(self, extra: dict[str, Any]) -> None:
        if extra:
            self.xp = [torch.tensor(v, dtype=torch.float64) for v in extra["xp"]]
            self.fp = [torch.tensor(v, dtype=torch.float64) for v in extra["fp"]]

    def calibrate_flat(self, logits: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(logits.double(), dim=-1)
        q = torch.stack([interp_monotone(p[:, c], self.xp[c], self.fp[c]) for c in range(self.num_classes)], dim=-1)
        total = q.sum(-1, keepdim=True)
        out = torch.where(total > 1e-12, q / total.clamp_min(1e-12), p)
        return out.to(logits.dtype)

    def fit(self, sample: VoxelSample) -> dict[str, Any]:
        from sklearn.isotonic import IsotonicRegression

        sample = self._check_sample(sample)
        self._check_logits(sample.logits)
        self._warn_absent_classes(sample.labels)
        p = torch.softmax(sample.logits.double(), dim=-1).numpy()
        y = sample.labels.numpy()
        w = sample.weights.numpy()
        self.xp, self.fp = [], []
        tiny = np.finfo(np.float64).tiny  # a probability that underflowed to 0 stays below every other one
        for c in range(self.num_classes):
            reg = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
            # fitted on log p: scikit-learn pools inputs closer than 1e-15 (absolute) before fitting, which in p would
            # give every p_c < 1e-15 of an over-confident network one pooled value; the fit at the samples is the same
            # for any increasing transform of the input, and the knots are stored back in p
            reg.fit(np.log(np.maximum(p[:, c], tiny)), (y == c).astype(float), sample_weight=w)
            self.xp.append(torch.as_tensor(np.exp(reg.X_thresholds_), dtype=torch.float64))
            self.fp.append(torch.as_tensor(reg.y_thresholds_, dtype=torch.float64))
        self.fitted = True
        return {"knots_per_class": [int(t.numel()) for t in self.xp]}

    def parameters_summary(self) -> dict[str, Any]:
        return {"knots_per_class": [int(t.numel()) for t in self.xp]}
