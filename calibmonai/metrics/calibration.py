"""Streaming calibration metrics for segmentation: ECE, class-wise ECE, Brier, stratified Brier, NLL.

All metrics are computed from fixed-size per-case histograms (count, confidence sum, correct sum per bin,
and per bin and class for the class-wise ECE) filled in one chunked pass over the voxels, so memory does
not grow with the number of voxels or cases, and the pooled (dataset-level) value is a sum of histograms.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, fields
from typing import Any, Sequence

import torch
import torch.distributed as dist
from monai.metrics.metric import CumulativeIterationMetric

from calibmonai.losses.utils import first_argmax, onehot_to_indices

__all__ = [
    "CALIBRATION_METRICS",
    "FOREGROUND_MODES",
    "CECE_CLASS_SETS",
    "CalibrationHistograms",
    "CalibrationMetrics",
    "ExpectedCalibrationErrorMetric",
    "ClasswiseCalibrationErrorMetric",
    "BrierScoreMetric",
    "StratifiedBrierScoreMetric",
    "NegativeLogLikelihoodMetric",
    "compute_calibration_histograms",
    "calibration_errors",
    "reliability_statistics",
]

CALIBRATION_METRICS = ("ece", "cece", "brier", "brier_plus", "nll")
FOREGROUND_MODES = ("label", "none", "label_or_pred")
CECE_CLASS_SETS = ("all", "up_to_max_label")
_CHUNK_VOXELS = 1 << 16


@dataclass
class CalibrationHistograms:
    """Sufficient statistics of the calibration metrics for a batch of cases (leading dim ``B``).

    Attributes:
        top_count, top_conf, top_correct: ``(B, bins)`` voxel count, sum of max-probability and number of
            correct predictions per confidence bin (top-label ECE, reliability diagram). The prediction is the
            argmax of the probabilities with the first-index tie rule: tied voxels are predicted as their lowest
            tied class.
        cls_count, cls_prob, cls_hit: ``(B, C, bins)`` count, sum of ``p_c`` and number of voxels labelled
            ``c`` per bin of ``p_c`` (class-wise ECE).
        n: ``(B,)`` number of voxels in the ECE/CECE/NLL selection.
        nll_sum: ``(B,)`` sum of ``-log p_y`` over that selection.
        brier_sum, brier_n: ``(B,)`` sum of ``sum_k (p_k - y_k)^2`` and voxel count (all voxels in the mask).
        brier_fg_sum, brier_fg_n: the same over ground-truth foreground voxels (stratified Brier).
    """

    top_count: torch.Tensor
    top_conf: torch.Tensor
    top_correct: torch.Tensor
    cls_count: torch.Tensor
    cls_prob: torch.Tensor
    cls_hit: torch.Tensor
    n: torch.Tensor
    nll_sum: torch.Tensor
    brier_sum: torch.Tensor
    brier_n: torch.Tensor
    brier_fg_sum: torch.Tensor
    brier_fg_n: torch.Tensor

    @classmethod
    def zeros(cls, batch: int, num_classes: int, num_bins: int, device: Any = "cpu") -> CalibrationHistograms:
        def z(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=torch.float64, device=device)

        return cls(
            z(batch, num_bins), z(batch, num_bins), z(batch, num_bins),
            z(batch, num_classes, num_bins), z(batch, num_classes, num_bins), z(batch, num_classes, num_bins),
            z(batch), z(batch), z(batch), z(batch), z(batch), z(batch),
        )  # fmt: skip

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self)]

    def summed(self) -> CalibrationHistograms:
        """Pool the cases: sum over the leading batch dimension (keeping it, of size 1)."""
        return CalibrationHistograms(*[t.sum(0, keepdim=True) for t in self.tensors()])

    def add_(self, other: CalibrationHistograms) -> CalibrationHistograms:
        for a, b in zip(self.tensors(), other.tensors()):
            a.add_(b)
        return self

    def all_reduce_(self) -> CalibrationHistograms:
        """Sum the statistics over every process of an initialised ``torch.distributed`` group."""
        if dist.is_available() and dist.is_initialized():
            for t in self.tensors():
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return self


def _as_labels(y: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    """Return labels as a ``(B, N)`` view/tensor of class indices, checking shape.

    ``y``: ``(B, 1, *spatial)`` / ``(B, *spatial)`` class indices or ``(B, C, *spatial)`` one-hot, of any integer,
    floating point or ``bool`` dtype (a boolean one-hot mask reads as its integer equivalent).
    """
    b, c = y_pred.shape[:2]
    spatial = tuple(y_pred.shape[2:])
    shape = tuple(y.shape)
    if shape == (b, c) + spatial and c > 1:
        if not bool(((y == 0) | (y == 1)).all()) or not bool((y.sum(1) == 1).all()):
            raise ValueError(f"y of shape {shape} is read as one-hot, but it is not one-hot (0/1, one 1 per voxel).")
        return onehot_to_indices(y).reshape(b, -1)
    if shape == (b, 1) + spatial or shape == (b,) + spatial:
        return y.reshape(b, -1)
    raise ValueError(
        f"y shape {shape} does not match y_pred shape {tuple(y_pred.shape)}: expected labels {(b, 1) + spatial} "
        f"or {(b,) + spatial}, or one-hot {(b, c) + spatial}."
    )


def _as_mask(mask: torch.Tensor | None, y_pred: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    b = y_pred.shape[0]
    spatial = tuple(y_pred.shape[2:])
    if tuple(mask.shape) not in ((b, 1) + spatial, (b,) + spatial):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match y_pred shape {tuple(y_pred.shape)}: expected {(b, 1) + spatial}.")
    return mask.reshape(b, -1).bool()


def _check_values(c: int, lab_lo: float, lab_hi: float, softmax: bool, p_lo: float, p_hi: float, s_err: float, prob_tol: float, bad: int = 0) -> None:
    """The bad-input checks shared by both backends."""
    if lab_lo < 0 or lab_hi >= c:
        raise ValueError(f"labels must lie in [0, {c - 1}] for {c} classes, got values in [{int(lab_lo)}, {int(lab_hi)}].")
    if softmax:
        if bad:
            raise ValueError("y_pred logits contain non-finite values (NaN or Inf).")
        return
    if bad or math.isnan(p_lo) or math.isnan(p_hi):
        raise ValueError("y_pred must hold probabilities in [0, 1], got NaN values.")
    if not (p_lo >= -prob_tol and p_hi <= 1.0 + prob_tol):
        raise ValueError(f"y_pred must hold probabilities in [0, 1], got values in [{p_lo:.4g}, {p_hi:.4g}] (pass softmax=True for logits).")
    if not s_err <= prob_tol:
        raise ValueError(
            f"y_pred probabilities must sum to 1 over classes (dim 1), max deviation {s_err:.4g} > {prob_tol} (pass softmax=True for logits)."
        )


def _histograms_numba(
    probs_all: torch.Tensor, labels_all: torch.Tensor, mask_all: torch.Tensor | None, hist: CalibrationHistograms,
    num_bins: int, foreground: str, softmax: bool, classwise: bool, background_index: int, prob_tol: float, with_nll: bool = True,
) -> CalibrationHistograms:  # fmt: skip
    from calibmonai.metrics._histogram_kernel import SEL_ALL, SEL_LABEL, SEL_LABEL_OR_PRED, case_histograms

    kernel_mode = {"label": SEL_LABEL, "none": SEL_ALL, "label_or_pred": SEL_LABEL_OR_PRED}[foreground]
    c = probs_all.shape[1]
    for i in range(probs_all.shape[0]):
        probs = probs_all[i]
        if probs.dtype not in (torch.float32, torch.float64):
            probs = probs.float()
        labels = labels_all[i]
        if labels.is_floating_point():
            if not bool((labels == labels.round()).all()):
                raise ValueError("y holds class indices, but some values are not integers (or not finite).")
            labels = labels.long()
        if labels.dtype == torch.bool:
            labels = labels.to(torch.uint8)
        mask = None if mask_all is None else mask_all[i].contiguous().numpy()
        top, cls, sc, chk, bad = case_histograms(
            probs.contiguous().numpy(), labels.contiguous().numpy(), mask, num_bins, kernel_mode, background_index,
            softmax, classwise, with_nll, prob_tol,
        )  # fmt: skip
        p_lo, p_hi, s_err = 0.0, 1.0, 0.0
        if not softmax and not bad and (chk[0] or chk[1]):  # the kernel counts violations; measure them for the message
            lo, hi = torch.aminmax(probs)
            p_lo, p_hi = float(lo), float(hi)
            s_err = float((probs.double().sum(0) - 1.0).abs().max())
        _check_values(c, chk[2], chk[3], softmax, p_lo, p_hi, s_err, prob_tol, bad)
        hist.top_count[i], hist.top_conf[i], hist.top_correct[i] = (torch.from_numpy(top[j]) for j in range(3))
        hist.cls_count[i], hist.cls_prob[i], hist.cls_hit[i] = (torch.from_numpy(cls[j]) for j in range(3))
        hist.n[i], hist.nll_sum[i], hist.brier_sum[i], hist.brier_n[i], hist.brier_fg_sum[i], hist.brier_fg_n[i] = (float(v) for v in sc)
    return hist


def _check_num_bins(num_bins: Any) -> None:
    if isinstance(num_bins, bool) or not isinstance(num_bins, numbers.Integral) or num_bins < 1:
        raise ValueError(f"num_bins must be an integer >= 1, got {num_bins!r}.")


def _warn_suspicious_inputs(y_pred: torch.Tensor, softmax: bool, max_voxels: int = 4096) -> None:
    """Warn about inputs that pass every check but give a meaningless calibration error, from a few thousand voxels of
    each case (CPU tensors only: no host synchronisation for device tensors):

    - ``softmax=False`` with every probability exactly 0 or 1: hard (one-hot) predictions, e.g. MONAI's
      ``AsDiscreted(argmax=True, to_onehot=C)`` placed before the metric; their ECE is the segmentation error;
    - ``softmax=True`` on values that already are probabilities (in [0, 1], summing to 1): a second softmax.
    """
    if y_pred.device.type != "cpu" or y_pred.numel() == 0:
        return
    flat = y_pred.detach().reshape(y_pred.shape[0], y_pred.shape[1], -1)
    step = max(1, flat.shape[-1] // max_voxels)
    part = flat[..., ::step].float()
    if not softmax:
        if bool(((part == 0) | (part == 1)).all()):
            warnings.warn(
                "y_pred holds only hard 0/1 probabilities (one-hot predictions?): their calibration error is the "
                "segmentation error, not the network's calibration; give the softmax probabilities (before any "
                "AsDiscrete/argmax)."
            )
    elif bool(((part >= 0) & (part <= 1)).all()) and bool(((part.sum(1) - 1).abs() <= 1e-4).all()):
        warnings.warn("softmax=True on y_pred that already look like probabilities (in [0, 1], summing to 1): a second softmax flattens them; pass softmax=False.")


def compute_calibration_histograms(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    num_bins: int = 15,
    mask: torch.Tensor | None = None,
    foreground: str = "label",
    softmax: bool = False,
    classwise: bool = True,
    background_index: int = 0,
    prob_tol: float = 1e-3,
    chunk_voxels: int = _CHUNK_VOXELS,
    backend: str = "auto",
    with_nll: bool = True,
) -> CalibrationHistograms:
    """Fill the per-case calibration histograms in one chunked pass over the voxels.

    Args:
        y_pred: probabilities ``(B, C, *spatial)``, or logits when ``softmax=True``.
        y: labels ``(B, 1, *spatial)`` / ``(B, *spatial)`` or one-hot ``(B, C, *spatial)``.
        num_bins: number of equal-width bins on ``[0, 1]``; the value 1.0 falls in the last bin.
        mask: optional ``(B, 1, *spatial)`` voxel mask; only voxels where it is true are counted.
        foreground: which voxels the ECE, CECE and NLL see: ``"label"`` (ground truth not background, as in
            the MbLS and MEEP evaluations), ``"none"`` (all voxels) or ``"label_or_pred"`` (ground truth or
            prediction not background; the prediction is the first-index argmax, see ``top_correct``). The softmax always
            runs over every class. Brier uses all (masked) voxels, Brier+ the ground-truth foreground ones.
        softmax: apply a softmax over dim 1 first (chunk by chunk, no full-size copy).
        classwise: fill the ``(B, C, bins)`` class-wise histograms (skip them to save time when unused).
        background_index: the background label.
        prob_tol: tolerance of the ``[0, 1]`` range and sum-to-one checks on probabilities.
        chunk_voxels: voxels per chunk of the torch backend (bounds the temporary memory).
        backend: ``"numba"`` (one multi-threaded pass, CPU tensors), ``"torch"`` (chunked tensor ops on CPU tensors;
            tensors on another device always take the sync-free device path: a Triton kernel where installed,
            whole-volume tensor operations otherwise)
            or ``"auto"`` (numba for CPU tensors when it is installed).
        with_nll: whether to fill ``nll_sum`` (one logarithm per voxel; skip it when the NLL is not reported).

    Raises:
        ValueError: for mismatched shapes, an empty ``y_pred`` (no case or no voxel), labels outside ``[0, C)``, probabilities outside ``[0, 1]`` or not
            summing to 1 over classes (beyond ``prob_tol``), non-finite values, or an unknown ``foreground``.
    """
    if not isinstance(y_pred, torch.Tensor) or y_pred.ndim < 3:
        raise ValueError(f"y_pred must have shape (B, C, *spatial), got {tuple(getattr(y_pred, 'shape', ()))}.")
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"y must be a tensor of labels (B, 1, *spatial) or one-hot (B, C, *spatial), got {type(y).__name__} (numpy: torch.as_tensor(y)).")
    if foreground not in FOREGROUND_MODES:
        raise ValueError(f"foreground must be one of {FOREGROUND_MODES}, got {foreground!r}.")
    _check_num_bins(num_bins)
    if isinstance(prob_tol, bool) or not isinstance(prob_tol, numbers.Real) or not 0.0 <= float(prob_tol) < 1.0:
        raise ValueError(f"prob_tol must be a number in [0, 1), got {prob_tol!r}.")
    if y.is_complex():
        raise ValueError(f"y must hold class labels, got dtype {y.dtype}.")
    b, c = y_pred.shape[:2]
    if c < 2:
        raise ValueError(f"y_pred must have at least 2 classes along dim 1, got shape {tuple(y_pred.shape)}.")
    if y_pred.numel() == 0:
        raise ValueError(f"y_pred holds no voxel (an empty batch or spatial size), shape {tuple(y_pred.shape)}.")
    if isinstance(background_index, bool) or not isinstance(background_index, numbers.Integral) or not 0 <= background_index < c:
        raise ValueError(f"background_index must be a class index in [0, {c - 1}] for y_pred {tuple(y_pred.shape)}, got {background_index!r}.")
    _warn_suspicious_inputs(y_pred, softmax)
    probs_all = y_pred.reshape(b, c, -1)
    labels_all = _as_labels(y, y_pred)
    mask_all = _as_mask(mask, y_pred)
    n_vox = probs_all.shape[-1]
    dev = y_pred.device
    hist = CalibrationHistograms.zeros(b, c, num_bins, dev)
    if backend not in ("auto", "numba", "torch"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}.")
    if backend != "torch":
        from calibmonai.metrics._histogram_kernel import HAVE_NUMBA

        if backend == "numba" and (not HAVE_NUMBA or dev.type != "cpu"):
            raise ValueError("backend='numba' needs the numba package and CPU tensors.")
        if HAVE_NUMBA and dev.type == "cpu":
            return _histograms_numba(
                probs_all.detach(), labels_all.detach(), mask_all, hist, num_bins, foreground, softmax, classwise, background_index, prob_tol, with_nll
            )
    if dev.type != "cpu":  # CUDA etc.: one pass with no host sync per chunk (a Triton kernel where installed)
        from calibmonai.metrics._torch_backend import device_histograms

        return device_histograms(probs_all.detach(), labels_all.detach(), mask_all, hist, num_bins, foreground, softmax, classwise, background_index, prob_tol, with_nll)
    nb1 = num_bins + 1  # one extra "dump" bin per case for voxels outside the selection
    # int32 bin indices: bincount on int32 is faster and halves the temporary memory
    top_off = (torch.arange(b, device=dev, dtype=torch.int32) * nb1).view(b, 1)
    cls_off = (torch.arange(b * c, device=dev, dtype=torch.int32) * nb1).view(b, c, 1)
    lab_lo, lab_hi = math.inf, -math.inf
    p_lo, p_hi, s_err = math.inf, -math.inf, 0.0

    def bincount(idx: torch.Tensor, size: int, weights: torch.Tensor | None = None) -> torch.Tensor:
        return torch.bincount(idx.reshape(-1), weights=None if weights is None else weights.reshape(-1), minlength=size)

    for start in range(0, n_vox, max(1, chunk_voxels)):
        stop = min(n_vox, start + chunk_voxels)
        p = probs_all[:, :, start:stop]
        p = torch.softmax(p.float(), dim=1) if softmax else p.float()
        lab = labels_all[:, start:stop]
        if lab.is_floating_point():
            if not bool((lab == lab.round()).all()):
                raise ValueError("y holds class indices, but some values are not integers (or not finite).")
        lab = lab.long()
        lo, hi = torch.aminmax(lab)
        lab_lo, lab_hi = min(lab_lo, int(lo)), max(lab_hi, int(hi))
        bad = 0
        if softmax:
            bad = int(not bool(torch.isfinite(p).all()))
        else:
            lo, hi = torch.aminmax(p)
            bad = int(math.isnan(float(lo)) or math.isnan(float(hi)))
            if not bad:
                p_lo, p_hi = min(p_lo, float(lo)), max(p_hi, float(hi))
                s_err = max(s_err, float((p.sum(1) - 1.0).abs().max()))
        _check_values(c, lab_lo, lab_hi, softmax, p_lo, p_hi, s_err, prob_tol, bad)

        keep = torch.ones_like(lab, dtype=torch.bool) if mask_all is None else mask_all[:, start:stop]
        fg_gt = lab != background_index
        p_y = p.gather(1, lab.unsqueeze(1)).squeeze(1)
        conf = p.amax(dim=1)
        pred = first_argmax(p, dim=1)  # the prediction: ties go to the lowest class
        # Brier over all kept voxels; Brier+ over the ground-truth foreground
        brier = (p * p).sum(1) - 2.0 * p_y + 1.0
        keep_f = keep.double()
        hist.brier_sum += (brier.double() * keep_f).sum(1)
        hist.brier_n += keep_f.sum(1)
        fg_keep = (keep & fg_gt).double()
        hist.brier_fg_sum += (brier.double() * fg_keep).sum(1)
        hist.brier_fg_n += fg_keep.sum(1)
        # selection of the ECE, CECE and NLL
        if foreground == "label":
            sel = keep & fg_gt
        elif foreground == "label_or_pred":
            sel = keep & (fg_gt | (pred != background_index))
        else:
            sel = keep
        sel_f = sel.double()
        hist.n += sel_f.sum(1)
        hist.nll_sum += (-torch.log(p_y.clamp_min(1e-12)).double() * sel_f).sum(1)
        # top-label histograms: "correct" is (first-index argmax == label); a tie is correct only for the lowest class
        correct = (pred == lab).to(p.dtype)
        bins = (conf * num_bins).to(torch.int32).clamp_(0, num_bins - 1)
        idx = torch.where(sel, bins, num_bins) + top_off
        size = b * nb1
        hist.top_count += bincount(idx, size).view(b, nb1)[:, :num_bins].double()
        hist.top_conf += bincount(idx, size, conf).view(b, nb1)[:, :num_bins].double()
        hist.top_correct += bincount(idx, size, correct).view(b, nb1)[:, :num_bins].double()
        if classwise:
            cbins = (p * num_bins).to(torch.int32).clamp_(0, num_bins - 1)
            cidx = torch.where(sel.unsqueeze(1), cbins, num_bins) + cls_off
            size = b * c * nb1
            hist.cls_count += bincount(cidx, size).view(b, c, nb1)[..., :num_bins].double()
            hist.cls_prob += bincount(cidx, size, p).view(b, c, nb1)[..., :num_bins].double()
            # each voxel is a hit only for its own label's class: count the label's bin
            hit_idx = cidx.gather(1, lab.unsqueeze(1))
            hist.cls_hit += bincount(hit_idx, size).view(b, c, nb1)[..., :num_bins].double()
    return hist


def calibration_errors(
    hist: CalibrationHistograms, include_background: bool = True, background_index: int = 0, cece_classes: str = "all"
) -> dict[str, torch.Tensor]:
    """Metric values ``(B,)`` from histograms: ``ece``, ``cece``, ``brier``, ``brier_plus``, ``nll``.

    ECE = sum_bins |correct - conf| / n (= sum_bins n_bin/n * |acc_bin - conf_bin|); CECE = mean over classes
    of the same per class; a case with no selected voxel gets NaN.

    Args:
        hist: the histograms (per case, or pooled).
        include_background: whether ``background_index`` enters the CECE class mean.
        background_index: the background label.
        cece_classes: the classes of the CECE mean: ``"all"`` (the ``C`` classes) or ``"up_to_max_label"``
            (classes ``0 .. L``, ``L`` the highest label among the voxels the CECE sees, as the MbLS/NACL
            reference code's ``ClasswiseECELoss``, which takes ``max(labels) + 1`` classes). For pooled histograms
            ``L`` is the highest label over all the pooled cases.
    """
    if cece_classes not in CECE_CLASS_SETS:
        raise ValueError(f"cece_classes must be one of {CECE_CLASS_SETS}, got {cece_classes!r}.")
    c = hist.cls_hit.shape[1]
    if isinstance(background_index, bool) or not isinstance(background_index, numbers.Integral) or not 0 <= background_index < c:
        raise ValueError(f"background_index must be a class index in [0, {c - 1}] for histograms of {c} classes, got {background_index!r}.")
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=hist.n.device)
    n = hist.n
    valid = n > 0
    ece = torch.where(valid, (hist.top_correct - hist.top_conf).abs().sum(-1) / n.clamp_min(1), nan)
    per_class = (hist.cls_hit - hist.cls_prob).abs().sum(-1) / n.clamp_min(1).unsqueeze(-1)
    classes = torch.arange(per_class.shape[1], device=per_class.device)
    weight = torch.ones_like(per_class)
    if not include_background:
        weight[:, background_index] = 0.0
    if cece_classes == "up_to_max_label":
        # every selected voxel is a hit of its label's class: the highest class with a hit is the highest label
        present = hist.cls_hit.sum(-1) > 0
        top_label = torch.where(present, classes, -1).amax(-1, keepdim=True)
        weight = weight * (classes <= top_label)
    cece = torch.where(valid & (weight.sum(-1) > 0), (per_class * weight).sum(-1) / weight.sum(-1).clamp_min(1), nan)
    nll = torch.where(valid, hist.nll_sum / n.clamp_min(1), nan)
    brier = torch.where(hist.brier_n > 0, hist.brier_sum / hist.brier_n.clamp_min(1), nan)
    brier_plus = torch.where(hist.brier_fg_n > 0, hist.brier_fg_sum / hist.brier_fg_n.clamp_min(1), nan)
    return {"ece": ece, "cece": cece, "brier": brier, "brier_plus": brier_plus, "nll": nll}


def reliability_statistics(hist: CalibrationHistograms) -> dict[str, torch.Tensor]:
    """Per-bin statistics of the top-label reliability diagram pooled over the cases in ``hist``.

    Returns ``edges`` (bins + 1), ``count``, ``confidence`` (mean max-probability) and ``accuracy`` per bin
    (NaN in empty bins), and the pooled ``ece``.
    """
    pooled = hist.summed() if hist.n.shape[0] != 1 else hist
    count = pooled.top_count[0]
    safe = count.clamp_min(1)
    nan = torch.full_like(count, float("nan"))
    num_bins = count.shape[0]
    return {
        "edges": torch.linspace(0, 1, num_bins + 1, dtype=torch.float64),
        "count": count,
        "confidence": torch.where(count > 0, pooled.top_conf[0] / safe, nan),
        "accuracy": torch.where(count > 0, pooled.top_correct[0] / safe, nan),
        "ece": calibration_errors(pooled)["ece"][0],
    }


class CalibrationMetrics(CumulativeIterationMetric):
    """Top-label ECE, class-wise ECE, Brier, stratified Brier (Brier+) and NLL of a segmentation, per case
    and pooled, from one pass over the voxels.

    - ECE (Naeini et al., AAAI 2015; Guo et al., ICML 2017): confidence ``max_k p_k``, correct
      ``argmax == label`` with the first-index tie rule (a voxel whose probabilities tie at the maximum is
      predicted as the lowest tied class, as ``torch.argmax``/``numpy.argmax`` and the evaluation's
      segmentation do; ties occur with quantised stored probability maps and saturated logits);
      ``sum_b n_b / n * |acc_b - conf_b|`` over ``num_bins`` equal-width bins.
    - CECE (class-wise ECE; Kull et al., NeurIPS 2019; the MbLS segmentation evaluation): per class ``c``,
      bin ``p_c`` against ``1[label == c]``; the mean over classes. ``cece_classes="all"`` (default) averages
      the ``C`` classes; ``"up_to_max_label"`` averages classes ``0 .. L`` with ``L`` the highest label among
      the voxels the CECE sees, which is what the MbLS/NACL reference code computes (its ``ClasswiseECELoss``
      takes ``max(labels) + 1`` classes), for comparing with the papers' tables: the two differ on a case that
      lacks its highest classes. ``include_background`` chooses whether class ``background_index`` is in
      either mean.
    - Brier (Brier 1950): mean over voxels of ``sum_k (p_k - y_k)^2``; Brier+ (stratified Brier; Wallace &
      Dahabreh 2012): the same on ground-truth foreground voxels only.
    - NLL: mean ``-log p_y`` over the ECE voxels, with ``p_y`` clamped at ``1e-12`` (at most 27.63 per voxel, also
      for saturated logits whose true ``-log p_y`` is larger).

    Numerical conventions: confidences are binned in float32 (``floor(p * num_bins)``, 1.0 in the last bin), so a
    value less than one float32 step below an interior edge (``0.7`` stored as ``0.699999988`` with 10 bins) may land
    in the upper bin; with the default 15 bins every float32 value lands in its exact bin. A float ``mask`` is true
    where it is non-zero. The ``std`` of ``aggregate("case")`` is the population std (``ddof=0``); papers often
    report the sample std, ``std * sqrt(n / (n - 1))`` over ``n`` cases.

    Call once per batch (each batch item is one case), then ``aggregate()``:
    ``level="case"`` gives the mean (and std) over cases of the per-case values (the MbLS tables), skipping
    cases with no selected voxel (they get NaN, a warning names them, and ``skipped`` counts them);
    ``level="pooled"`` gives the values of the histograms summed over every case seen (all-reduced over
    ``torch.distributed`` processes), whose memory does not grow with the number of voxels or cases.

    Args:
        metric_names: which of ``ece``, ``cece``, ``brier``, ``brier_plus``, ``nll`` to report.
        num_bins: equal-width bins on ``[0, 1]``; 1.0 is in the last bin. Defaults to 15.
        foreground: voxels of the ECE/CECE/NLL: ``"label"`` (ground-truth foreground), ``"none"``,
            ``"label_or_pred"``.
        include_background: whether class ``background_index`` enters the CECE class mean.
        softmax: whether ``y_pred`` are logits to be softmaxed over dim 1.
        background_index: the background label.
        prob_tol: tolerance of the probability checks.
        cece_classes: ``"all"`` (the ``C`` classes, default) or ``"up_to_max_label"`` (classes up to the highest
            label seen, as the MbLS/NACL reference code); see above.
        backend: ``"auto"`` (a one-pass numba kernel for CPU tensors when numba is installed), ``"numba"`` or
            ``"torch"`` (chunked tensor operations); both give the same values. CUDA tensors take the sync-free
            device path (Triton kernel or whole-volume tensor operations).

    ``metric(y_pred, y, mask=None, case_names=None)``: ``case_names`` (one per batch item) name the cases in
    warnings and per-case outputs.
    """

    def __init__(
        self,
        metric_names: Sequence[str] = CALIBRATION_METRICS,
        num_bins: int = 15,
        foreground: str = "label",
        include_background: bool = True,
        softmax: bool = False,
        background_index: int = 0,
        prob_tol: float = 1e-3,
        backend: str = "auto",
        cece_classes: str = "all",
    ) -> None:
        super().__init__()
        if cece_classes not in CECE_CLASS_SETS:
            raise ValueError(f"cece_classes must be one of {CECE_CLASS_SETS}, got {cece_classes!r}.")
        self.cece_classes = cece_classes
        if backend not in ("auto", "numba", "torch"):
            raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}.")
        self.backend = backend
        names = (metric_names,) if isinstance(metric_names, str) else tuple(metric_names)
        unknown = [m for m in names if m not in CALIBRATION_METRICS]
        if unknown or not names:
            raise ValueError(f"unknown metric name(s) {unknown}; available: {CALIBRATION_METRICS}.")
        if foreground not in FOREGROUND_MODES:
            raise ValueError(f"foreground must be one of {FOREGROUND_MODES}, got {foreground!r}.")
        _check_num_bins(num_bins)
        self.metric_names = names
        self.num_bins = int(num_bins)
        self.foreground = foreground
        self.include_background = include_background
        self.softmax = softmax
        self.background_index = background_index
        self.prob_tol = prob_tol
        self._pooled: CalibrationHistograms | None = None
        self._case_names: list[str] = []

    def reset(self) -> None:
        super().reset()
        self._pooled = None
        self._case_names = []

    def __call__(self, y_pred: Any, y: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        """Compute the per-case values of a batch ``(B, C, *spatial)`` or a list of channel-first cases and
        accumulate them (MONAI's ``CumulativeIterationMetric``).

        Raises:
            ValueError: for a ``y_pred`` or ``y`` that is neither a tensor nor a list/tuple of tensors, naming its
                type (MONAI would drop a numpy ``y`` silently and report it missing); see
                :func:`compute_calibration_histograms` for the checks of the values.
        """
        if not isinstance(y_pred, (torch.Tensor, list, tuple)):
            raise ValueError(
                f"y_pred must be a tensor (B, C, *spatial) or a list of channel-first tensors, got {type(y_pred).__name__}"
                + (" (numpy: torch.as_tensor(y_pred))." if type(y_pred).__module__ == "numpy" else ".")
            )
        if y is not None and not isinstance(y, (torch.Tensor, list, tuple)):
            raise ValueError(
                f"y must be a tensor of labels (B, 1, *spatial) or one-hot (B, C, *spatial), got {type(y).__name__}"
                + (" (numpy: torch.as_tensor(y))." if type(y).__module__ == "numpy" else ".")
            )
        return super().__call__(y_pred, y, **kwargs)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, case_names: Sequence[str] | None = None, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        """Per-case values ``(B, len(metric_names))``; also accumulates the pooled histograms."""
        case_names = None if case_names is None else list(case_names)
        if case_names is not None and len(case_names) != y_pred.shape[0]:
            raise ValueError(f"case_names must name each of the {y_pred.shape[0]} cases of the batch (y_pred {tuple(y_pred.shape)}), got {len(case_names)}: {case_names}.")
        if self._pooled is not None and self._pooled.cls_count.shape[1] != y_pred.shape[1]:
            raise ValueError(
                f"this metric has accumulated {self._pooled.cls_count.shape[1]} classes; the batch has {y_pred.shape[1]} "
                f"(y_pred {tuple(y_pred.shape)}): call reset() before evaluating a task with another number of classes."
            )
        hist = compute_calibration_histograms(
            y_pred, y, self.num_bins, mask=mask, foreground=self.foreground, softmax=self.softmax,
            classwise="cece" in self.metric_names, background_index=self.background_index, prob_tol=self.prob_tol,
            backend=self.backend, with_nll="nll" in self.metric_names,
        )  # fmt: skip
        pooled = hist.summed()
        self._pooled = pooled if self._pooled is None else self._pooled.add_(pooled)
        values = calibration_errors(hist, self.include_background, self.background_index, self.cece_classes)
        start = len(self._case_names)
        names = case_names if case_names is not None else [f"case {start + i}" for i in range(y_pred.shape[0])]
        self._case_names.extend(names)
        out = torch.stack([values[m] for m in self.metric_names], dim=1)
        for i in range(out.shape[0]):
            bad = [m for j, m in enumerate(self.metric_names) if torch.isnan(out[i, j])]
            if bad:
                warnings.warn(f"{names[i]}: no voxel selected for {', '.join(bad)} (no foreground?); value is NaN and skipped.")
        return out.float()

    def _compute_list(self, y_pred: Sequence[torch.Tensor], y: Sequence[torch.Tensor] | None = None, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        """A list of channel-first cases (MONAI's decollated form): each item computed as a batch of one, with its own
        ``case_names`` entry and ``mask`` item."""
        if y is None:
            raise ValueError("the calibration metrics need the labels y.")
        n = len(y_pred)
        names, mask = kwargs.pop("case_names", None), kwargs.pop("mask", None)
        names = None if names is None else list(names)
        if len(y) != n:
            raise ValueError(f"y_pred and y must list the same cases, got {n} and {len(y)}.")
        if n == 0:
            raise ValueError("y_pred and y list no case (empty lists).")
        for what, items in (("y_pred", y_pred), ("y", y)):
            bad = [i for i, t in enumerate(items) if not isinstance(t, torch.Tensor)]
            if bad:
                raise ValueError(f"{what} item {bad[0]} must be a channel-first tensor, got {type(items[bad[0]]).__name__}.")
        if names is not None and len(names) != n:
            raise ValueError(f"case_names must name each of the {n} listed cases, got {len(names)}: {names}.")
        if mask is not None and len(mask) != n:
            raise ValueError(f"mask must hold one item per listed case ({n}), got {len(mask)}.")
        return torch.cat([
            self._compute_tensor(
                p.detach().unsqueeze(0), t.detach().unsqueeze(0), mask=None if mask is None else torch.as_tensor(mask[i]).unsqueeze(0),
                case_names=None if names is None else [names[i]], **kwargs,
            )
            for i, (p, t) in enumerate(zip(y_pred, y))
        ], dim=0)  # fmt: skip

    def _case_values(self) -> torch.Tensor:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            raise ValueError("no data to aggregate: call the metric on at least one batch first.")
        return data

    def pooled_histograms(self) -> CalibrationHistograms:
        """The histograms summed over every case seen (and over processes under ``torch.distributed``)."""
        if self._pooled is None:
            raise ValueError("no data to aggregate: call the metric on at least one batch first.")
        pooled = CalibrationHistograms(*[t.clone() for t in self._pooled.tensors()])
        return pooled.all_reduce_()

    def aggregate(self, level: str = "case") -> dict[str, Any]:  # type: ignore[override]
        """Aggregate over cases.

        Args:
            level: ``"case"``: mean, std over cases of per-case values (NaN cases skipped, ``skipped`` counts
                them); ``"pooled"``: values from the summed histograms.

        Returns:
            a dict ``{name: value}`` (floats); for ``level="case"`` also ``{name}_std`` and ``{name}_skipped``.
        """
        if level == "pooled":
            values = calibration_errors(self.pooled_histograms(), self.include_background, self.background_index, self.cece_classes)
            return {m: float(values[m][0]) for m in self.metric_names}
        if level != "case":
            raise ValueError(f"level must be 'case' or 'pooled', got {level!r}.")
        data = self._case_values().double()
        out: dict[str, Any] = {}
        for j, m in enumerate(self.metric_names):
            col = data[:, j]
            ok = col[~torch.isnan(col)]
            out[m] = float(ok.mean()) if ok.numel() else float("nan")
            out[f"{m}_std"] = float(ok.std(unbiased=False)) if ok.numel() else float("nan")
            out[f"{m}_skipped"] = int(col.numel() - ok.numel())
        return out

    def reliability(self) -> dict[str, torch.Tensor]:
        """Pooled per-bin reliability-diagram statistics (see :func:`reliability_statistics`)."""
        return reliability_statistics(self.pooled_histograms())

    @property
    def case_names(self) -> list[str]:
        return list(self._case_names)


class _SingleCalibrationMetric(CalibrationMetrics):
    """One calibration metric; ``aggregate()`` returns a scalar tensor (for MONAI's ignite handlers)."""

    name = ""

    def __init__(self, level: str = "case", **kwargs: Any) -> None:
        """
        Args:
            level: what ``aggregate()`` returns: ``"case"``, the mean over cases of the per-case values, or
                ``"pooled"``, the value of the histograms summed over every case.
            kwargs: the arguments of :class:`CalibrationMetrics` (``num_bins``, ``foreground``, ``softmax``,
                ``include_background``, ``background_index``, ``cece_classes``, ``prob_tol``, ...), except
                ``metric_names``, which is this class's one metric.

        Raises:
            ValueError: for a ``level`` other than ``"case"`` and ``"pooled"``, ``metric_names`` among ``kwargs``, or
                the argument errors of :class:`CalibrationMetrics`.
        """
        if "metric_names" in kwargs:
            raise ValueError(f"{type(self).__name__} computes {self.name!r} only and takes no metric_names; use CalibrationMetrics for several.")
        super().__init__(metric_names=(self.name,), **kwargs)
        if level not in ("case", "pooled"):
            raise ValueError(f"level must be 'case' or 'pooled', got {level!r}.")
        self.level = level

    def aggregate(self, level: str | None = None) -> torch.Tensor:  # type: ignore[override]
        return torch.tensor(super().aggregate(level or self.level)[self.name])

    def aggregate_all(self, level: str | None = None) -> dict[str, Any]:
        return CalibrationMetrics.aggregate(self, level or self.level)


class ExpectedCalibrationErrorMetric(_SingleCalibrationMetric):
    """Top-label ECE (Naeini et al., AAAI 2015; Guo et al., "On Calibration of Modern Neural Networks", ICML 2017)
    as a MONAI metric; arguments in ``__init__`` and :class:`CalibrationMetrics`."""

    name = "ece"


class ClasswiseCalibrationErrorMetric(_SingleCalibrationMetric):
    """Class-wise ECE (CECE; Kull et al., "Beyond temperature scaling: Obtaining well-calibrated multiclass
    probabilities with Dirichlet calibration", NeurIPS 2019) as a MONAI metric; arguments in ``__init__`` and
    :class:`CalibrationMetrics`."""

    name = "cece"


class BrierScoreMetric(_SingleCalibrationMetric):
    """Multi-class Brier score, mean over voxels of ``sum_k (p_k - y_k)^2`` (Brier, "Verification of forecasts
    expressed in terms of probability", Monthly Weather Review 1950); arguments in ``__init__`` and
    :class:`CalibrationMetrics`."""

    name = "brier"


class StratifiedBrierScoreMetric(_SingleCalibrationMetric):
    """Stratified Brier score (Brier+): the Brier score on ground-truth foreground voxels only (Wallace &
    Dahabreh, "Class probability estimates are unreliable for imbalanced data (and how to fix them)", ICDM 2012);
    arguments in ``__init__`` and :class:`CalibrationMetrics`."""

    name = "brier_plus"


class NegativeLogLikelihoodMetric(_SingleCalibrationMetric):
    """Negative log-likelihood, mean ``-log p_y`` over the selected voxels (the proper scoring rule of
    Gneiting & Raftery, JASA 2007, used for calibration by Guo et al., ICML 2017); arguments in ``__init__`` and
    :class:`CalibrationMetrics`."""

    name = "nll"
