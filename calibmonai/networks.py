"""Backbone networks that MONAI provides with an interface the bundles cannot use as is.

Every backbone of ``bundles/backbones/`` is a MONAI network; two need a thin adapter so that the trainers, the
inferers (``SliceInferer`` / ``SlidingWindowInferer``) and the calibration losses receive one logits tensor of the
input's spatial size:

- :class:`UNetPlusPlus`: MONAI's ``BasicUNetPlusPlus`` returns a *list* of outputs (one per decoder depth with deep
  supervision, a one-element list without); the adapter returns the full-depth output ``x_0_4`` as a tensor.
- :class:`PaddedSwinUNETR`: MONAI's ``SwinUNETR`` accepts only inputs whose spatial sizes are multiples of
  ``patch_size ** 5`` (32); the adapter zero-pads the input to the next multiple and crops the logits back, so the
  2D bundle's 96 x 112 slices (and any sliding-window ROI) work unchanged.

``PaddedSwinUNETR`` subclasses MONAI's class (same parameter names: a MONAI checkpoint of the same configuration
loads as is); ``UNetPlusPlus`` holds MONAI's network as ``unetpp``, so that it stays TorchScript-scriptable.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNetPlusPlus, SwinUNETR
from torch import nn

__all__ = ["UNetPlusPlus", "PaddedSwinUNETR", "divisible_pad"]


def divisible_pad(x: torch.Tensor, k: int, value: float = 0.0) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad the spatial dimensions of ``x`` (``(B, C, *spatial)``) to the next multiples of ``k``.

    The padding is split evenly between both ends of each dimension (the extra voxel of an odd padding goes to
    the end), as MONAI's ``DivisiblePad(method="symmetric")``, and filled with ``value``.

    Args:
        x: a batch ``(B, C, *spatial)`` with at least one spatial dimension.
        k: the divisor, a positive integer.
        value: the fill value (0 is the background of ``NormalizeIntensityd(nonzero=True)`` images).

    Returns:
        the padded tensor and the index (a tuple of slices over every dimension) that crops a tensor of the padded
        size back to the original spatial size, e.g. ``logits[index]``.

    Raises:
        ValueError: when ``k`` is not a positive integer or ``x`` has no spatial dimension.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")
    if x.ndim < 3:
        raise ValueError(f"expected a batch (B, C, *spatial) with at least one spatial dimension, got shape {tuple(x.shape)}.")
    spatial = x.shape[2:]
    before = [((-s) % k) // 2 for s in spatial]
    after = [(-s) % k - b for s, b in zip(spatial, before)]
    index = (slice(None), slice(None), *(slice(b, b + s) for b, s in zip(before, spatial)))
    if not any(before) and not any(after):
        return x, index
    pads: list[int] = []
    for b, a in zip(reversed(before), reversed(after)):  # F.pad lists the last dimension first
        pads += [b, a]
    return F.pad(x, pads, mode="constant", value=value), index


class UNetPlusPlus(nn.Module):
    """UNet++ (MONAI ``BasicUNetPlusPlus``) returning one logits tensor, deep supervision off.

    Zhou, Z., Rahman Siddiquee, M. M., Tajbakhsh, N., Liang, J. "UNet++: A Nested U-Net Architecture for
    Medical Image Segmentation." DLMIA 2018. https://arxiv.org/abs/1807.10165

    MONAI's implementation returns a list of logits even without deep supervision. The bundles' trainers,
    inferers and calibration losses expect one tensor, so this module returns the output of the full-depth
    decoder path (``x_0_4``, the first element of MONAI's list). Deep supervision (the intermediate outputs
    ``x_0_1 .. x_0_3`` weighted in the loss) is not offered: the calibration losses act on the logits the
    network is evaluated with. The MONAI network is the ``unetpp`` attribute (parameter names ``unetpp.*``); the
    module is TorchScript-scriptable, as MONAI's.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: number of classes (logits channels).
        features: six integers, the encoder widths of the five levels and the width of the final decoder stage,
            as MONAI's ``BasicUNetPlusPlus``.
        kwargs: the other arguments of ``monai.networks.nets.BasicUNetPlusPlus`` (``act``, ``norm``, ``bias``,
            ``dropout``, ``upsample``).

    Raises:
        ValueError: when ``deep_supervision=True`` is passed.

    Input ``(B, in_channels, *spatial)``, any spatial size (MONAI pads the upsampled maps to their skip
    connections); output ``(B, out_channels, *spatial)``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        **kwargs,
    ) -> None:
        super().__init__()
        if kwargs.pop("deep_supervision", False):
            raise ValueError(
                "UNetPlusPlus returns the full-depth output only (deep_supervision=False); use "
                "monai.networks.nets.BasicUNetPlusPlus with a deep-supervision loss to train on every decoder depth."
            )
        self.unetpp = BasicUNetPlusPlus(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, features=features,
            deep_supervision=False, **kwargs,
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unetpp(x)[0]


class PaddedSwinUNETR(SwinUNETR):
    """Swin UNETR (MONAI ``SwinUNETR``) for any input size: zero-pads to a multiple of ``patch_size ** 5``.

    Hatamizadeh, A., Nath, V., Tang, Y., Yang, D., Roth, H., Xu, D. "Swin UNETR: Swin Transformers for
    Semantic Segmentation of Brain Tumors in MRI Images." BrainLes (MICCAI) 2021. https://arxiv.org/abs/2201.01266

    The Swin encoder halves the resolution five times (patch embedding and four patch mergings), so MONAI's
    ``SwinUNETR`` raises ``ValueError`` on a spatial size that is not a multiple of ``patch_size ** 5`` (32 with
    the default ``patch_size=2``). This class pads each spatial dimension symmetrically with zeros up to the next
    multiple (see :func:`divisible_pad`), runs ``SwinUNETR`` and crops the logits back to the input size, so a
    bundle's training patches and sliding-window ROIs keep their size (the 2D bundle's 96 x 112 slices run at
    96 x 128). Inputs that are already multiples are passed through unchanged, identical to ``SwinUNETR``.
    Zero is the background value of images normalised with ``NormalizeIntensityd(nonzero=True)``.

    Args:
        in_channels: input channels.
        out_channels: number of classes (logits channels).
        spatial_dims: 2 or 3.
        kwargs: the other arguments of ``monai.networks.nets.SwinUNETR`` (``feature_size``, ``depths``,
            ``num_heads``, ``patch_size``, ``use_v2``, ...).

    Input ``(B, in_channels, *spatial)``, any spatial size; output ``(B, out_channels, *spatial)``.
    Like MONAI's ``SwinUNETR`` it cannot be compiled by ``torch.jit.script``; ``torch.jit.trace`` at a fixed input
    size works (the padding is then fixed too).
    """

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 3, **kwargs) -> None:
        super().__init__(in_channels=in_channels, out_channels=out_channels, spatial_dims=spatial_dims, **kwargs)
        self.spatial_dims = spatial_dims
        self.divisor = int(self.patch_size) ** 5

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        if x_in.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"PaddedSwinUNETR(spatial_dims={self.spatial_dims}) expects input (B, C, *{self.spatial_dims} spatial "
                f"dims), got shape {tuple(x_in.shape)}."
            )
        padded, index = divisible_pad(x_in, self.divisor)
        return super().forward(padded)[index]
