"""Base class, saving/loading and the shared NLL fitting of the post-hoc calibrators."""

from __future__ import annotations

import hashlib
import os
import warnings
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from calibmonai.calibration.checks import check_voxels
from calibmonai.calibration.sampling import VoxelSample
from calibmonai.losses.utils import integer_arg
from calibmonai.run_files import atomic_file

__all__ = ["Calibrator", "weighted_nll", "fit_lbfgs", "CALIBRATORS", "load_calibrator", "file_sha256"]

CALIBRATORS: dict[str, type] = {}


def weighted_nll(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean (weighted) ``-log softmax(logits)_y`` over voxels: ``sum_i w_i nll_i / sum_i w_i``.

    The fitting objective of temperature and Platt scaling, which pass a :class:`VoxelSample`'s flat voxels.

    Args:
        logits: ``(N, C)`` finite floating-point logits, ``N >= 1`` voxels and ``C >= 2`` classes (a
            ``(B, C, *spatial)`` map must be flattened first: ``logits.movedim(1, -1).reshape(-1, C)``).
        labels: ``(N,)`` integer class indices in ``[0, C)``.
        weights: ``None`` (every voxel weighs 1), or ``(N,)``: one finite, non-negative weight per voxel, not all
            zero (a single weight is not broadcast).

    Returns:
        A 0-d tensor of the logits' dtype (differentiable in ``logits``).

    Raises:
        ValueError: naming the shapes or values, for logits that are not ``(N, C)`` floating point and finite
            (also ``N = 0``), labels that are not ``(N,)`` integers in ``[0, C)``, or weights that are not ``(N,)``,
            are negative or non-finite, or sum to 0 (the mean would be 0 / 0).
    """
    check_voxels(logits, labels, weights)
    return _weighted_nll(logits, labels.long(), weights)


def _weighted_nll(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`weighted_nll` of a checked sample (int64 labels): the fits' objective, evaluated at every optimiser
    step on a :class:`VoxelSample`, which checked its voxels once."""
    nll = F.cross_entropy(logits, labels, reduction="none")
    if weights is None:
        return nll.mean()
    w = weights.to(nll.dtype)
    return (nll * w).sum() / w.sum()


def fit_lbfgs(params: list[torch.Tensor], closure_loss: Callable[[], torch.Tensor], max_iter: int = 200) -> float:
    """Minimise ``closure_loss`` over ``params`` with LBFGS (strong Wolfe line search); returns the final loss."""
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = closure_loss()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(closure_loss())


class Calibrator(torch.nn.Module):
    """A post-hoc calibrator: ``fit`` on validation voxels, then ``calibrator(logits, image)`` -> probabilities.

    Subclasses register themselves in :data:`CALIBRATORS` under ``name``.
    """

    name = ""
    needs_image = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            CALIBRATORS[cls.name] = cls

    def __init__(self, num_classes: int) -> None:
        """
        Args:
            num_classes: number of classes ``C`` of the logits it calibrates, an integer >= 2 (a float such as
                ``3.0`` and a string are refused).

        Raises:
            ValueError: naming the value, for a ``num_classes`` that is not an integer >= 2.
        """
        super().__init__()
        self.num_classes = integer_arg(num_classes, "num_classes", 2, type(self).__name__)
        self.fitted = False
        self.fitted_on: dict[str, str] = {}  # what it was fitted to (see ``save``), e.g. the checkpoint's SHA-256

    def fitted_on_other_weights(self, checkpoint_sha256: str) -> bool:
        """Whether this calibrator records having been fitted on weights other than those of SHA-256
        ``checkpoint_sha256`` (calibrators saved without that record are never judged stale)."""
        recorded = self.fitted_on.get("sha256")
        return bool(recorded) and recorded != checkpoint_sha256

    def _check_logits(self, logits: torch.Tensor) -> None:
        if not isinstance(logits, torch.Tensor) or logits.ndim < 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"{type(self).__name__} was fitted for {self.num_classes} classes, got logits of shape {tuple(getattr(logits, 'shape', ()))}."
            )
        if logits.numel() == 0:  # an empty batch or spatial size: nothing to calibrate, an empty map would be written
            raise ValueError(f"{type(self).__name__}: the logits hold no voxel (an empty batch or spatial size), shape {tuple(logits.shape)}.")
        if not bool(torch.isfinite(logits).all()):  # NaN probabilities would be written as a calibrated map
            bad = int((~torch.isfinite(logits)).sum())
            raise ValueError(f"{type(self).__name__}: the logits hold {bad} non-finite value(s) (NaN or Inf): a diverged network or a corrupt scan.")

    def _float_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` checked (:meth:`_check_logits`), integer or boolean ones converted to ``float32``.

        Every calibrator takes integer logits (e.g. quantised network outputs) the same way: as the float values
        they hold, with float probabilities out (a softmax is not defined on integers, and dividing integer logits
        by a temperature cast to their dtype would truncate the temperature).
        """
        self._check_logits(logits)
        return logits if logits.is_floating_point() else logits.float()

    def _check_sample(self, sample: Any) -> VoxelSample:
        """``sample`` as the voxel calibrators' ``fit`` takes it (a :class:`VoxelSample`), or a ``ValueError`` saying so."""
        if not isinstance(sample, VoxelSample):
            raise ValueError(
                f"{type(self).__name__}.fit takes a VoxelSample (StratifiedVoxelSampler(num_classes).add(logits, labels) "
                f"per batch, then .sample(); or VoxelSample(logits (N, C), labels (N,))), got {type(sample).__name__}."
            )
        return sample

    def _warn_absent_classes(self, labels: torch.Tensor) -> None:
        """Warn when the fitting labels hold no voxel of some class: a per-class map (Platt's ``a_c, b_c``, an
        isotonic curve) then learns only that the class never occurs, and the calibrated maps drive it to 0."""
        present = torch.bincount(labels.reshape(-1).long().clamp(0, self.num_classes - 1), minlength=self.num_classes) > 0
        absent = [c for c in range(self.num_classes) if not bool(present[c])]
        if absent:
            warnings.warn(
                f"{type(self).__name__}.fit: the fitting sample holds no voxel of class(es) {absent} (of {self.num_classes}): "
                f"their per-class maps are fitted on no positive example and push those classes' probabilities towards 0. "
                f"Fit on a validation split where every class occurs, or use temperature scaling ('ts').",
                stacklevel=3,
            )

    def fit(self, sample: VoxelSample) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def calibrate_flat(self, logits: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Probabilities ``(N, C)`` from logits ``(N, C)``."""
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """Calibrated probabilities of the same shape as ``logits (B, C, *spatial)`` (integer logits are taken as
        ``float32`` values).

        Args:
            logits: ``(B, C, *spatial)`` finite logits with at least one voxel.
            image: unused by the voxel calibrators (taken so that every calibrator is called alike).

        Raises:
            ValueError: for logits of another number of classes, with no voxel, or with NaN/Inf values.
        """
        logits = self._float_logits(logits)
        flat = logits.movedim(1, -1).reshape(-1, self.num_classes)
        probs = self.calibrate_flat(flat)
        return probs.reshape(logits.movedim(1, -1).shape).movedim(-1, 1)

    def parameters_summary(self) -> dict[str, Any]:
        return {}

    def extra_state(self) -> dict[str, Any]:
        return {}

    def set_extra(self, extra: dict[str, Any]) -> None:
        return None

    def save(self, path: str | os.PathLike, fitted_on: Mapping[str, str] | None = None) -> str:
        """Write the calibrator (atomically: a temporary file renamed). ``fitted_on``: what it was fitted to, e.g.
        ``{"checkpoint": "model.pt", "sha256": ...}`` (:func:`file_sha256`), kept as ``fitted_on`` when loaded."""
        path = os.fspath(path)
        if os.path.isdir(path):
            raise ValueError(f"{path} is a folder: give the calibrator's file name, e.g. {os.path.join(path, f'calibrator_{self.name}.pt')}.")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        payload = {"kind": self.name, "num_classes": self.num_classes, "config": self.config(), "state": self.state_dict(), "extra": self.extra_state()}
        if fitted_on:
            payload["fitted_on"] = {str(k): str(v) for k, v in fitted_on.items()}
        with atomic_file(path) as tmp:
            torch.save(payload, tmp)
        return path

    def config(self) -> dict[str, Any]:
        return {}


def load_calibrator(path: str | os.PathLike, num_classes: int | None = None, map_location: Any = "cpu") -> Calibrator:
    """Load a saved calibrator, checking its number of classes against ``num_classes`` when given.

    Args:
        path: the file written by :meth:`Calibrator.save` (``<run>/models/calibrator_<name>.pt``).
        num_classes: the network's number of classes; ``None`` skips the check.
        map_location: passed to ``torch.load`` (where the tensors are loaded; the CPU by default).

    Returns:
        The calibrator, of the class registered under the file's ``kind``, marked fitted, with its ``fitted_on``
        record (empty for files saved without one).

    Raises:
        FileNotFoundError: when there is no file at ``path``.
        ValueError: for a file that cannot be loaded safely (``weights_only``: only tensors and plain values), is no
            calibmonai calibrator, or was fitted for another number of classes than ``num_classes``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no calibrator file at {path}: run the 'calibrate' workflow first.")
    try:
        # weights_only: a calibrator shipped inside a downloaded bundle is data, never code (a crafted pickle
        # would otherwise run arbitrary code on load)
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError and others for unsafe or corrupt files
        raise ValueError(
            f"{path} cannot be loaded safely as a calibmonai calibrator (only tensors and plain values are allowed; "
            f"the file holds something else or is corrupt): {(str(e).strip().splitlines() or [type(e).__name__])[0][:200]}"
        ) from e
    if not isinstance(payload, dict) or payload.get("kind") not in CALIBRATORS:
        raise ValueError(f"{path} is not a calibmonai calibrator file (kinds: {list(CALIBRATORS)}).")
    if num_classes is not None and payload["num_classes"] != num_classes:
        raise ValueError(f"calibrator {path} was fitted for {payload['num_classes']} classes, the network has {num_classes}.")
    cal = CALIBRATORS[payload["kind"]](payload["num_classes"], **payload.get("config", {}))
    cal.set_extra(payload.get("extra", {}))
    cal.load_state_dict(payload["state"])
    cal.fitted = True
    cal.fitted_on = dict(payload.get("fitted_on") or {})
    return cal


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex): which checkpoint a calibrator was fitted on."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
