"""Glue around MONAI's DSC, ASD and HD95 that reports them per class and as a mean, as in the papers' tables."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDistanceMetric
from monai.networks.utils import one_hot

from calibmonai.losses.utils import non_integral

__all__ = ["SegmentationMetrics", "labels_to_regions", "image_diagonal", "BRATS_REGIONS"]

#: BraTS evaluation regions (labels 1 NCR/NET, 2 ED, 4 ET as in BraTS 2019; remapped to 3 when 4 is not used)
BRATS_REGIONS: dict[str, tuple[int, ...]] = {"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3)}


def labels_to_regions(labels: torch.Tensor, regions: Mapping[str, Sequence[int]]) -> torch.Tensor:
    """``(B, 1, *spatial)`` labels -> ``(B, R, *spatial)`` binary maps, one channel per region (union of labels),
    e.g. the BraTS regions whole tumour, tumour core and enhancing tumour (:data:`BRATS_REGIONS`).

    Args:
        labels: a ``(B, 1, *spatial)`` label map: integer, ``bool``, or floating point holding whole numbers.
        regions: ``{name: labels}``, at least one region, each a non-empty sequence of integer labels.

    Returns:
        float ``(B, R, *spatial)`` maps, 1 where a voxel's label is one of the region's.

    Raises:
        ValueError: for labels that are not whole numbers, or regions that are empty or hold a non-integer label.
    """
    _check_label_map(labels, "labels")
    _check_regions(regions)
    return _labels_to_regions(labels, regions)


def _labels_to_regions(labels: torch.Tensor, regions: Mapping[str, Sequence[int]]) -> torch.Tensor:
    """:func:`labels_to_regions` of checked labels and regions."""
    return torch.cat([torch.isin(labels, torch.as_tensor(list(v), device=labels.device)) for v in regions.values()], dim=1).float()


def image_diagonal(shape: Sequence[int], spacing: Sequence[float] | None = None) -> float:
    """Length of the image's diagonal, between the centres of opposite corner voxels: the largest distance two
    voxels of the image can have (``sqrt(sum(((n_i - 1) * s_i)^2))``, in the units of ``spacing``; voxels without)."""
    s = [1.0] * len(shape) if spacing is None else [float(x) for x in spacing]
    if len(s) != len(shape):
        raise ValueError(f"spacing needs one value per spatial dimension of {tuple(shape)}, got {list(s)}.")
    return float(math.sqrt(sum(((int(n) - 1) * x) ** 2 for n, x in zip(shape, s))))


def _check_regions(regions: Any, num_classes: int | None = None) -> None:
    """Raise ``ValueError`` unless ``regions`` maps names to non-empty sequences of integer labels (in
    ``[0, num_classes)`` when given)."""
    if not isinstance(regions, Mapping) or not regions:
        raise ValueError(f"regions must map region names to label lists, e.g. {{'WT': (1, 2, 4)}}, got {regions!r}.")
    for name, labels in regions.items():
        values = list(labels) if isinstance(labels, (list, tuple, set, frozenset, range)) else None
        if not values or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in values):
            raise ValueError(f"region {name!r} must list one or more integer labels, got {labels!r}.")
        if num_classes is not None and any(not 0 <= int(v) < num_classes for v in values):
            raise ValueError(f"region {name!r} lists labels {sorted(int(v) for v in values)} outside [0, {num_classes - 1}] for {num_classes} classes.")


def _check_label_map(x: Any, name: str) -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor of integral class labels (integer, ``bool``, or floating point
    holding finite whole numbers): a probability map or a fractional label would be truncated by ``long()``."""
    if not isinstance(x, torch.Tensor):
        hint = f" (numpy: torch.as_tensor({name}))" if type(x).__module__ == "numpy" else ""
        raise ValueError(f"{name} must be a torch.Tensor label map (B, 1, *spatial), got {type(x).__name__}{hint}.")
    if x.is_complex():
        raise ValueError(f"{name} must hold class labels, got dtype {x.dtype}.")
    if x.is_floating_point():
        bad = int(non_integral(x).sum())
        if bad:
            raise ValueError(
                f"{name} must hold integer class labels (argmax of the probabilities, not the probabilities), but {bad} "
                f"of its {x.numel()} values are not whole numbers (or not finite); shape {tuple(x.shape)}, dtype {x.dtype}."
            )


def _check_spacing(spacing: Any, batch: int, shape: Sequence[int]) -> list[float] | list[list[float]] | None:
    """The voxel spacing as MONAI's distance metrics take it: ``None``; a number (isotropic) -> one value per spatial
    dimension; a sequence of one value per spatial dimension; or one such sequence per case of the batch. Every value
    must be a finite number > 0 (``ValueError`` naming what is expected otherwise)."""
    if spacing is None:
        return None
    ndim = len(shape)
    expected = (
        f"spacing must be a number (isotropic), one value > 0 per spatial dimension of {tuple(shape)} ({ndim} values), "
        f"or one such sequence per case ({batch})"
    )
    if isinstance(spacing, (str, bytes, bool)):
        raise ValueError(f"{expected}, got {spacing!r}.")
    if isinstance(spacing, torch.Tensor):
        spacing = spacing.detach().cpu().numpy()
    try:
        arr = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{expected}, got {spacing!r}.") from None
    if arr.ndim == 0:
        arr = np.full(ndim, float(arr))
    if arr.shape not in ((ndim,), (batch, ndim)):
        raise ValueError(f"{expected}, got {spacing!r} (shape {arr.shape}).")
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        raise ValueError(f"{expected}, got {spacing!r}: every value must be a finite number > 0.")
    return arr.tolist()


#: what a class absent from the reference scores (``empty_reference``)
EMPTY_REFERENCE = ("nan", "score")


class SegmentationMetrics:
    """Per-case, per-class Dice (DSC), average symmetric surface distance (ASD) and 95th-percentile Hausdorff
    distance (HD95) with MONAI's ``DiceMetric``, ``SurfaceDistanceMetric`` and ``HausdorffDistanceMetric``,
    in physical units when ``spacing`` is given.

    Empty classes (MONAI gives ``inf`` or NaN, which a mean over classes or cases would leave out, so that a network
    that misses a structure entirely would get a *better* mean HD95 than one that finds it roughly):

    - present in the reference, absent from the prediction: DSC 0 and ASD/HD95 ``missed_distance``, by default the
      image's diagonal (:func:`image_diagonal`: the largest distance in the image, the convention of the BraTS
      challenge's scoring, whose fixed 373.13 mm is the diagonal of its volumes);
    - absent from the reference (``empty_reference``): ``"nan"`` (default, MONAI's ``ignore_empty``: nothing to
      measure, every score NaN and left out of the means); ``"score"`` (the BraTS challenge's rule, for a class that
      many cases lack, e.g. BraTS's enhancing tumour): DSC 1 and distances 0 when the prediction is empty too, DSC 0
      and distances ``missed_distance`` when it is not.

    Args:
        num_classes: number of label classes (background included).
        class_names: names of the classes (defaults to ``class1``...); background is never reported.
        regions: optional ``{name: labels}`` evaluation regions (e.g. :data:`BRATS_REGIONS`) replacing classes.
        distances: whether to compute ASD and HD95 (slow on large volumes).
        missed_distance: ASD and HD95 of a class one side lacks: ``"diagonal"`` (default), ``"nan"`` (left out of
            the means, MONAI's ``inf`` made NaN) or a distance (in the units of the spacing).
        empty_reference: ``"nan"`` or ``"score"``, see above.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        regions: Mapping[str, Sequence[int]] | None = None,
        distances: bool = True,
        missed_distance: str | float = "diagonal",
        empty_reference: str = "nan",
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
        num_classes = int(num_classes)
        if isinstance(missed_distance, str):
            if missed_distance not in ("diagonal", "nan"):
                raise ValueError(f"missed_distance must be 'diagonal', 'nan' or a distance >= 0, got {missed_distance!r}.")
        elif isinstance(missed_distance, bool) or not isinstance(missed_distance, (int, float)) or not (0 <= float(missed_distance) < math.inf):
            raise ValueError(f"missed_distance must be 'diagonal', 'nan' or a finite distance >= 0, got {missed_distance!r}.")
        if empty_reference not in EMPTY_REFERENCE:
            raise ValueError(f"empty_reference must be one of {EMPTY_REFERENCE}, got {empty_reference!r}.")
        self.missed_distance = missed_distance
        self.empty_reference = empty_reference
        self.num_classes = num_classes
        if regions:
            _check_regions(regions, num_classes)
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
            return _labels_to_regions(labels, self.regions)  # both checked: the regions in __init__, the labels by __call__
        return one_hot(labels.long(), self.num_classes, dim=1)

    def __call__(self, pred: torch.Tensor, label: torch.Tensor, spacing: float | Sequence[float] | Sequence[Sequence[float]] | None = None) -> list[dict[str, float]]:
        """Score a batch of cases.

        Args:
            pred, label: ``(B, 1, *spatial)`` label maps: integer, ``bool``, or floating point holding whole numbers
                (a probability map is refused, give its argmax).
            spacing: voxel spacing for the distances (and the ``"diagonal"`` missed distance): a number (isotropic),
                one value per spatial dim, or one such sequence per case; voxels when ``None``.

        Returns:
            one dict per case: ``dsc_<name>``, ``asd_<name>``, ``hd95_<name>`` and their ``*_mean``.

        Raises:
            ValueError: for inputs that are not tensors, shapes that are not both ``(B, 1, *spatial)``, an empty
                volume or batch, non-integral or non-finite values, labels outside ``[0, num_classes)``, or a
                spacing that is not as above.
        """
        _check_label_map(pred, "pred")
        _check_label_map(label, "label")
        if pred.shape != label.shape or pred.ndim < 3 or pred.shape[1] != 1:
            raise ValueError(f"pred and label must both be (B, 1, *spatial) label maps, got {tuple(pred.shape)} and {tuple(label.shape)}.")
        if pred.numel() == 0:
            raise ValueError(f"pred and label hold no voxel (an empty batch or spatial size), shape {tuple(pred.shape)}.")
        spacing = _check_spacing(spacing, pred.shape[0], tuple(pred.shape[2:]))
        ranges = [torch.stack(torch.aminmax(x)).long().cpu() for x in (pred, label)]  # one host sync per map
        lo, hi = min(int(r[0]) for r in ranges), max(int(r[1]) for r in ranges)
        if lo < 0 or hi >= self.num_classes:
            raise ValueError(f"labels must lie in [0, {self.num_classes - 1}] for {self.num_classes} classes, got values in [{lo}, {hi}].")
        p, g = self._channels(pred), self._channels(label)
        values = {"dsc": self.dice(p, g)}
        if self.distances:
            kw = {"spacing": spacing} if spacing is not None else {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # MONAI warns for empty classes; those are NaN below
                values["asd"] = self.asd(p, g, **kw)
                values["hd95"] = self.hd95(p, g, **kw)
        # which reported channels each case has in the prediction and in the reference: (B, K) booleans
        first = 0 if self.regions else 1
        p_any = p[:, first:].flatten(2).any(-1).cpu()
        g_any = g[:, first:].flatten(2).any(-1).cpu()
        per_case = spacing is not None and isinstance(spacing[0], list)  # one spacing per case
        if not self.distances or self.missed_distance == "nan":
            missed = [math.nan] * pred.shape[0]
        elif self.missed_distance == "diagonal":
            missed = [image_diagonal(pred.shape[2:], spacing[b] if per_case else spacing) for b in range(pred.shape[0])]  # type: ignore[index]
        else:
            missed = [float(self.missed_distance)] * pred.shape[0]
        rows = []
        for b in range(pred.shape[0]):
            row: dict[str, float] = {}
            for key, v in values.items():
                vals = [float(x) for x in v[b].tolist()]
                vals = [self._empty_rule(key, x, bool(pa), bool(ga), missed[b]) for x, pa, ga in zip(vals, p_any[b], g_any[b])]
                for name, x in zip(self.names, vals):
                    row[f"{key}_{name}"] = x
                finite = [x for x in vals if not math.isnan(x)]
                row[f"{key}_mean"] = float(np.mean(finite)) if finite else float("nan")
            rows.append(row)
        self.rows.extend(rows)
        return rows

    def _empty_rule(self, key: str, value: float, in_pred: bool, in_ref: bool, missed: float) -> float:
        """A score where a side lacks the class (the class docstring's rules); MONAI's value otherwise."""
        if in_pred and in_ref:
            return value if math.isfinite(value) else math.nan
        if in_ref:  # missed entirely
            return 0.0 if key == "dsc" else missed
        if self.empty_reference == "nan":
            return math.nan
        if not in_pred:  # absent from both: nothing predicted where there is nothing
            return 1.0 if key == "dsc" else 0.0
        return 0.0 if key == "dsc" else missed

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
