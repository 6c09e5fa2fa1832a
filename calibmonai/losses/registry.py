"""One entry per training method, so that every loss is selected the same way (``get_loss("mbls")``)."""

from __future__ import annotations

import difflib
import inspect
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from monai.losses import DiceCELoss, DiceLoss, FocalLoss, NACLLoss
from torch.nn.modules.loss import _Loss

from calibmonai.losses.ce import CrossEntropyLoss, TargetFormatAdapter
from calibmonai.losses.fused import FusedTerms
from calibmonai.losses.confidence_penalty import ConfidencePenaltyLoss, LabelSmoothingLoss
from calibmonai.losses.mbls import MarginLabelSmoothingLoss
from calibmonai.losses.meep import ErroneousEntropyLoss
from calibmonai.losses.svls import SpatiallyVaryingLabelSmoothingLoss
from calibmonai.losses.utils import finite_float, integer_arg

__all__ = ["METHODS", "Method", "get_loss", "loss_parameters"]


@dataclass(frozen=True)
class Method:
    """A training method: how to build its loss, its default hyper-parameters and what it is."""

    build: Callable[..., _Loss]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    needs_geometry: bool = False  # whether the factory needs num_classes and spatial_dims


# MONAI's losses run as they are; with the settings below the fused CPU kernel reproduces them (value and
# gradient, tested against MONAI's own), so the adapter takes it for float32 CPU logits.


#: float hyper-parameters of the wrapped MONAI losses that reach them through ``**kw``; each must be a finite number
#: (MONAI takes NaN/Inf/strings and returns a NaN loss or a TypeError deep inside)
_MONAI_FLOATS = ("smooth_nr", "smooth_dr", "lambda_dice", "lambda_ce", "label_smoothing")


def _check_monai_floats(method: str, kw: dict[str, Any]) -> dict[str, Any]:
    """``kw`` with the float hyper-parameters of :data:`_MONAI_FLOATS` checked finite (``ValueError`` naming them)."""
    return {k: finite_float(v, k, method) if k in _MONAI_FLOATS else v for k, v in kw.items()}


def _dice_ce(**kw: Any) -> _Loss:
    kw = _check_monai_floats("ce_dice", kw)
    fused = FusedTerms(ce=1.0, dice=1.0) if not kw else None
    return TargetFormatAdapter(DiceCELoss(to_onehot_y=True, softmax=True, **kw), "channel", fused)


def _dice(**kw: Any) -> _Loss:
    # the Dice base of calibmonai's MEEP (``meep_dice_*``): Dice vs MEEP-Dice differ only by the regulariser
    kw = _check_monai_floats("dice", kw)
    fused = FusedTerms(dice=1.0) if not kw else None
    return TargetFormatAdapter(DiceLoss(to_onehot_y=True, softmax=True, **kw), "channel", fused)


def _focal(gamma: float = 2.0, **kw: Any) -> _Loss:
    # MONAI's FocalLoss "mean" runs over classes as well as voxels: it is 1/C of the per-voxel focal sum.
    gamma = finite_float(gamma, "gamma", "focal")
    if gamma < 0:
        raise ValueError(f"focal: gamma must be a number >= 0 (0 is cross-entropy), got {gamma!r}.")
    alpha = kw.get("alpha")  # MONAI's class weight: a number in [0, 1], a sequence of per-class weights, or None
    if alpha is not None and (isinstance(alpha, (str, bytes)) or np.ndim(alpha) == 0):  # per-class weights (list, array, tensor) are MONAI's
        kw["alpha"] = finite_float(alpha, "alpha", "focal")
        if not 0.0 <= kw["alpha"] <= 1.0:
            raise ValueError(f"focal: alpha (MONAI FocalLoss's weight of the foreground classes) must lie in [0, 1], got {alpha!r}.")
    fused = FusedTerms(focal=1.0, focal_gamma=gamma) if not kw and gamma in (0, 1, 2, 3, 4) else None
    return TargetFormatAdapter(FocalLoss(to_onehot_y=True, use_softmax=True, gamma=gamma, **kw), "channel", fused)


def _nacl(num_classes: int, spatial_dims: int, alpha: float = 0.1, **kw: Any) -> _Loss:
    alpha = finite_float(alpha, "alpha", "nacl")
    if alpha < 0:
        raise ValueError(f"nacl: alpha must be >= 0, got {alpha}.")
    if "sigma" in kw:  # the width of NACLLoss's Gaussian kernel (kernel_ops="gaussian")
        kw["sigma"] = finite_float(kw["sigma"], "sigma", "nacl")
        if kw["sigma"] <= 0:
            raise ValueError(f"nacl: sigma must be > 0, got {kw['sigma']}.")
    fused = FusedTerms(ce=1.0, nacl=alpha) if not kw else None
    loss = NACLLoss(classes=num_classes, dim=spatial_dims, alpha=alpha, **kw)
    return TargetFormatAdapter(loss, "indices", fused, num_classes=num_classes, spatial_dims=spatial_dims)


METHODS: dict[str, Method] = {
    "ce": Method(CrossEntropyLoss, {}, "cross-entropy"),
    "ce_dice": Method(_dice_ce, {}, "cross-entropy + Dice (MONAI DiceCELoss)"),
    "dice": Method(_dice, {}, "soft Dice (MONAI DiceLoss, softmax, every class; MEEP's Dice baseline)"),
    "focal": Method(_focal, {"gamma": 3.0}, "focal loss (MONAI FocalLoss, softmax; mean over voxels and classes)"),
    "ecp": Method(ConfidencePenaltyLoss, {"beta": 0.1}, "explicit confidence penalty (Pereyra et al. 2017)"),
    "ls": Method(LabelSmoothingLoss, {"alpha": 0.1}, "label smoothing (Szegedy et al. 2016)"),
    "svls": Method(SpatiallyVaryingLabelSmoothingLoss, {"sigma": 1.0}, "spatially-varying label smoothing (Islam & Glocker 2021)"),
    "mbls": Method(MarginLabelSmoothingLoss, {"margin": 10.0, "alpha": 0.1, "penalty": "l1"}, "margin-based label smoothing, L1 hinge (Liu et al. 2022)"),
    "mbls_l2": Method(MarginLabelSmoothingLoss, {"margin": 10.0, "alpha": 0.1, "penalty": "l2"}, "margin-based label smoothing, one-sided squared hinge"),
    "mbls_dice": Method(MarginLabelSmoothingLoss, {"margin": 10.0, "alpha": 0.1, "penalty": "l1", "base": "ce_dice", "dice_include_background": False}, "MbLS on top of CE + Dice without background in the Dice term, as the reference code (Murugesan et al. 2023, sec. 5.2.9)"),
    "meep_ce_entropy": Method(ErroneousEntropyLoss, {"base_loss": "ce", "lam": 0.3, "regularizer": "entropy"}, "MEEP: CE - lambda * entropy on misclassified voxels"),
    "meep_ce_kl": Method(ErroneousEntropyLoss, {"base_loss": "ce", "lam": 0.3, "regularizer": "kl"}, "MEEP: CE + lambda * KL(uniform || p) on misclassified voxels"),
    "meep_dice_entropy": Method(ErroneousEntropyLoss, {"base_loss": "dice", "lam": 0.3, "regularizer": "entropy"}, "MEEP: Dice - lambda * entropy on misclassified voxels"),
    "meep_dice_kl": Method(ErroneousEntropyLoss, {"base_loss": "dice", "lam": 0.3, "regularizer": "kl"}, "MEEP: Dice + lambda * KL(uniform || p) on misclassified voxels"),
    "nacl": Method(_nacl, {"alpha": 0.1}, "neighbour-aware calibration loss (MONAI NACLLoss, Murugesan et al. 2023)", True),
}


def loss_parameters(name: str) -> tuple[list[str], bool]:
    """The hyper-parameters the loss of method ``name`` takes by name (``num_classes``/``spatial_dims`` left out),
    and whether it passes further keyword arguments on to a MONAI loss it wraps (those are not listed)."""
    params = inspect.signature(METHODS[name].build).parameters.values()
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("num_classes", "spatial_dims")]
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


def get_loss(name: str, num_classes: int | None = None, spatial_dims: int | None = None, **kwargs: Any) -> _Loss:
    """Build the loss of a training method by name.

    Args:
        name: one of :data:`METHODS` (``ce``, ``ce_dice``, ``dice``, ``focal``, ``ecp``, ``ls``, ``svls``, ``mbls``,
            ``mbls_l2``, ``mbls_dice``, ``meep_ce_entropy``, ``meep_ce_kl``, ``meep_dice_entropy``,
            ``meep_dice_kl``, ``nacl``).
        num_classes: number of classes; used by methods that need it (``nacl``), ignored by the others.
        spatial_dims: 2 or 3; used by methods that need it (``nacl``), ignored by the others.
        kwargs: hyper-parameters overriding the method's defaults (e.g. ``margin=5.0``).

    Raises:
        ValueError: for an unknown method name, a hyper-parameter the method's loss does not take (naming the ones
            it takes), or a method that needs ``num_classes``/``spatial_dims``.
    """
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; available methods: {', '.join(METHODS)}.")
    method = METHODS[name]
    taken, open_ended = loss_parameters(name)
    if not open_ended:
        unknown = [k for k in kwargs if k not in taken]
        if unknown:
            near = difflib.get_close_matches(unknown[0], taken, n=1, cutoff=0.5)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"method {name!r} takes no hyper-parameter {unknown[0]!r}.{hint} Its hyper-parameters: {', '.join(taken) or 'none'}.")
    params = {**method.defaults, **kwargs}
    if method.needs_geometry:
        if num_classes is None or spatial_dims is None:
            raise ValueError(f"method {name!r} needs num_classes and spatial_dims, got {num_classes}, {spatial_dims}.")
        num_classes = integer_arg(num_classes, "num_classes", 2, f"method {name!r}")
        if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, numbers.Integral) or spatial_dims not in (2, 3):
            raise ValueError(f"method {name!r}: spatial_dims must be the integer 2 or 3, got {spatial_dims!r}.")
        params = {"num_classes": num_classes, "spatial_dims": spatial_dims, **params}
    try:
        return method.build(**params)
    except TypeError as e:  # a keyword the MONAI loss it wraps does not take
        if "keyword argument" not in str(e):
            raise
        raise ValueError(f"method {name!r}: {e} (hyper-parameters given: {sorted(kwargs)}).") from None
