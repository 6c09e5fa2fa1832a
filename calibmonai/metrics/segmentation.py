"""Glue around MONAI's DSC, ASD and HD95 that reports them per class and as a mean, as in the papers' tables."""

from __future__ import annotations

import math
import warnings
from typing import Mapping, Sequence

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDistanceMetric
from monai.networks.utils import one_hot

__all__ = ["SegmentationMetrics", "labels_to_regions", "BRATS_REGIONS"]

#: BraTS evaluation regions (labels 1 NCR/NET, 2 ED, 4 ET as in BraTS 2019; remapped to 3 when 4 is not used)
BRATS_REGIONS: dict[str, tuple[int, ...]] = {"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3)}


def labels_to_regions(labels: torch.Tensor, regions: Mapping[str, Sequence[int]]) -> torch.Tensor:
    """``(B, 1, *spatial)`` labels -> ``(B, R, *spatial)`` binary maps, one channel per region (union of labels)."""
    return torch.cat([torch.isin(labels, torch.as_tensor(list(v), device=labels.device)) for v in regions.values()], dim=1).float()


class SegmentationMetrics:
    """Per-case, per-class Dice (DSC), average symmetric surface distance (ASD) and 95th-percentile Hausdorff
    distance (HD95) with MONAI's ``DiceMetric``, ``SurfaceDistanceMetric`` and ``HausdorffDistanceMetric``,
    in physical units when ``spacing`` is given.

    Args:
        num_classes: number of label classes (background included).
        class_names: names of the classes (defaults to ``class1``...); background is never reported.
        regions: optional ``{name: labels}`` evaluation regions (e.g. :data:`BRATS_REGIONS`) replacing classes.
        distances: whether to compute ASD and HD95 (slow on large volumes).
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        regions: Mapping[str, Sequence[int]] | None = None,
        distances: bool = True,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        self.num_classes = num_classes
        self.regions = dict(regions) if regions else None
        if self.regions:
            self.names = list(self.regions)
        else:
            names = list(class_names) if class_names is not None else [f"class{i}" for i in range(num_classes)]
            if len(names) == num_classes:
                names = names[1:]
            if len(names) != num_classes - 1:
                raise ValueError(f"class_names must name {num_classes} classes (or the {num_classes - 1} foreground ones), got {len(names)}.")
            self.names = names
        self.distances = distances
        self.dice = DiceMetric(include_background=bool(self.regions), reduction="none", ignore_empty=True)
        self.asd = SurfaceDistanceMetric(include_background=bool(self.regions), symmetric=True, reduction="none")
        self.hd95 = HausdorffDistanceMetric(include_background=bool(self.regions), percentile=95, reduction="none")
        self.rows: list[dict[str, float]] = []

    def _channels(self, labels: torch.Tensor) -> torch.Tensor:
        if self.regions:
            return labels_to_regions(labels, self.regions)
        return one_hot(labels.long(), self.num_classes, dim=1)

    def __call__(self, pred: torch.Tensor, label: torch.Tensor, spacing: Sequence[float] | None = None) -> list[dict[str, float]]:
        """Score a batch of cases.

        Args:
            pred, label: ``(B, 1, *spatial)`` label maps.
            spacing: voxel spacing (one per spatial dim) for the distances; voxels when ``None``.

        Returns:
            one dict per case: ``dsc_<name>``, ``asd_<name>``, ``hd95_<name>`` and their ``*_mean``.
        """
        if pred.shape != label.shape or pred.ndim < 3 or pred.shape[1] != 1:
            raise ValueError(f"pred and label must both be (B, 1, *spatial) label maps, got {tuple(pred.shape)} and {tuple(label.shape)}.")
        hi = int(max(pred.max(), label.max()))
        if hi >= self.num_classes or int(min(pred.min(), label.min())) < 0:
            raise ValueError(f"labels must lie in [0, {self.num_classes - 1}], got a maximum of {hi}.")
        p, g = self._channels(pred), self._channels(label)
        values = {"dsc": self.dice(p, g)}
        if self.distances:
            kw = {"spacing": list(spacing)} if spacing is not None else {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # MONAI warns for empty classes; those are NaN below
                values["asd"] = self.asd(p, g, **kw)
                values["hd95"] = self.hd95(p, g, **kw)
        rows = []
        for b in range(pred.shape[0]):
            row: dict[str, float] = {}
            for key, v in values.items():
                vals = [float(x) for x in v[b].tolist()]
                vals = [x if math.isfinite(x) else float("nan") for x in vals]
                for name, x in zip(self.names, vals):
                    row[f"{key}_{name}"] = x
                finite = [x for x in vals if not math.isnan(x)]
                row[f"{key}_mean"] = float(np.mean(finite)) if finite else float("nan")
            rows.append(row)
        self.rows.extend(rows)
        return rows

    def aggregate(self) -> dict[str, float]:
        """Mean and std over cases of every column (NaN cases skipped)."""
        if not self.rows:
            raise ValueError("no data to aggregate: call the metric on at least one batch first.")
        out: dict[str, float] = {}
        for key in self.rows[0]:
            col = np.array([r[key] for r in self.rows], dtype=float)
            col = col[~np.isnan(col)]
            out[key] = float(col.mean()) if col.size else float("nan")
            out[f"{key}_std"] = float(col.std()) if col.size else float("nan")
        return out

    def reset(self) -> None:
        self.rows = []
