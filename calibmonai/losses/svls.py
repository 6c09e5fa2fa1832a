"""Spatially-varying label smoothing (SVLS)."""

from __future__ import annotations

import itertools
import numbers

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from calibmonai.losses.fused import FusedTerms, fused_softmax_loss
from calibmonai.losses.utils import check_reduction, finite_float, integer_arg, reduce_voxel_loss, to_class_indices

__all__ = ["SpatiallyVaryingLabelSmoothingLoss", "svls_kernel", "svls_soft_labels"]


def svls_kernel(spatial_dims: int, sigma: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The SVLS kernel of Islam & Glocker (IPMI 2021): a 3x3 (2D) or 3x3x3 (3D) Gaussian whose centre weight is
    replaced by the sum of the other weights, then normalised to sum to 1 (so the centre weight is exactly 0.5).

    Args:
        spatial_dims: 2 or 3 (an int).
        sigma: standard deviation of the Gaussian, in voxels, a finite number > 0.
        dtype: floating dtype of the returned kernel (computed in float64, then cast).

    Raises:
        ValueError: for ``spatial_dims`` other than the integers 2 and 3, a ``sigma`` that is not a finite number
            > 0, or a ``dtype`` that is not floating point.
    """
    if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, numbers.Integral) or spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be the integer 2 or 3, got {spatial_dims!r}.")
    sigma = finite_float(sigma, "sigma", "svls_kernel")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}.")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"svls_kernel: dtype must be a floating torch dtype, got {dtype!r}.")
    kernel = torch.zeros((3,) * spatial_dims, dtype=torch.float64)
    for offset in itertools.product((-1, 0, 1), repeat=spatial_dims):
        r2 = sum(o * o for o in offset)
        kernel[tuple(o + 1 for o in offset)] = torch.exp(torch.tensor(-r2 / (2.0 * sigma**2), dtype=torch.float64))
    centre = (1,) * spatial_dims
    kernel[centre] = 0.0
    kernel[centre] = kernel.sum()
    return (kernel / kernel.sum()).to(dtype)


def svls_soft_labels(labels: torch.Tensor, num_classes: int, kernel: torch.Tensor) -> torch.Tensor:
    """Smooth class indices into SVLS soft labels (Islam & Glocker, IPMI 2021): depthwise convolution of the
    one-hot map with ``kernel``, replicate padding at the borders.

    Args:
        labels: integer class indices ``(B, *spatial)`` in ``[0, num_classes)``, 2 or 3 spatial dimensions.
        num_classes: number of classes ``C``, an integer >= 2.
        kernel: a floating ``3 x 3`` (2D) or ``3 x 3 x 3`` (3D) kernel of as many dimensions as ``labels`` has
            spatial ones, e.g. :func:`svls_kernel`.

    Returns:
        ``(B, C, *spatial)`` soft labels of the kernel's dtype.

    Raises:
        ValueError: for labels that are not an integer ``(B, *spatial)`` tensor of 2 or 3 spatial dimensions with
            values in ``[0, num_classes)``, a ``num_classes`` that is not an integer >= 2, or a kernel of another
            shape or a non-floating dtype.
    """
    num_classes = integer_arg(num_classes, "num_classes", 2, "svls_soft_labels")
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        what = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"svls_soft_labels: labels must be an integer tensor of class indices (B, *spatial), got {what}.")
    if labels.ndim not in (3, 4):
        raise ValueError(f"svls_soft_labels: labels must have shape (B, *spatial) with 2 or 3 spatial dimensions, got shape {tuple(labels.shape)}.")
    spatial_dims = labels.ndim - 1
    if not isinstance(kernel, torch.Tensor) or not kernel.is_floating_point() or tuple(kernel.shape) != (3,) * spatial_dims:
        what = (tuple(kernel.shape), kernel.dtype) if isinstance(kernel, torch.Tensor) else type(kernel).__name__
        raise ValueError(f"svls_soft_labels: kernel must be a floating {(3,) * spatial_dims} tensor for labels of shape {tuple(labels.shape)}, got {what}.")
    if labels.numel():
        lo, hi = (int(v) for v in torch.aminmax(labels))
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"svls_soft_labels: labels must lie in [0, {num_classes - 1}] for {num_classes} classes, got values in [{lo}, {hi}].")
    return _svls_soft_labels(labels.long(), num_classes, kernel)


def _svls_soft_labels(labels: torch.Tensor, num_classes: int, kernel: torch.Tensor) -> torch.Tensor:
    """:func:`svls_soft_labels` on checked arguments (int64 labels)."""
    spatial_dims = labels.ndim - 1
    onehot = F.one_hot(labels, num_classes).movedim(-1, 1).to(kernel.dtype)
    padded = F.pad(onehot, (1, 1) * spatial_dims, mode="replicate")
    weight = kernel.expand(num_classes, 1, *kernel.shape)
    conv = F.conv2d if spatial_dims == 2 else F.conv3d
    return conv(padded, weight, groups=num_classes)


class SpatiallyVaryingLabelSmoothingLoss(_Loss):
    """Spatially-varying label smoothing: cross-entropy against labels smoothed by the SVLS kernel.

    .. math::
        q = \\mathrm{onehot}(y) \\ast w, \\qquad \\mathcal{L} = -\\frac{1}{N}\\sum_i \\sum_k q_{ik} \\log p_{ik}

    where ``w`` is a 3x3(x3) Gaussian (``sigma``) whose centre weight is set to the sum of its other
    weights and which is normalised, so ``w_centre = 0.5``; the convolution is depthwise with replicate
    padding. Voxels inside a uniform region keep their hard label; boundary voxels get soft labels.

    Float32 CPU logits take the fused one-pass kernel of :mod:`calibmonai.losses.fused` (same value and
    gradient, tested against this implementation).

    Islam, M., Glocker, B. "Spatially Varying Label Smoothing: Capturing Uncertainty from Expert
    Annotations." IPMI 2021. https://arxiv.org/abs/2104.05788
    """

    def __init__(self, sigma: float = 1.0, reduction: str = "mean") -> None:
        """
        Args:
            sigma: standard deviation of the Gaussian kernel in voxels, a finite number > 0.
            reduction: ``"mean"`` over voxels, ``"sum"``, or ``"none"`` for a ``(B, *spatial)`` map.

        Raises:
            ValueError: for a ``sigma`` that is not a finite number > 0 (NaN, Inf and strings included), or an
                unknown reduction.
        """
        super().__init__(reduction=check_reduction(reduction))
        sigma = finite_float(sigma, "sigma", type(self).__name__)
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}.")
        self.sigma = sigma

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: logits ``(B, C, *spatial)`` with 2 or 3 spatial dimensions.
            target: ``(B, 1, *spatial)`` / ``(B, *spatial)`` class indices or ``(B, C, *spatial)`` one-hot.
        """
        fused = fused_softmax_loss(input, target, FusedTerms(svls=1.0, svls_sigma=self.sigma), self.reduction)
        if fused is not None:
            return fused
        idx = to_class_indices(input, target)
        spatial_dims = input.ndim - 2
        if spatial_dims not in (2, 3):
            raise ValueError(f"SVLS supports 2D and 3D inputs, got input shape {tuple(input.shape)}.")
        kernel = svls_kernel(spatial_dims, self.sigma, dtype=input.dtype).to(input.device)
        soft = _svls_soft_labels(idx, input.shape[1], kernel)
        voxel = -(soft * F.log_softmax(input, dim=1)).sum(dim=1)
        return reduce_voxel_loss(voxel, self.reduction)
