"""Margin-based Label Smoothing (MbLS)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch.nn.modules.loss import _Loss

from calibmonai.losses.fused import FusedTerms, fused_softmax_loss
from calibmonai.losses.utils import check_logits, check_reduction, finite_float, nll_map, reduce_voxel_loss, to_class_indices

__all__ = ["MarginLabelSmoothingLoss", "margin_penalty"]


def margin_penalty(input: torch.Tensor, margin: float, penalty: str = "l1") -> torch.Tensor:
    """Per-voxel MbLS penalty ``mean_k ReLU(max_j z_j - z_k - m)`` (``l1``) or its square (``l2``), the term that
    :class:`MarginLabelSmoothingLoss` adds to the cross-entropy (Liu et al., "The Devil is in the Margin:
    Margin-based Label Smoothing for Network Calibration", CVPR 2022).

    Args:
        input: logits ``(B, C, *spatial)``, finite, floating point, ``C >= 2``.
        margin: the margin ``m`` (same units as the logits), a finite number >= 0.
        penalty: ``"l1"`` for the hinge, ``"l2"`` for the one-sided squared hinge ``ReLU(d - m)**2``.

    Returns:
        a ``(B, *spatial)`` map, the mean over classes of the penalty.

    Raises:
        ValueError: for logits that are not a finite floating ``(B, C, *spatial)`` tensor of ``C >= 2`` classes, a
            margin that is not a finite number >= 0, or a penalty other than ``"l1"`` and ``"l2"``.
    """
    check_logits(input)
    margin = finite_float(margin, "margin", "margin_penalty")
    if margin < 0:
        raise ValueError(f"margin_penalty: margin must be >= 0, got {margin}.")
    if penalty not in ("l1", "l2"):
        raise ValueError(f"margin_penalty: penalty must be 'l1' or 'l2', got {penalty!r}.")
    return _margin_penalty(input, margin, penalty)


def _margin_penalty(input: torch.Tensor, margin: float, penalty: str) -> torch.Tensor:
    """:func:`margin_penalty` on arguments the caller has checked."""
    diff = input.amax(dim=1, keepdim=True) - input
    hinge = F.relu(diff - margin)
    if penalty == "l2":
        hinge = hinge * hinge
    return hinge.mean(dim=1)


class MarginLabelSmoothingLoss(_Loss):
    """Margin-based Label Smoothing (MbLS) for segmentation.

    .. math::
        \\mathcal{L} = \\mathrm{CE}(z, y) + \\alpha \\, \\frac{1}{N K}\\sum_{i=1}^{N}\\sum_{k=1}^{K}
        \\max\\big(0, \\max_j z_{ij} - z_{ik} - m\\big)

    with ``d_k = max_j z_j - z_k`` the distance of each logit from the *largest* logit (not from the
    ground-truth logit), averaged over every voxel and class.

    Liu, B., Ben Ayed, I., Galdran, A., Dolz, J. "The Devil is in the Margin: Margin-based Label Smoothing
    for Network Calibration." CVPR 2022. https://arxiv.org/abs/2111.15430 ; and the segmentation study
    Murugesan, B., Liu, B., Galdran, A., Ben Ayed, I., Dolz, J. "Calibrating Segmentation Networks with
    Margin-based Label Smoothing." Medical Image Analysis 2023. https://arxiv.org/abs/2209.09641

    ``penalty="l2"`` uses the one-sided squared hinge ``ReLU(d - m)**2``. The public reference code
    squares the difference *before* the ReLU (``ReLU((d - m)**2)``), which also penalises logits that lie
    *inside* the margin, i.e. a two-sided penalty pulling every distance towards ``m``; calibmonai keeps the
    one-sided form that matches the inequality constraint of the paper.

    ``base="ce_dice"`` adds MONAI's ``DiceCELoss`` in place of the CE term (the MbLS + Dice variant of the
    segmentation paper, section 5.2.9); this variant supports ``reduction="mean"`` only. Its Dice term leaves the
    background (class 0) out by default, as the reference code's MbLS + Dice loss (``LogitMarginDICEL1``,
    https://github.com/Bala93/MarginLoss) does; the cross-entropy and the margin penalty still run over every
    class. ``dice_include_background=True`` keeps it in, as the reference's plain CE + Dice baseline
    (``get_loss("ce_dice")``) does.

    Float32 CPU logits take the fused one-pass kernel of :mod:`calibmonai.losses.fused` (same value and
    gradient, tested against this implementation).
    """

    def __init__(
        self,
        margin: float = 10.0,
        alpha: float = 0.1,
        penalty: str = "l1",
        base: str = "ce",
        reduction: str = "mean",
        dice_include_background: bool = False,
    ) -> None:
        """
        Args:
            margin: margin ``m`` on the logit distances, >= 0. Defaults to 10 (the paper's choice).
            alpha: weight ``lambda`` of the penalty, >= 0. Defaults to 0.1.
            penalty: ``"l1"`` (hinge) or ``"l2"`` (one-sided squared hinge).
            base: ``"ce"`` or ``"ce_dice"`` (MONAI ``DiceCELoss`` with softmax and one-hot labels).
            reduction: ``"mean"`` over voxels, ``"sum"``, or ``"none"`` for a ``(B, *spatial)`` map.
            dice_include_background: with ``base="ce_dice"``, whether class 0 enters the Dice term's mean over
                classes. Defaults to False (the reference MbLS + Dice code); ignored with ``base="ce"``.

        Raises:
            ValueError: for a margin or weight that is not a finite number >= 0 (NaN, Inf and strings included), or an
                unknown penalty, base or reduction.
        """
        super().__init__(reduction=check_reduction(reduction))
        margin = finite_float(margin, "margin", type(self).__name__)
        alpha = finite_float(alpha, "alpha", type(self).__name__)
        if margin < 0 or alpha < 0:
            raise ValueError(f"margin and alpha must be >= 0, got margin={margin}, alpha={alpha}.")
        if penalty not in ("l1", "l2"):
            raise ValueError(f"penalty must be 'l1' or 'l2', got {penalty!r}.")
        if base not in ("ce", "ce_dice"):
            raise ValueError(f"base must be 'ce' or 'ce_dice', got {base!r}.")
        if base == "ce_dice" and reduction != "mean":
            raise ValueError(f"base='ce_dice' supports reduction='mean' only, got {reduction!r}.")
        self.margin = margin
        self.alpha = alpha
        self.penalty = penalty
        self.base = base
        self.dice_include_background = bool(dice_include_background)
        self.dice_ce = (
            DiceCELoss(to_onehot_y=True, softmax=True, include_background=self.dice_include_background) if base == "ce_dice" else None
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: logits ``(B, C, *spatial)``, 2D or 3D.
            target: ``(B, 1, *spatial)`` / ``(B, *spatial)`` class indices or ``(B, C, *spatial)`` one-hot.
        """
        terms = FusedTerms(
            ce=1.0,
            dice=1.0 if self.dice_ce is not None else 0.0,
            dice_background=self.dice_include_background,
            hinge=self.alpha,
            margin=self.margin,
            hinge_sq=self.penalty == "l2",
        )
        fused = fused_softmax_loss(input, target, terms, self.reduction)
        if fused is not None:
            return fused
        idx = to_class_indices(input, target)
        pen = _margin_penalty(input, self.margin, self.penalty)
        if self.dice_ce is not None:
            return self.dice_ce(input, idx.unsqueeze(1)) + self.alpha * pen.mean()
        voxel = nll_map(F.log_softmax(input, dim=1), idx) + self.alpha * pen
        return reduce_voxel_loss(voxel, self.reduction)
