"""Fast paths of the calibration losses: one fused pass for value and gradient — a numba kernel for float32 CPU
logits (``_fused_kernel``) and a Triton kernel for CUDA logits where Triton is installed (``_triton_kernel``).

The loss classes call :func:`fused_softmax_loss` with ``reduction`` ``"mean"`` or ``"sum"``; everything else
(float64, ``reduction="none"``, a custom base loss, CUDA without Triton) runs the torch implementation, which stays the reference the fast path is tested against. The fast path's gradient is
computed in the forward pass, so it supports one backward pass per forward (no ``retain_graph`` re-use and no
second-order gradients): switch it off with :func:`set_fused_enabled` or ``CALIBMONAI_FUSED=0`` for that.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.autograd.function import once_differentiable

from calibmonai._vector_math import announce_compile, kernel_threads
from calibmonai.losses._fused_kernel import HAVE_NUMBA
from calibmonai.losses.utils import check_logits, to_class_indices

__all__ = ["FusedTerms", "fused_softmax_loss", "fused_enabled", "set_fused_enabled", "fused_disabled"]

_STATE = {"enabled": os.environ.get("CALIBMONAI_FUSED", "1") != "0"}


def set_fused_enabled(enabled: bool) -> None:
    """Switch the fused CPU path of the losses on or off for this process."""
    _STATE["enabled"] = bool(enabled)


def fused_enabled() -> bool:
    return _STATE["enabled"] and HAVE_NUMBA


@contextlib.contextmanager
def fused_disabled() -> Iterator[None]:
    """Run the torch reference implementation of every loss inside the ``with`` block."""
    before = _STATE["enabled"]
    _STATE["enabled"] = False
    try:
        yield
    finally:
        _STATE["enabled"] = before


@dataclass(frozen=True)
class FusedTerms:
    """Weights of the terms of a fused loss (each 0 to leave it out).

    Attributes:
        ce: cross-entropy, mean (or sum) over voxels.
        uniform: cross-entropy against the uniform distribution, ``mean_k(-log p_k)``.
        neg_entropy: ``sum_k p_k log p_k`` averaged over voxels *and classes* (ECP's scale).
        hinge: MbLS ``ReLU(max_j z_j - z_k - margin)`` (``hinge_sq``: squared) averaged over voxels and classes.
        meep: MEEP term weight; ``meep_mode`` ``"entropy"`` (minus entropy) or ``"kl"``, mean over misclassified
            voxels, probabilities clamped at ``eps``.
        dice: MONAI ``DiceLoss(softmax=True, to_onehot_y=True)`` with its default smoothing, mean over ``(B, C)``;
            ``dice_background=False`` leaves class 0 out of that mean (``include_background=False``).
        svls: cross-entropy against the SVLS soft labels of Gaussian width ``svls_sigma`` (2D and 3D only).
        nacl: MONAI ``NACLLoss``'s penalty ``mean |meanfilter3(onehot) - z|`` over voxels and classes, on the
            logits, zero padding (2D and 3D only).
        focal: MONAI ``FocalLoss(use_softmax=True)``, ``-(1 - p_y)^gamma log p_y`` averaged over voxels *and
            classes*; ``focal_gamma`` an integer 0..4 (others run MONAI's implementation).
    """

    ce: float = 0.0
    uniform: float = 0.0
    neg_entropy: float = 0.0
    hinge: float = 0.0
    margin: float = 0.0
    hinge_sq: bool = False
    meep: float = 0.0
    meep_mode: str = "entropy"
    eps: float = 1e-8
    dice: float = 0.0
    dice_background: bool = True
    svls: float = 0.0
    svls_sigma: float = 1.0
    nacl: float = 0.0
    focal: float = 0.0
    focal_gamma: float = 2.0

    def __post_init__(self) -> None:
        """Raise ``ValueError`` for a weight or setting the kernels cannot take (named, with its value)."""
        for name in _TERM_NUMBERS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"FusedTerms: {name} must be a finite number, got {value!r}.")
        if self.meep_mode not in ("entropy", "kl"):
            raise ValueError(f"FusedTerms: meep_mode must be 'entropy' or 'kl', got {self.meep_mode!r}.")
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"FusedTerms: eps must lie in (0, 1), got {self.eps}.")
        if self.svls_sigma <= 0 or self.focal_gamma < 0 or self.margin < 0:
            raise ValueError(
                f"FusedTerms: svls_sigma must be > 0, focal_gamma and margin >= 0, got svls_sigma={self.svls_sigma}, "
                f"focal_gamma={self.focal_gamma}, margin={self.margin}."
            )


#: the numeric fields of :class:`FusedTerms`
_TERM_NUMBERS = ("ce", "uniform", "neg_entropy", "hinge", "margin", "meep", "eps", "dice", "svls", "svls_sigma", "nacl", "focal", "focal_gamma")


def _can_use(input: torch.Tensor, target: torch.Tensor) -> bool:
    return (
        fused_enabled()
        and isinstance(input, torch.Tensor)
        and isinstance(target, torch.Tensor)
        and input.device.type == "cpu"
        and input.dtype == torch.float32
        and input.ndim >= 3
        and target.device.type == "cpu"
    )


def _labels(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(B, S)`` integer labels, unchecked for range (the kernel counts out-of-range labels)."""
    b = input.shape[0]
    spatial = tuple(input.shape[2:])
    tshape = tuple(target.shape)
    integer = not target.is_floating_point() and target.dtype != torch.bool and not target.is_complex()
    if integer and tshape in ((b, 1) + spatial, (b,) + spatial):  # (b, c) + spatial is one-hot: c >= 2
        return target.reshape(b, -1).long()  # one kernel specialisation (int64) instead of one per dtype
    return to_class_indices(input, target, check_finite=False).reshape(b, -1)  # one-hot, float indices, bad shapes


def take_stored_grad(ctx: Any) -> torch.Tensor:
    """The gradient a fused forward pass stored on ``ctx`` (handed on once: a second backward raises)."""
    grad = ctx.grad
    if grad is None:
        raise RuntimeError(
            "the fused calibmonai loss supports one backward pass per forward; for retain_graph re-use, "
            "run the torch implementation (calibmonai.losses.set_fused_enabled(False) or CALIBMONAI_FUSED=0)."
        )
    ctx.grad = None
    return grad


class _PrecomputedGradient(torch.autograd.Function):
    """Returns a loss value whose gradient with respect to ``input`` was computed in the forward pass."""

    @staticmethod
    def forward(ctx, input: torch.Tensor, grad: torch.Tensor, value: float) -> torch.Tensor:  # type: ignore[override]
        ctx.grad = grad
        return torch.tensor(value, dtype=input.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        grad = take_stored_grad(ctx)
        scale = float(grad_output)
        return (grad if scale == 1.0 else grad * scale), None, None


def _dice(sums: torch.Tensor, weight: float, include_background: bool = True) -> tuple[float, torch.Tensor]:
    """MONAI ``DiceLoss`` value (smooth 1e-5, mean over batch and classes, class 0 left out unless
    ``include_background``) and ``dDice/dp`` for y=0 / y=1 (0 for a class left out)."""
    inter, psum, ysum = sums[..., 0], sums[..., 1], sums[..., 2]
    num = 2.0 * inter + 1e-5
    den = psum + ysum + 1e-5
    keep = torch.ones(inter.shape[1], dtype=sums.dtype)
    if not include_background:
        keep[0] = 0.0
    n_terms = inter.shape[0] * float(keep.sum())
    value = float(((1.0 - num / den) * keep).sum()) / n_terms * weight
    scale = (weight / n_terms) * keep.view(1, -1, 1)
    g = torch.stack([num / den**2, (num - 2.0 * den) / den**2], dim=-1) * scale
    return value, g


def _bad_input(input: torch.Tensor, target: torch.Tensor) -> None:
    """The kernel saw an out-of-range label or a non-finite logit sum: raise the reference's ``ValueError``.
    Returns ``None`` (run the torch path) for a false alarm: finite logits whose block sum overflows."""
    to_class_indices(input, target)
    return None


def fused_softmax_loss(
    input: torch.Tensor, target: torch.Tensor, terms: FusedTerms, reduction: str = "mean"
) -> torch.Tensor | None:
    """The loss ``terms`` of softmax(``input``) against ``target`` in one fused CPU pass, or ``None`` when the
    fast path does not apply (the caller then runs its torch implementation).

    Args:
        input: logits ``(B, C, *spatial)``.
        target: class indices ``(B, 1, *spatial)`` / ``(B, *spatial)`` or one-hot ``(B, C, *spatial)``.
        terms: the weights of the terms.
        reduction: ``"mean"`` or ``"sum"`` over voxels (MEEP and Dice terms are means in either case).

    Raises:
        ValueError: for bad logits or targets, with the same messages as the torch implementation.
    """
    if not isinstance(terms, FusedTerms):
        raise ValueError(f"terms must be a FusedTerms, got {type(terms).__name__}.")
    if _STATE["enabled"] and isinstance(input, torch.Tensor) and (input.is_cuda or _STATE.get("triton_on_cpu", False)):
        from calibmonai._triton import run_or_fall_back
        from calibmonai.losses._triton_kernel import triton_softmax_loss  # CUDA: the fused Triton kernels

        # None where they do not apply, or after a failure of the kernel on this GPU: then the torch implementation
        return run_or_fall_back("the fused losses", triton_softmax_loss, input, target, terms, reduction)
    if reduction not in ("mean", "sum") or not _can_use(input, target):
        return None
    from calibmonai.losses import _fused_kernel as K

    check_logits(input, check_finite=False)
    y = _labels(input, target).as_subclass(torch.Tensor)  # a MONAI MetaTensor becomes a plain tensor
    b, c = input.shape[:2]
    z = input.detach().as_subclass(torch.Tensor).contiguous().view(b, c, -1)
    n = z.shape[0] * z.shape[2]
    if n == 0 or ((terms.svls or terms.nacl) and input.ndim not in (4, 5)):
        return None
    if terms.focal and terms.focal_gamma not in (0, 1, 2, 3, 4):
        return None
    yn = y.contiguous().numpy()
    zn = z.numpy()
    need_grad = input.requires_grad and torch.is_grad_enabled()
    grad = torch.empty_like(z) if need_grad else torch.empty((1, 1, 1))

    n_threads = kernel_threads()
    announce_compile([K.loss_kernel, K.dice_prepass], "the fused losses")

    c_meep, dice_value, dice_g = 0.0, 0.0, torch.zeros((b, c, 2), dtype=torch.float64)
    if terms.meep or terms.dice:
        sums, stats = K.dice_prepass(zn, yn, n_threads)
        if stats[1] > 0 or not math.isfinite(stats[2]):
            return _bad_input(input, target)
        wrong = float(stats[0])
        c_meep = terms.meep / wrong if wrong > 0 else 0.0
        if terms.dice:
            dice_value, dice_g = _dice(torch.from_numpy(sums), terms.dice, terms.dice_background)
    soft = grad if need_grad else torch.empty((1, 1, 1))
    if terms.svls or terms.nacl:
        if not need_grad:
            soft = torch.empty_like(z)
        y4 = y.view((b, 1) + tuple(input.shape[2:])) if input.ndim == 4 else y.view((b,) + tuple(input.shape[2:]))
        if terms.svls:
            g1 = math.exp(-1.0 / (2.0 * terms.svls_sigma**2))
            K.svls_targets(y4.numpy(), soft.numpy(), g1, input.ndim == 5, n_threads)
        else:
            K.neighbour_targets(y4.numpy(), soft.numpy(), 1.0, input.ndim == 5, False, 0.0, 3.0 ** (2 - input.ndim), n_threads)
    per_voxel = 1.0 / n if reduction == "mean" else 1.0
    value, stats = K.loss_kernel(
        zn,
        yn,
        grad.numpy(),
        need_grad,
        n_threads,
        terms.ce * per_voxel,
        terms.uniform * per_voxel,
        terms.neg_entropy * per_voxel / c,
        terms.hinge * per_voxel / c,
        terms.margin,
        terms.hinge_sq,
        c_meep,
        {"entropy": 1, "kl": 2}[terms.meep_mode] if terms.meep else 0,
        math.log(terms.eps),
        dice_g.numpy(),
        bool(terms.dice),
        terms.svls * per_voxel,
        soft.numpy(),
        terms.nacl * per_voxel / c,
        terms.focal * per_voxel / c,
        int(terms.focal_gamma),
    )
    if stats[0] > 0 or not math.isfinite(stats[1]):
        return _bad_input(input, target)
    value = float(value) + dice_value
    if not need_grad:
        return torch.tensor(value, dtype=input.dtype)
    return _PrecomputedGradient.apply(input, grad.view_as(input), value)
