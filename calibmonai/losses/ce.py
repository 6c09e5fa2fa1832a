"""Thin cross-entropy loss and the adapter that lets MONAI's own losses take any of our target formats."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from calibmonai.losses.fused import FusedTerms, fused_softmax_loss
from calibmonai.losses.utils import check_reduction, to_class_indices

__all__ = ["CrossEntropyLoss", "TargetFormatAdapter"]


class CrossEntropyLoss(_Loss):
    """Multi-class cross-entropy on logits, ``-log softmax(z)_y``, accepting index or one-hot targets.

    This is ``torch.nn.functional.cross_entropy`` behind the same target checks as every other
    calibmonai loss, so that ``ce`` is selected exactly like the calibration losses. Float32 CPU logits take the
    fused one-pass kernel of :mod:`calibmonai.losses.fused` (same value and gradient, tested against this).
    """

    def __init__(self, reduction: str = "mean") -> None:
        """
        Args:
            reduction: ``"mean"`` (over voxels), ``"sum"`` or ``"none"`` (a ``(B, *spatial)`` map).
        """
        super().__init__(reduction=check_reduction(reduction))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: logits ``(B, C, *spatial)``.
            target: ``(B, 1, *spatial)`` / ``(B, *spatial)`` class indices or ``(B, C, *spatial)`` one-hot.
        """
        fused = fused_softmax_loss(input, target, FusedTerms(ce=1.0), self.reduction)
        if fused is not None:
            return fused
        return F.cross_entropy(input, to_class_indices(input, target), reduction=self.reduction)


class TargetFormatAdapter(_Loss):
    """Runs a MONAI (or any) loss after the calibmonai target checks and conversion.

    MONAI's ``DiceCELoss``/``FocalLoss``/``DiceLoss`` with ``to_onehot_y=True`` want ``(B, 1, *spatial)``
    labels, ``NACLLoss`` wants ``(B, *spatial)``; this adapter accepts every format the calibmonai losses
    accept and hands the wrapped loss the one it expects.
    """

    def __init__(
        self,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        target_format: str = "channel",
        fused: FusedTerms | None = None,
        num_classes: int | None = None,
        spatial_dims: int | None = None,
    ) -> None:
        """
        Args:
            loss: the wrapped loss, called as ``loss(input, converted_target)``.
            target_format: ``"channel"`` for ``(B, 1, *spatial)`` indices, ``"indices"`` for ``(B, *spatial)``.
            fused: the same loss as terms of the fused CPU kernel (:mod:`calibmonai.losses.fused`), used for
                float32 CPU logits; the registry sets it only for the MONAI losses built with the settings the
                kernel reproduces (tested equal to MONAI's value and gradient).
            num_classes, spatial_dims: what the wrapped loss was built for (MONAI's ``NACLLoss`` takes both), checked
                on every input whichever path computes it (``ValueError`` naming the shape).
        """
        super().__init__()
        if target_format not in ("channel", "indices"):
            raise ValueError(f"target_format must be 'channel' or 'indices', got {target_format!r}.")
        self.loss = loss
        self.target_format = target_format
        self.fused = fused
        self.num_classes, self.spatial_dims = num_classes, spatial_dims

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if (self.num_classes is not None or self.spatial_dims is not None) and input.ndim >= 3 and input.shape[1] >= 2:
            # (malformed inputs get the common checks' messages below)
            classes, dims = input.shape[1], input.ndim - 2
            if (self.num_classes is not None and classes != self.num_classes) or (self.spatial_dims is not None and dims != self.spatial_dims):
                raise ValueError(
                    f"this loss was built for {self.num_classes} classes and {self.spatial_dims}D inputs "
                    f"(num_classes, spatial_dims), got logits of shape {tuple(input.shape)} ({classes} classes, {dims}D)"
                    + ("; logits are (B, C, *spatial): is the batch dimension missing?" if input.shape[0] == self.num_classes and classes != self.num_classes and dims + 1 == self.spatial_dims else ".")
                )
        if self.fused is not None:
            out = fused_softmax_loss(input, target, self.fused, "mean")
            if out is not None:
                return out
        idx = to_class_indices(input, target)
        return self.loss(input, idx.unsqueeze(1) if self.target_format == "channel" else idx)

    def extra_repr(self) -> str:
        return f"target_format={self.target_format!r}"
