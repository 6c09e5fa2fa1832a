"""Maximum-entropy on erroneous predictions (MEEP)."""

from __future__ import annotations

import math
from typing import Callable, Union

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch.nn.modules.loss import _Loss

from calibmonai.losses.ce import CrossEntropyLoss
from calibmonai.losses.fused import FusedTerms, fused_softmax_loss
from calibmonai.losses.utils import finite_float, first_argmax, nll_map, to_class_indices

__all__ = ["ErroneousEntropyLoss", "erroneous_regularizer"]

LossLike = Union[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


def erroneous_regularizer(
    input: torch.Tensor,
    target: torch.Tensor,
    regularizer: str = "entropy",
    eps: float = 1e-8,
    log_prob: torch.Tensor | None = None,
) -> torch.Tensor:
    """MEEP's regulariser (Larrazabal et al., "Maximum Entropy on Erroneous Predictions (MEEP): Improving Model
    Calibration for Medical Image Segmentation", MICCAI 2023): the mean over misclassified voxels of the entropy
    ``-sum_k p_k log p_k`` (``regularizer="entropy"``) or of ``KL(u || p) = -mean_k log p_k - log K`` (``"kl"``).

    A voxel is misclassified when its prediction, the argmax of the logits with the first-index tie rule
    (:func:`calibmonai.losses.utils.first_argmax`: a tie goes to the lowest tied class), differs from ``y``.

    Probabilities are clamped at ``eps`` before the logarithm. Returns exactly 0 when no voxel is
    misclassified.

    Args:
        input: logits ``(B, K, *spatial)``, finite, floating point, ``K >= 2``.
        target: class indices ``(B, *spatial)`` or ``(B, 1, *spatial)``, or one-hot ``(B, K, *spatial)``.
        regularizer: ``"entropy"`` or ``"kl"``.
        eps: probability floor before the logarithm, in ``(0, 1)``.
        log_prob: ``log_softmax(input, 1)`` when the caller already has it (same shape as ``input``).

    Raises:
        ValueError: for logits or targets that do not match (the messages of the losses), an unknown regulariser,
            an ``eps`` outside ``(0, 1)``, or a ``log_prob`` of another shape than ``input``.
    """
    idx = to_class_indices(input, target)
    eps = finite_float(eps, "eps", "erroneous_regularizer")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"erroneous_regularizer: eps must lie in (0, 1), got {eps}.")
    if regularizer not in ("entropy", "kl"):
        raise ValueError(f"regularizer must be 'entropy' or 'kl', got {regularizer!r}.")
    if log_prob is not None and (not isinstance(log_prob, torch.Tensor) or log_prob.shape != input.shape):
        shape = tuple(log_prob.shape) if isinstance(log_prob, torch.Tensor) else type(log_prob).__name__
        raise ValueError(f"log_prob must be log_softmax(input, 1) of the input's shape {tuple(input.shape)}, got {shape}.")
    return _erroneous_regularizer(input, idx, regularizer, eps, log_prob)


def _erroneous_regularizer(
    input: torch.Tensor, target: torch.Tensor, regularizer: str, eps: float, log_prob: torch.Tensor | None
) -> torch.Tensor:
    """:func:`erroneous_regularizer` on checked arguments, ``target`` the ``(B, *spatial)`` int64 indices."""
    wrong = (first_argmax(input.detach(), dim=1) != target).to(input.dtype)
    if log_prob is None:
        log_prob = F.log_softmax(input, dim=1)
    # log(clamp(p, eps)) == clamp(log p, log eps), values and gradients alike
    log_p = log_prob.clamp_min(math.log(eps))
    if regularizer == "entropy":
        per_voxel = -(log_p.exp() * log_p).sum(dim=1)
    else:
        per_voxel = -log_p.mean(dim=1) - math.log(input.shape[1])
    return (per_voxel * wrong).sum() / wrong.sum().clamp_min(1.0)


class ErroneousEntropyLoss(_Loss):
    """MEEP: a segmentation loss plus a maximum-entropy term on misclassified voxels only.

    .. math::
        \\mathcal{L} = \\mathcal{L}_{seg} - \\lambda \\, \\frac{1}{|E|}\\sum_{i \\in E} H(p_i)
        \\quad\\text{or}\\quad
        \\mathcal{L}_{seg} + \\lambda \\, \\frac{1}{|E|}\\sum_{i \\in E} \\mathrm{KL}(u \\,\\|\\, p_i),

    where ``E`` is the set of voxels whose argmax prediction (first-index tie rule: a tie goes to the lowest tied
    class) differs from the ground truth, ``u`` the uniform distribution and
    ``KL(u || p) = -1/K sum_k log p_k - log K``. When ``E`` is empty the term is 0.

    Larrazabal, A. J., Martinez, C., Dolz, J., Ferrante, E. "Maximum Entropy on Erroneous Predictions
    (MEEP): Improving Model Calibration for Medical Image Segmentation." MICCAI 2023.
    https://arxiv.org/abs/2112.12218 ; reference code
    https://github.com/agosl/Maximum-Entropy-on-Erroneous-Predictions

    **More than two classes.** The reference code is written for binary tasks: its entropy is the mean over
    classes of per-class *binary* entropies ``1/K sum_k h(p_k)``, ``h(q) = -q log q - (1 - q) log(1 - q)``, and
    its CE base is the per-class binary cross-entropy ``-1/K sum_k [y_k log p_k + (1 - y_k) log(1 - p_k)]``.
    calibmonai uses the multi-class Shannon forms, ``H(p) = -sum_k p_k log p_k`` and ``-log p_y``. For
    ``K = 2`` they are equal (``p_1 = 1 - p_0``, so ``h(p_0) = h(p_1) = H(p)`` and both binary cross-entropies
    are ``-log p_y``); for ``K > 2`` they differ, and calibmonai's are the multi-class losses of the paper's
    formulas. Other constants: the reference's KL term is ``mean_k(-log p_k)`` without the ``- log K`` (same
    gradient) with ``p`` clipped at ``1e-7`` (calibmonai: ``eps=1e-8``); its Dice base is the foreground-class
    Dice of a binary task over the whole batch (``base_loss="dice"`` here: MONAI's ``DiceLoss``, mean over
    images and every class).

    Only ``reduction="mean"`` is defined (the term is a mean over a data-dependent voxel set).

    Float32 CPU logits take the fused one-pass kernel of :mod:`calibmonai.losses.fused` (same value and
    gradient, tested against this implementation).
    """

    def __init__(
        self, base_loss: LossLike = "ce", lam: float = 0.3, regularizer: str = "entropy", eps: float = 1e-8
    ) -> None:
        """
        Args:
            base_loss: ``"ce"`` (cross-entropy), ``"dice"`` (MONAI ``DiceLoss`` with softmax and one-hot
                labels), or any loss called as ``base_loss(logits, labels)`` with ``(B, 1, *spatial)`` labels.
            lam: weight ``lambda`` of the regulariser, a finite number >= 0.
            regularizer: ``"entropy"`` (subtract the entropy) or ``"kl"`` (add KL(uniform || p)).
            eps: probability floor before logarithms, in ``(0, 1)``.

        Raises:
            ValueError: for a ``lam`` that is not a finite number >= 0 or an ``eps`` outside ``(0, 1)`` (NaN and strings
                included), or an unknown regulariser or base loss.
        """
        super().__init__()
        lam = finite_float(lam, "lam", type(self).__name__)
        eps = finite_float(eps, "eps", type(self).__name__)
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}.")
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must lie in (0, 1), got {eps}.")
        if regularizer not in ("entropy", "kl"):
            raise ValueError(f"regularizer must be 'entropy' or 'kl', got {regularizer!r}.")
        self._base_kind = base_loss if base_loss in ("ce", "dice") else "callable"
        if isinstance(base_loss, str):
            if base_loss == "ce":
                base_loss = CrossEntropyLoss()
            elif base_loss == "dice":
                base_loss = DiceLoss(to_onehot_y=True, softmax=True)
            else:
                raise ValueError(f"base_loss must be 'ce', 'dice' or a callable loss, got {base_loss!r}.")
        elif not callable(base_loss):
            raise ValueError(f"base_loss must be 'ce', 'dice' or a callable loss, got {type(base_loss).__name__}.")
        self.base_loss = base_loss
        self.lam = lam
        self.regularizer = regularizer
        self.eps = eps

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: logits ``(B, C, *spatial)``.
            target: ``(B, 1, *spatial)`` / ``(B, *spatial)`` class indices or ``(B, C, *spatial)`` one-hot.
        """
        if self._base_kind != "callable":
            base = {"ce": 1.0} if self._base_kind == "ce" else {"dice": 1.0}
            terms = FusedTerms(meep=self.lam, meep_mode=self.regularizer, eps=self.eps, **base)
            fused = fused_softmax_loss(input, target, terms, "mean")
            if fused is not None:
                return fused
        idx = to_class_indices(input, target)
        if isinstance(self.base_loss, CrossEntropyLoss):  # share the log-softmax with the regulariser
            log_prob = F.log_softmax(input, dim=1)
            base = nll_map(log_prob, idx).mean()
        else:
            log_prob = None
            base = self.base_loss(input, idx.unsqueeze(1))
        term = _erroneous_regularizer(input, idx, self.regularizer, self.eps, log_prob)
        sign = -1.0 if self.regularizer == "entropy" else 1.0
        return base + sign * self.lam * term
