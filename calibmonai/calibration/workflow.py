"""The bundle's ``calibrate`` workflow: run the frozen network over the validation split, fit, save."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Sequence

import torch

from calibmonai.progress import progress

from calibmonai.calibration.base import CALIBRATORS, Calibrator, file_sha256, load_calibrator
from calibmonai.calibration.sampling import StratifiedVoxelSampler

__all__ = ["calibrate_run", "calibrator_path", "run_calibrator"]


def calibrator_path(output_dir: str, name: str) -> str:
    """Where a run keeps its fitted calibrator ``name``: ``<output_dir>/models/calibrator_<name>.pt``."""
    return os.path.join(output_dir, "models", f"calibrator_{name}.pt")


def run_calibrator(name: str | None, output_dir: str, num_classes: int, checkpoint: str | None = None) -> Calibrator | None:
    """The fitted calibrator ``name`` of a run (``None`` when ``name`` is ``None``), class count checked.

    A calibrator fitted on other weights than the run's checkpoint (``checkpoint``, by default ``model.pt`` beside
    the calibrator: the run was trained again after calibrating) is refused: its temperature or mapping belongs to
    the old network. Calibrators saved without that record (older versions) are not checked.

    Args:
        name: the calibrator's name (``ts``, ``lts``, ``platt``, ``isotonic``: a key of :data:`CALIBRATORS`);
            ``None``, ``""``, ``"none"`` or ``"None"``: no calibration.
        output_dir: the run folder; the calibrator is read from :func:`calibrator_path` ``(output_dir, name)``.
        num_classes: the network's number of classes, checked against the calibrator's.
        checkpoint: the weights the run's network uses; ``None``: ``model.pt`` beside the calibrator. When the file
            exists and the calibrator records the SHA-256 of the weights it was fitted on, both must agree.

    Returns:
        The loaded calibrator in eval mode, or ``None`` for no calibration.

    Raises:
        FileNotFoundError: when the run has no fitted calibrator ``name`` (run the ``calibrate`` workflow).
        ValueError: for an unknown ``name``, a file that is no calibrator or was fitted for another number of
            classes (:func:`load_calibrator`), or a calibrator fitted on other weights than ``checkpoint``.
    """
    if name in (None, "", "none", "None"):
        return None
    if name not in CALIBRATORS:
        raise ValueError(f"Unknown calibrator {name!r}; available calibrators: {', '.join(CALIBRATORS)}.")
    path = calibrator_path(output_dir, name)
    cal = load_calibrator(path, num_classes=num_classes).eval()
    checkpoint = checkpoint or os.path.join(os.path.dirname(path), "model.pt")
    if cal.fitted_on.get("sha256") and os.path.isfile(checkpoint) and cal.fitted_on_other_weights(file_sha256(checkpoint)):
        fitted = cal.fitted_on.get("checkpoint")
        raise ValueError(
            f"calibrator {path} was fitted on other weights than {checkpoint}"
            + (f" (on {fitted})" if fitted and os.path.basename(fitted) != os.path.basename(checkpoint) else "")
            + f" (the run was trained again after calibrating, or this workflow reads another checkpoint than "
            f"'calibrate' did: give it that checkpoint, e.g. --ckpt_path {os.path.join(os.path.dirname(path), fitted or 'model.pt')}, "
            f"or run the 'calibrate' workflow again (bundles/calibrate/{name}.yaml) to fit it to these weights)."
        )
    return cal


def calibrate_run(
    name: str,
    network: torch.nn.Module,
    checkpoint: str,
    datalist: Sequence[dict[str, str]],
    preprocessing: Callable,
    inferer: Callable,
    num_classes: int,
    output_dir: str,
    device: Any = "cpu",
    sample_size: int = 200_000,
    seed: int = 0,
    lts_max_slices: int = 256,
    lts_epochs: int = 60,
    calibrator_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit calibrator ``name`` (``ts``, ``lts``, ``platt``, ``isotonic``) on the validation split of a trained run
    and save it to ``<output_dir>/models/calibrator_<name>.pt`` (parameters also in ``.json`` beside it).

    Voxel calibrators see a fixed-size, class-stratified, seeded voxel sample (``sample_size``); LTS sees a
    fixed-size seeded random sample of ``lts_max_slices`` axial slices (2D) — memory does not grow with the split.

    Args:
        name: the calibrator to fit, a key of :data:`CALIBRATORS` (``ts``, ``lts``, ``platt``, ``isotonic``).
        network: the segmentation network (architecture); its weights are loaded from ``checkpoint`` onto ``device``.
        checkpoint: path of the trained weights; its file name and SHA-256 are saved with the calibrator
            (``fitted_on``) so that :func:`run_calibrator` can refuse it for other weights.
        datalist: the validation items, each a dict (of file paths) that ``preprocessing`` reads.
        preprocessing: item -> dict with the channel-first ``"image"`` ``(Ci, *spatial)`` and ``"label"``
            ``(1, *spatial)`` (class indices).
        inferer: ``inferer(inputs, network)`` -> logits ``(1, C, *spatial)``, e.g. a MONAI sliding-window inferer
            (see :func:`calibmonai.prediction.predict_logits`).
        num_classes: number of classes ``C`` of the network, an integer >= 2.
        output_dir: the run folder; the calibrator is written to :func:`calibrator_path` ``(output_dir, name)``
            and its summary to the ``.json`` beside it.
        device: where the network runs (the logits are gathered on the CPU).
        sample_size: voxel calibrators: total number of voxels kept by the class-stratified sampler
            (:class:`StratifiedVoxelSampler`), an integer >= ``num_classes``; unused by LTS.
        seed: seed of the voxel sampler, of the random choice of LTS slices and of the LTS fit.
        lts_max_slices: LTS: most items kept for fitting (a seeded random choice): for a 2D model on 3D volumes,
            the slices along the last axis that hold foreground; otherwise the whole validation images.
        lts_epochs: LTS: training epochs (``LocalTemperatureScaling.fit``'s ``epochs``).
        calibrator_kwargs: further arguments of the calibrator's constructor, e.g. ``{"bounds": (0.1, 10.0)}``
            for ``ts`` or ``{"spatial_dims": 3}`` for ``lts``; ``None``: none.

    Returns:
        The summary written to the ``.json``: the calibrator's name, its fit report and parameters, the path of the
        saved file and ``fitted_on``.

    Raises:
        ValueError: for no or an unknown ``name``, a validation split without foreground voxel, or invalid
            arguments or data refused by the sampler or the calibrator (naming them).
    """
    from calibmonai.prediction import load_checkpoint, predict_logits

    if name is None:
        raise ValueError("no calibrator chosen: compose bundles/calibrate/<ts|lts|platt|isotonic>.yaml after the method fragment.")
    if name not in CALIBRATORS:
        raise ValueError(f"Unknown calibrator {name!r}; available calibrators: {', '.join(CALIBRATORS)}.")
    load_checkpoint(network, checkpoint, device)
    kwargs = dict(calibrator_kwargs or {})
    cal: Calibrator = CALIBRATORS[name](num_classes, **kwargs)
    sampler = StratifiedVoxelSampler(num_classes, sample_size, seed) if not cal.needs_image else None
    gen = torch.Generator().manual_seed(seed)
    slices: list[tuple[torch.Tensor, tuple]] = []  # (priority key, item)
    foreground = 0
    t0 = time.time()
    for i, item in enumerate(datalist):
        d = preprocessing(item)
        image = torch.as_tensor(d["image"]).unsqueeze(0)
        label = torch.as_tensor(d["label"]).long().unsqueeze(0)
        logits = predict_logits(d["image"], network, inferer, device)
        foreground += int((label > 0).sum())
        if sampler is not None:
            sampler.add(logits, label)
        else:
            spatial_dims = getattr(cal, "spatial_dims", 2)
            if spatial_dims == 2 and logits.ndim == 5:
                for k in range(logits.shape[-1]):
                    if bool((label[0, 0, ..., k] > 0).any()):
                        slices.append((torch.rand((), generator=gen), (logits[0, ..., k], image[0, ..., k].float(), label[0, 0, ..., k])))
            else:
                slices.append((torch.rand((), generator=gen), (logits[0], image[0].float(), label[0, 0])))
            if len(slices) > lts_max_slices:
                slices = sorted(slices, key=lambda s: float(s[0]))[:lts_max_slices]
        progress(f"[calibrate] {name}: validation case {i + 1}/{len(datalist)} ({time.time() - t0:.0f} s)", "calibmonai.calibration")
    if foreground == 0:
        raise ValueError("the validation split has no foreground voxel: cannot fit a calibrator on it.")
    if sampler is not None:
        info = cal.fit(sampler.sample())
    else:
        info = cal.fit([s[1] for s in slices], epochs=lts_epochs, seed=seed)
    path = calibrator_path(output_dir, name)
    fitted_on = {"checkpoint": os.path.basename(checkpoint), "sha256": file_sha256(checkpoint)}
    cal.save(path, fitted_on=fitted_on)
    summary = {"calibrator": name, **info, **cal.parameters_summary(), "path": path, "fitted_on": fitted_on}
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump(summary, f, indent=2, default=float)
    progress(f"[calibrate] {name} fitted: " + ", ".join(f"{k}={v}" for k, v in summary.items() if k not in ("path", "fitted_on")) + f"; saved to {path}", "calibmonai.calibration")
    return summary
