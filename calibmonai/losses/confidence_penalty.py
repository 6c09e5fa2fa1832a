"""Explicit confidence penalty (ECP) and label smoothing (LS)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from calibmonai.losses.fused import FusedTerms, fused_softmax_loss
from calibmonai.losses.utils import check_logits, check_reduction, finite_float, nll_map, reduce_voxel_loss, to_class_indices

__all__ = ["ConfidencePenaltyLoss", "LabelSmoothingLoss", "mean_class_entropy", "uniform_cross_entropy"]


def mean_class_entropy(input: torch.Tensor) -> torch.Tensor:
    """Per-voxel entropy of ``softmax(input)`` divided by the number of classes, ``-(1/K) sum_k p_k log p_k``: the
    term :class:`ConfidencePenaltyLoss` rewards (Pereyra et al., "Regularizing Neural Networks by Penalizing
    Confident Output Distributions", ICLR workshop 2017; on the per-class scale of the MbLS segmentation study).

    Args:
        input: logits ``(B, K, *spatial)``, finite, floating point, ``K >= 2``.

    Returns:
        a ``(B, *spatial)`` map, between 0 (a one-hot prediction) and ``log(K) / K`` (the uniform one).

    Raises:
        ValueError: for logits that are not a finite floating ``(B, K, *spatial)`` tensor with ``K >= 2``.
    """
    check_logits(input)
    return _mean_class_entropy(F.log_softmax(input, dim=1))


def _mean_class_entropy(log_p: torch.Tensor) -> torch.Tensor:
    return -(log_p.exp() * log_p).mean(dim=1)


def uniform_cross_entropy(input: torch.Tensor) -> torch.Tensor:
    """Per-voxel cross-entropy of ``softmax(input)`` against the uniform distribution, ``-(1/K) sum_k log p_k``: the
    term that label smoothing mixes into the cross-entropy with weight ``alpha`` (Szegedy et al., "Rethinking the
    Inception Architecture for Computer Vision", CVPR 2016), as :class:`LabelSmoothingLoss` does.

    Args:
        input: logits ``(B, K, *spatial)``, finite, floating point, ``K >= 2``.

    Returns:
        a ``(B, *spatial)`` map, at least ``log(K)`` (reached by the uniform prediction).

    Raises:
        ValueError: for logits that are not a finite floating ``(B, K, *spatial)`` tensor with ``K >= 2``.
    """
    check_logits(input)
    return _uniform_cross_entropy(F.log_softmax(input, dim=1))


def _uniform_cross_entropy(log_p: torch.Tensor) -> torch.Tensor:
    return -log_p.mean(dim=1)


class ConfidencePenaltyLoss(_Loss):
    """Explicit confidence penalty: cross-entropy minus ``beta`` times the mean entropy term.

    .. math::
        \\mathcal{L} = \\mathrm{CE}(z, y) - \\beta \\, \\frac{1}{N K} \\sum_{i}\\sum_{k} -p_{ik}\\log p_{ik}

    (mean over every voxel and class, so ``beta`` is on the scale used by the MbLS segmentation study).

    Pereyra, G., Tucker, G., Chorowski, J., Kaiser, L., Hinton, G. "Regularizing Neural Networks by
    Penalizing Confident Output Distributions." ICLR workshop 2017. https://arxiv.org/abs/1701.06548

    Float32 CPU logits take the fused one-pass kernel of :mod:`calibmonai.losses.fused` (same value and
    gradient, tested against this implementation).
    """

    def __init__(self, beta: float = 0.1, reduction: str = "mean") -> None:
        """
        Args:
            beta: weight of the entropy reward, a finite number >= 0. ``beta=0`` is plain cross-entropy.
            reduction: ``"mean"`` over voxels, ``"sum"``, or ``"none"`` for a ``(B, *spatial)`` map.

        Raises:
            ValueError: for a ``beta`` that is not a finite number >= 0 (a string such as ``"0.1"`` included), or an
                unknown reduction.
        """
        super().__init__(reduction=check_reduction(reduction))
        beta = finite_float(beta, "beta", type(self).__name__)
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}.")
        self.beta = beta

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: logits ``(B, C, *spatial)``.
            target: ``(B, 1, *spatial)`` / ``(B, *spatial)`` class indices or ``(B, C, *spatial)`` one-hot.
        """
        fused = fused_softmax_loss(input, target, FusedTerms(ce=1.0, neg_entropy=self.beta), self.reduction)
        if fused is not None:
            return fused
        idx = to_class_indices(input, target)
        log_p = F.log_softmax(input, dim=1)
        return reduce_voxel_loss(nll_map(log_p, idx) - self.beta * _mean_class_entropy(log_p), self.reduction)


class LabelSmoothingLoss(_Loss):
    """Label smoothing: cross-entropy against ``(1 - alpha) * onehot + alpha / K``.

    .. math::
        \\mathcal{L} = (1 - \\alpha)\\,(-\\log p_{y}) + \\alpha \\, \\frac{1}{K}\\sum_k (-\\log p_k)

    Szegedy, C., et al. "Rethinking the Inception Architecture for Computer Vision." CVPR 2016.
    https://arxiv.org/abs/1512.00567

    Float32 CPU logits take the fused one-pass kernel of :mod:`calibmonai.losses.fused` (same value and
    gradient, tested against this implementation).
    """

    def __init__(self, alpha: float = 0.1, reduction: str = "mean") -> None:
        """
        Args:
            alpha: smoothing factor in ``[0, 1]``. ``alpha=0`` is plain cross-entropy.
            reduction: ``"mean"`` over voxels, ``"sum"``, or ``"none"`` for a ``(B, *spatial)`` map.

        Raises:
            ValueError: for an ``alpha`` that is not a number in ``[0, 1]`` (NaN and strings included), or an
                unknown reduction.
        """
        super().__init__(reduction=check_reduction(reduction))
        alpha = finite_float(alpha, "alpha", type(self).__name__)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}.")
        self.alpha = alpha

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: logits ``(B, C, *spatial)``.
            target: ``(B, 1, *spatial)`` / ``(B, *spatial)`` class indices or ``(B, C, *spatial)`` one-hot.
        """
        fused = fused_softmax_loss(input, target, FusedTerms(ce=1.0 - self.alpha, uniform=self.alpha), self.reduction)
        if fused is not None:
            return fused
        idx = to_class_indices(input, target)
        log_p = F.log_softmax(input, dim=1)
        voxel = (1.0 - self.alpha) * nll_map(log_p, idx) + self.alpha * _uniform_cross_entropy(log_p)
        return reduce_voxel_loss(voxel, self.reduction)
