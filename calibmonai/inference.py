"""Inference on new scans: label map plus calibrated probability, confidence and uncertainty maps.

Every scan is processed independently: one that fails (missing, unreadable, wrong modalities, wrong
dimensionality, non-finite values) is reported with a one-line reason and the others go on. Outputs are written
to a temporary name and renamed, and existing outputs are kept unless ``overwrite`` is set.
"""

from __future__ import annotations

import glob
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import nibabel as nib
import numpy as np
import torch

__all__ = ["find_scans", "infer_scans", "InferenceSummary", "SCAN_EXTENSIONS", "MODALITY_PATTERN"]

SCAN_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
#: several files per scan (multi-modal bundles): ``<case>_<4-digit modality index>.<ext>``, e.g. ``brain_0000.nii.gz``
MODALITY_PATTERN = re.compile(r"^(?P<case>.+)_(?P<mod>\d{4})$")
OUTPUT_SUFFIXES = ("seg", "conf", "uncertainty", "prob")


def _strip_ext(path: str) -> str:
    name = os.path.basename(path)
    for ext in SCAN_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def find_scans(inputs: str | Sequence[str], num_modalities: int = 1) -> list[tuple[str, list[str]]]:
    """Resolve a folder, a glob or a list of files into ``(case name, [file per modality])``.

    With ``num_modalities > 1`` the files of one case are ``<case>_0000.ext``, ``<case>_0001.ext``, ...; a
    listed file that does not exist is kept (it fails later with its own reason).
    """
    if isinstance(inputs, (list, tuple)):
        files = [str(f) for f in inputs]
    elif os.path.isdir(str(inputs)):
        files = sorted(os.path.join(str(inputs), f) for f in os.listdir(str(inputs)) if f.lower().endswith(SCAN_EXTENSIONS))
    elif any(ch in str(inputs) for ch in "*?["):
        files = sorted(glob.glob(str(inputs)))
    else:
        files = [str(inputs)]
    if not files:
        raise FileNotFoundError(f"no scan found in {inputs!r} (extensions {', '.join(SCAN_EXTENSIONS)}).")
    cases: dict[str, list[str]] = {}
    for f in files:
        stem = _strip_ext(f)
        m = MODALITY_PATTERN.match(stem) if num_modalities > 1 else None
        cases.setdefault(m.group("case") if m else stem, []).append(f)
    return [(case, sorted(fs)) for case, fs in cases.items()]


@dataclass
class InferenceSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"{len(self.done)} scan(s) segmented, {len(self.skipped)} skipped (outputs exist; --overwrite to redo), {len(self.failed)} failed"]
        out += [f"  FAILED {case}: {why}" for case, why in self.failed.items()]
        return out


class ScanError(ValueError):
    """A scan that cannot be processed, with a one-line reason."""


def _save_atomic(array: np.ndarray, affine: np.ndarray, header: Any, path: str) -> None:
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{os.path.basename(path)}")
    img = nib.Nifti1Image(array, affine, header=header)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, tmp)
    os.replace(tmp, path)


def _reference_header(path: str) -> tuple[np.ndarray | None, Any]:
    if path.lower().endswith((".nii", ".nii.gz")):
        img = nib.load(path)
        return img.affine, img.header.copy()
    return None, None


def infer_scans(
    inputs: str | Sequence[str],
    output_dir: str,
    network: torch.nn.Module,
    checkpoint: str,
    preprocessing: Callable,
    inferer: Callable,
    num_classes: int,
    calibrator: Callable | None = None,
    device: Any = "cpu",
    overwrite: bool = False,
    save_probs: bool = False,
    num_modalities: int = 1,
    spatial_dims: int = 3,
) -> InferenceSummary:
    """Segment every scan of ``inputs`` and write, in the scan's own grid, affine and orientation:
    ``<case>_seg.nii.gz`` (labels), ``<case>_conf.nii.gz`` (max probability), ``<case>_uncertainty.nii.gz``
    (entropy / log C in [0, 1]) and, with ``save_probs``, ``<case>_prob.nii.gz`` (4D, one volume per class).

    Args:
        preprocessing: the bundle's dictionary transform on ``{"image": [files]}`` (loading, orientation,
            spacing, intensity); it is inverted (MONAI ``Invertd``) to return to the scan's grid.
        inferer: ``inferer(image, network)`` -> logits (e.g. ``SliceInferer`` for a 2D network on a volume).
        calibrator: optional ``calibrator(logits, image)`` -> probabilities (TS, LTS, Platt, isotonic).
        spatial_dims: dimensionality of the scans the bundle segments (a scan of another one fails).

    Raises:
        RuntimeError: after every scan was tried, when any failed (the message lists them).
    """
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    from calibmonai.evaluation import load_checkpoint, predict_logits, to_probabilities

    load_checkpoint(network, checkpoint, device)
    os.makedirs(output_dir, exist_ok=True)
    scans = find_scans(inputs, num_modalities)
    summary = InferenceSummary()
    invert = Invertd(keys="prob", transform=preprocessing, orig_keys="image", nearest_interp=False, to_tensor=True)
    t0 = time.time()
    for i, (case, files) in enumerate(scans):
        prefix = f"[inference] {i + 1}/{len(scans)} {case}"
        outputs = {s: os.path.join(output_dir, f"{case}_{s}.nii.gz") for s in OUTPUT_SUFFIXES if s != "prob" or save_probs}
        if not overwrite and all(os.path.isfile(p) for p in outputs.values()):
            summary.skipped.append(case)
            print(f"{prefix}: outputs exist, skipped (use --overwrite)", flush=True)
            continue
        try:
            for f in files:
                if not os.path.isfile(f):
                    raise ScanError(f"file not found: {f}")
            if len(files) != num_modalities:
                raise ScanError(f"expected {num_modalities} modality file(s) per scan, got {len(files)}: {[os.path.basename(f) for f in files]}")
            for f in files:
                if f.lower().endswith((".nii", ".nii.gz")):
                    try:
                        ndim = len(nib.load(f).shape)
                    except Exception as e:  # noqa: BLE001
                        raise ScanError(f"cannot read the NIfTI header of {os.path.basename(f)} (corrupt?): {str(e)[:200]}") from e
                    if ndim < spatial_dims:
                        raise ScanError(f"a {ndim}D image given to a model that segments {spatial_dims}D scans ({os.path.basename(f)})")
            try:
                data = preprocessing({"image": files if num_modalities > 1 else files[0]})
            except Exception as e:  # noqa: BLE001 - any reader error is this scan's failure
                msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                raise ScanError(f"cannot read or preprocess the scan (corrupt, truncated or unsupported?): {msg[:200]}") from e
            image = data["image"]
            if image.ndim - 1 != spatial_dims:
                raise ScanError(f"a {image.ndim - 1}D image given to a model that segments {spatial_dims}D scans (shape {tuple(image.shape[1:])})")
            if image.shape[0] != num_modalities:
                raise ScanError(f"expected {num_modalities} channel(s), the scan has {image.shape[0]}")
            if not bool(torch.isfinite(torch.as_tensor(image)).all()):
                raise ScanError("the scan contains non-finite voxel values (NaN or Inf)")
            prob = to_probabilities(predict_logits(image, network, inferer, device), image, calibrator)
            # back to the scan's grid: interpolate log-probabilities (class-wise offsets of the calibrated logits,
            # so temperature scaling keeps the label map exactly), plus a ones channel marking the field of view
            log_p = torch.log(prob[0].clamp_min(1e-12))
            stacked = torch.cat([log_p, torch.ones_like(log_p[:1])])
            data["prob"] = MetaTensor(stacked, affine=image.affine, meta=dict(image.meta))
            inverted = torch.as_tensor(invert(data)["prob"]).float()
            prob_orig = torch.softmax(inverted[:-1], dim=0)
            outside = inverted[-1:] < 0.5
            background = torch.zeros_like(prob_orig)
            background[0] = 1.0
            prob_orig = torch.where(outside, background, prob_orig)
            conf, seg = prob_orig.max(0)
            entropy = -(prob_orig * torch.log(prob_orig.clamp_min(1e-12))).sum(0) / math.log(num_classes)
            affine, header = _reference_header(files[0])
            if affine is None:
                affine = np.asarray(image.meta.get("original_affine", image.affine))
            if tuple(seg.shape) != tuple(_original_shape(files[0], image)):
                raise ScanError(f"internal error: output shape {tuple(seg.shape)} differs from the scan's {_original_shape(files[0], image)}")
            arrays = {"seg": seg.numpy().astype(np.uint8), "conf": conf.numpy().astype(np.float32), "uncertainty": entropy.clamp(0, 1).numpy().astype(np.float32)}
            if save_probs:
                arrays["prob"] = np.moveaxis(prob_orig.numpy().astype(np.float32), 0, -1)
            for key, path in outputs.items():
                hdr = None
                if header is not None:
                    hdr = header.copy()
                    hdr.set_data_dtype(arrays[key].dtype)
                _save_atomic(arrays[key], affine, hdr, path)
            summary.done.append(case)
            print(f"{prefix}: done, shape {tuple(seg.shape)}, mean confidence {float(conf.mean()):.3f} ({time.time() - t0:.0f} s)", flush=True)
        except ScanError as e:
            summary.failed[case] = str(e)
            print(f"{prefix}: FAILED: {e}", flush=True)
    for line in summary.lines():
        print(f"[inference] {line}", flush=True)
    if summary.failed:
        raise RuntimeError(f"{len(summary.failed)} of {len(scans)} scan(s) failed: " + "; ".join(f"{c}: {w}" for c, w in summary.failed.items()))
    return summary


def _original_shape(path: str, image: Any) -> tuple[int, ...]:
    meta = getattr(image, "meta", {})
    shape = meta.get("spatial_shape")
    if shape is not None:
        return tuple(int(s) for s in np.asarray(shape).tolist())
    return tuple(nib.load(path).shape[:3])
