"""The check of a flat voxel sample, shared by the voxel sampler and the weighted NLL (the argument checks shared
across the package, ``finite_float`` and ``integer_arg``, are in :mod:`calibmonai.losses.utils`)."""

from __future__ import annotations

import torch

__all__ = ["check_voxels"]


def check_voxels(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> None:
    """Raise ``ValueError`` unless ``logits``, ``labels`` and ``weights`` are a valid flat voxel sample.

    Args:
        logits: ``(N, C)`` finite floating-point logits, ``N >= 1`` voxels, ``C >= 2`` classes.
        labels: ``(N,)`` integer class indices in ``[0, C)`` (not ``bool``, not floating point: convert first).
        weights: ``None`` or ``(N,)``: one finite, non-negative weight per voxel, not all zero.

    Raises:
        ValueError: naming the shapes or values that break one of the above.
    """
    for what, t in (("logits", logits), ("labels", labels), ("weights", weights)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise ValueError(f"{what} must be a torch.Tensor, got {type(t).__name__}.")
    if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (N, C) with N >= 1 voxels and C >= 2 classes, got {tuple(logits.shape)}.")
    n, c = logits.shape
    if weights is None:
        if tuple(labels.shape) != (n,):
            raise ValueError(f"labels must be ({n},) like the logits {tuple(logits.shape)} (one label per voxel), got {tuple(labels.shape)}.")
    elif tuple(labels.shape) != (n,) or tuple(weights.shape) != (n,):
        raise ValueError(
            f"labels and weights must be ({n},) like the logits {tuple(logits.shape)} (one label and one weight per voxel), "
            f"got {tuple(labels.shape)} and {tuple(weights.shape)}."
        )
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got dtype {logits.dtype}.")
    # one reduction pass: any NaN/Inf makes the sum non-finite; only then count the culprits
    if not bool(torch.isfinite(logits.detach().sum(dtype=torch.float64))):
        bad = int((~torch.isfinite(logits)).sum())
        if bad:
            raise ValueError(f"{bad} non-finite logit value(s) (NaN or Inf) in the sample: a diverged network or a corrupt scan?")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}.")
    lo, hi = (int(v) for v in torch.aminmax(labels))
    if lo < 0 or hi >= c:
        raise ValueError(f"labels must lie in [0, {c - 1}], got [{lo}, {hi}].")
    if weights is None:
        return
    if weights.is_complex():
        raise ValueError(f"weights must be real numbers, got dtype {weights.dtype}.")
    if not weights.is_floating_point():
        weights = weights.double()
    finite = torch.isfinite(weights)
    if not bool(finite.all()):
        raise ValueError(f"weights must be finite, got {int((~finite).sum())} non-finite value(s) (NaN or Inf) among {n}.")
    if bool((weights < 0).any()):
        raise ValueError(f"weights must be non-negative, got {int((weights < 0).sum())} negative value(s) among {n} (minimum {float(weights.min()):g}).")
    if float(weights.double().sum()) <= 0:
        raise ValueError(f"no voxel has weight: the {n} weights sum to 0, so every weighted NLL would be 0 / 0 (NaN).")
