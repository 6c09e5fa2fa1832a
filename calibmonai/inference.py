"""Inference on new scans: label map plus calibrated probability, confidence and uncertainty maps.

Every scan is processed independently: one that fails (missing, unreadable, wrong modalities, wrong
dimensionality, non-finite values) is reported with a one-line reason and the others go on. Outputs are written
to a temporary name and renamed, and existing outputs are kept unless ``overwrite`` is set.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.data import NibabelWriter
from monai.transforms import MapTransform

from calibmonai.run_files import atomic_file, folder_lock

__all__ = [
    "input_files", "scan_hint", "find_scans", "scan_datalist", "case_name", "scan_name_formatter", "infer_scans", "save_transforms", "InferenceSummary",
    "ScanInferenceEngine", "CalibratedLogProbabilitiesd", "ProbabilityMapsd", "AtomicNibabelWriter", "SCAN_EXTENSIONS",
    "MODALITY_PATTERN", "OUTPUTS_RECORD", "output_provenance",
]  # fmt: skip

SCAN_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
#: several files per scan (multi-modal bundles): ``<case>_<4-digit modality index>.<ext>``, e.g. ``brain_0000.nii.gz``
MODALITY_PATTERN = re.compile(r"^(?P<case>.+)_(?P<mod>\d{4})$")
OUTPUT_SUFFIXES = ("seg", "conf", "uncertainty", "prob")
#: the output folder's record of which weights and calibrator wrote each case's maps
OUTPUTS_RECORD = "calibmonai_outputs.json"


def _strip_ext(path: str) -> str:
    name = os.path.basename(path)
    for ext in SCAN_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def _nifti_channels(path: str) -> int | None:
    """The size of the 4th axis of a 4D NIfTI file (its channels), ``None`` for anything else."""
    if not path.lower().endswith((".nii", ".nii.gz")):
        return None
    try:
        shape = nib.load(path).shape
    except Exception:  # noqa: BLE001 - an unreadable file fails later with its own reason
        return None
    return int(shape[3]) if len(shape) == 4 else None


def _name_pattern(names: Sequence[str]) -> re.Pattern:
    """``[<case>_]<name>`` for the modality or label names, longest first (``t1ce`` before ``t1``), any case."""
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"^(?:(?P<case>.+)_)?(?P<name>{alternatives})$", re.IGNORECASE)


def _folder_case(path: str) -> str:
    """Case name of a file named after its modality alone (``<subject>/pre/FLAIR.nii.gz``): the subject folder."""
    folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    if folder.lower() in ("pre", "orig", "images"):
        folder = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(path))))
    return folder


def input_files(inputs: str | Sequence[str], extensions: Sequence[str]) -> list[str]:
    """The files of an inference input, without operating-system junk (``._*``, ``.DS_Store``, ...): a list of files
    as given, a folder's files ending in one of ``extensions`` or a glob's matches (both naturally sorted), or one file.

    Raises:
        FileNotFoundError: a single path (no glob characters) that does not exist, naming it.
    """
    from calibmonai.datasets.common import is_junk, natural_key

    if isinstance(inputs, (list, tuple)):
        files = [str(f) for f in inputs]
    elif os.path.isdir(str(inputs)):
        ends = tuple(e.lower() for e in extensions)
        files = sorted((os.path.join(str(inputs), f) for f in os.listdir(str(inputs)) if f.lower().endswith(ends)), key=natural_key)
    elif any(ch in str(inputs) for ch in "*?["):
        ends = tuple(e.lower() for e in extensions)
        matches = sorted(glob.glob(str(inputs)), key=natural_key)
        files = [f for f in matches if f.lower().endswith(ends)]
        left_out = [f for f in matches if not f.lower().endswith(ends) and not is_junk(f)]
        if left_out and extensions:  # a case folder's Info.cfg, a README, sub-folders: never scans
            logging.getLogger("calibmonai.inference").info(
                f"left out {len(left_out)} match(es) of {inputs!r} that are not scans (extensions {', '.join(extensions)}), "
                f"e.g. {os.path.basename(left_out[0])}"
            )
    elif os.path.exists(str(inputs)):
        files = [str(inputs)]
    else:
        raise FileNotFoundError(f"the input {str(inputs)!r} does not exist.")
    return [f for f in files if not is_junk(f)]


def scan_hint(
    folder: str, check: Callable[[str], Any] | None = None, extensions: Sequence[str] = SCAN_EXTENSIONS, max_depth: int = 3
) -> str:
    """For a folder that holds no scan itself: where scans lie below it (up to ``max_depth`` levels), as a sentence
    naming the folders to give (when there are at most three) and the globs that take every scan (a released test
    set's case folders: ``'testing/*/*.nii.gz'``; WMH site folders: ``'Utrecht/*/pre/*.nii.gz'``); ``""`` when there
    is none. ``check(path_or_glob)`` (e.g. :func:`find_scans` with the bundle's modality names) must accept each
    proposal, so no folder of labels only or glob that fails is proposed."""
    from calibmonai.datasets.common import is_junk

    ends = tuple(e.lower() for e in extensions)
    found: dict[str, str] = {}  # relative folder -> an extension of a file with a scan extension in it
    base_depth = os.path.abspath(folder).rstrip(os.sep).count(os.sep)
    for here, dirs, names in os.walk(folder):
        depth = os.path.abspath(here).count(os.sep) - base_depth
        dirs[:] = sorted(d for d in dirs if not is_junk(d) and not d.startswith(".")) if depth < max_depth else []
        for n in names:
            if depth > 0 and n.lower().endswith(ends) and not is_junk(n):
                found.setdefault(os.path.relpath(here, folder), next(e for e in extensions if n.lower().endswith(e.lower())))
        if len(found) > 1000:
            break

    def accepted(candidate: str) -> bool:
        if check is None:
            return True
        quiet = logging.getLogger("calibmonai.inference")
        level, quiet.disabled = quiet.disabled, True  # the proposals' own notes are not this run's
        try:
            return bool(check(candidate))
        except (FileNotFoundError, ValueError):
            return False
        finally:
            quiet.disabled = level

    rel = sorted(found, key=lambda r: (r.count(os.sep), r))
    folders = [os.path.join(folder, r) for r in rel if accepted(os.path.join(folder, r))] if len(rel) <= 3 else []
    patterns: dict[str, list[str]] = {}
    for r in rel:  # the first level below the folder (cases, subjects) as a wildcard, the rest as found
        patterns.setdefault(os.sep.join(["*"] + r.split(os.sep)[1:]), []).append(r)
    globs = []
    for pattern, members in sorted(patterns.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        exts = {found[r] for r in members}
        candidate = os.path.join(folder, pattern, "*" + (exts.pop() if len(exts) == 1 else ""))
        if len(members) > 1 and accepted(candidate):  # a glob of one folder is that folder
            globs.append(candidate)
    globs = globs[:3]
    parts = [f"give {' or '.join(folders)}"] * bool(folders) + [f"every scan as a glob, quoted: {' or '.join(repr(g) for g in globs)}"] * bool(globs)
    if not parts:
        return ""
    return f" Scans lie in {len(rel)} folder(s) below it (e.g. {rel[0]}): " + "; or ".join(parts) + "."


def find_scans(
    inputs: str | Sequence[str],
    num_modalities: int = 1,
    modality_names: Sequence[str] | None = None,
    skip_names: Sequence[str] = (),
) -> list[tuple[str, list[str]]]:
    """Resolve a folder, a glob or a list of files into ``(case name, [file per modality])``.

    Files of one case, in channel order:

    - ``<case>_0000.ext``, ``<case>_0001.ext``, ... (nnU-Net's naming; with one modality ``<case>_0000`` is case
      ``<case>`` too);
    - with ``modality_names`` (a dataset's own naming, e.g. BraTS ``("flair", "t1", "t1ce", "t2")``):
      ``<case>_<name>.ext`` in the names' order, or ``<name>.ext`` alone in a subject folder (WMH's
      ``<subject>/pre/FLAIR.nii.gz``, the left atrium's ``<patient>/lgemri.nrrd``: the case is the subject folder);
      files named ``[<case>_]<skip name>`` (``skip_names``: reference segmentations such as BraTS ``seg``, other
      series such as ACDC's ``4d`` cine) are not scans and are left out;
    - any other file is a case of its own (for a multi-modal bundle: a 4D NIfTI file holding the modalities as its
      4th axis, as the decathlon distributes them); where ``modality_names`` named the other files of the input, a
      file that is neither named nor 4D (another series of the subject folder, ``3DT1.nii.gz``) is left out with a
      warning.

    Operating-system junk (``._*`` AppleDouble files, ``.DS_Store``, ...) is never a scan. A listed file that does not
    exist is kept (it fails later with its own reason).
    """
    files = input_files(inputs, SCAN_EXTENSIONS)

    def check(candidate: str) -> bool:  # a proposal must give whole scans: one file per modality, or one 4D file
        scans = find_scans(candidate, num_modalities, modality_names, skip_names)
        return bool(scans) and all(len(f) in (1, num_modalities) for _, f in scans)

    if not files:
        hint = scan_hint(str(inputs), check) if isinstance(inputs, (str, os.PathLike)) and os.path.isdir(str(inputs)) else ""
        raise FileNotFoundError(f"no scan found in {inputs!r} (extensions {', '.join(SCAN_EXTENSIONS)}).{hint}")
    named = _name_pattern(modality_names) if modality_names else None
    skipped = _name_pattern(skip_names) if skip_names else None
    order = {n.lower(): i for i, n in enumerate(modality_names or ())}
    cases: dict[str, list[tuple[int, str]]] = {}
    others: list[str] = []
    for f in files:
        stem = _strip_ext(f)
        if skipped is not None and skipped.match(stem):
            continue  # a reference segmentation (or another series) beside the scans
        m = named.match(stem) if named is not None else None
        if m:
            case = m.group("case") or _folder_case(f)
            cases.setdefault(case, []).append((order[m.group("name").lower()], f))
            continue
        m = MODALITY_PATTERN.match(stem)
        if m and (num_modalities > 1 or m.group("mod") == "0000"):
            cases.setdefault(m.group("case"), []).append((int(m.group("mod")), f))  # nnU-Net naming
            continue
        others.append(f)
    for f in others:
        if num_modalities > 1 and named is not None and cases and os.path.isfile(f) and _nifti_channels(f) != num_modalities:
            logging.getLogger("calibmonai.inference").warning(
                f"left out {f}: not one of the modality files ({', '.join(modality_names or ())}) nor a 4D file of "
                f"{num_modalities} channels"
            )
            continue
        cases.setdefault(_strip_ext(f), []).append((0, f))
    if not cases:
        hint = scan_hint(str(inputs), check) if isinstance(inputs, (str, os.PathLike)) and os.path.isdir(str(inputs)) else ""
        raise FileNotFoundError(f"no scan found in {inputs!r}: only files named {', '.join(skip_names)} (not scans).{hint}")
    return [(case, [f for _, f in sorted(entries)]) for case, entries in cases.items()]


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


def output_provenance(checkpoint: str, calibrator: Any = None, run_dir: str | None = None) -> dict[str, str]:
    """What makes a scan's maps: the weights (path and sha256) and the calibrator (``"none"``, or its name and the
    sha256 of its file ``<run_dir>/models/calibrator_<name>.pt``; a calibrator object: its class and the sha256 of
    its state). :class:`ScanInferenceEngine` keeps it per case in the output folder's :data:`OUTPUTS_RECORD`, and
    keeps existing outputs only when they were made the same way."""
    import hashlib
    import io

    from calibmonai.calibration.base import file_sha256

    record = {"checkpoint": os.path.abspath(checkpoint), "checkpoint_sha256": file_sha256(checkpoint) if os.path.isfile(checkpoint) else "missing"}
    if calibrator in (None, "", "none", "None"):
        record["calibrator"] = "none"
    elif isinstance(calibrator, str):
        from calibmonai.calibration.workflow import calibrator_path

        path = calibrator_path(run_dir or os.path.dirname(os.path.dirname(os.path.abspath(checkpoint))), calibrator)
        record["calibrator"] = calibrator
        record["calibrator_sha256"] = file_sha256(path) if os.path.isfile(path) else "missing"
    elif hasattr(calibrator, "state_dict"):
        buffer = io.BytesIO()
        torch.save(calibrator.state_dict(), buffer)
        record["calibrator"] = type(calibrator).__name__
        record["calibrator_sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    else:  # a plain function: its qualified name (its repr holds a memory address, another at every run)
        name = f"{getattr(calibrator, '__module__', '?')}.{getattr(calibrator, '__qualname__', type(calibrator).__qualname__)}"
        record["calibrator"] = name
        record["calibrator_sha256"] = hashlib.sha256(name.encode()).hexdigest()
    return record


#: what identifies the maker of a case's maps: the weights' and calibrator's contents (not where the files lie: a
#: moved run or export still makes the same maps)
_IDENTITY = ("checkpoint_sha256", "calibrator", "calibrator_sha256")


def _same_maker(recorded: Mapping[str, str] | None, current: Mapping[str, str] | None) -> bool:
    return bool(recorded) and bool(current) and all(recorded.get(k) == current.get(k) for k in _IDENTITY)  # type: ignore[union-attr]


def _made_otherwise(recorded: Mapping[str, str] | None, current: Mapping[str, str]) -> str:
    """How existing outputs (``recorded`` provenance) differ from what this run would write (``current``)."""
    if not recorded:
        return f"no record in {OUTPUTS_RECORD} says which weights and calibrator made them"

    def weights(r: Mapping[str, str]) -> str:
        return f"{r.get('checkpoint', '?')} (sha256 {str(r.get('checkpoint_sha256', '?'))[:12]})"

    def calibrator(r: Mapping[str, str]) -> str:
        name = r.get("calibrator", "none")
        return name if name == "none" else f"{name} (sha256 {str(r.get('calibrator_sha256', '?'))[:12]})"

    parts = []
    if recorded.get("checkpoint_sha256") != current.get("checkpoint_sha256"):
        parts.append(f"they were made with the weights {weights(recorded)}, this run uses {weights(current)}")
    if calibrator(recorded) != calibrator(current):
        parts.append(f"they were made with calibrator {calibrator(recorded)}, this run uses {calibrator(current)}")
    return "; ".join(parts) or "they were made another way"


def scan_datalist(
    inputs: str | Sequence[str],
    num_modalities: int = 1,
    modality_names: Sequence[str] | None = None,
    skip_names: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The inference dataset's items: ``{"case": name, "image": file or [file per modality]}`` of ``inputs``
    (a folder, a glob or a list of files; see :func:`find_scans`). No scan gives an empty list (so a bundle's
    config can be built and checked before any scan exists); :class:`ScanInferenceEngine` refuses to run on it."""
    try:
        scans = find_scans(inputs, num_modalities, modality_names, skip_names)
    except FileNotFoundError:
        return []
    return [{"case": case, "image": files if len(files) > 1 else files[0], "files": files} for case, files in scans]


def case_name(path: str) -> str:
    """Case name of a scan file: its name without extension and without a ``_0000`` modality suffix."""
    stem = _strip_ext(str(path))
    m = MODALITY_PATTERN.match(stem)
    return m.group("case") if m else stem


def scan_name_formatter(metadict: dict, saver: Any) -> dict:
    """``output_name_formatter`` of the bundles' ``SaveImaged``: outputs are named after the case
    (``<case>_seg.nii.gz``), not after the first modality's file (``<case>_0000``)."""
    from monai.utils import ImageMetaKey

    if metadict and metadict.get("case_name"):  # set by ProbabilityMapsd from the dataset item's case
        return {"subject": f"{metadict['case_name']}.nii.gz", "idx": None}
    source = metadict.get(ImageMetaKey.FILENAME_OR_OBJ, "") if metadict else ""
    if isinstance(source, (list, tuple)):
        source = source[0]
    # FolderLayout strips one extension (two for .gz) from the subject: give it one, so dots in a case name stay
    return {"subject": f"{case_name(str(source))}.nii.gz", "idx": None}


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's ``NibabelWriter`` writing to a temporary name in the same folder, then renaming: an interrupted run
    never leaves a truncated output under the final name.

    A one-channel map (segmentation, confidence, uncertainty) keeps every spatial dimension of its scan: MONAI's
    ``squeeze_end_dims`` also drops trailing spatial dimensions of size 1, so a 40 x 40 x 1 scan got 40 x 40 maps
    (and a 1 x 1 x 1 one made the writer fail); only the channel is dropped here."""

    def set_data_array(self, data_array: Any, channel_dim: int | None = 0, squeeze_end_dims: bool = True, **kwargs: Any) -> None:
        single = squeeze_end_dims and channel_dim == 0 and data_array.ndim > 1 and data_array.shape[0] == 1
        super().set_data_array(data_array, channel_dim=channel_dim, squeeze_end_dims=squeeze_end_dims and not single, **kwargs)
        if single:
            self.data_obj = self.data_obj.reshape(tuple(data_array.shape[1:]))

    def write(self, filename: Any, verbose: bool = False, **obj_kwargs: Any) -> Any:
        with atomic_file(str(filename)) as tmp:
            super().write(str(tmp), verbose=verbose, **obj_kwargs)


class CalibratedLogProbabilitiesd(MapTransform):
    """Turn the network's logits ``pred`` (``(C, *spatial)``) into log-probabilities (softmax, or a fitted
    calibrator's probabilities) with an extra all-ones channel marking the field of view, ready for MONAI's
    ``Invertd``: log-probabilities are interpolated back to the scan's grid (class-wise offsets of the calibrated
    logits, so temperature scaling keeps the label map exactly) and the last channel tells which voxels the
    network saw.

    Args:
        keys: the prediction key (``pred``).
        calibrator: optional ``calibrator(logits (1, C, ...), image (1, M, ...))`` -> probabilities.
        image_key: the input image (an image-dependent calibrator such as LTS reads it).
    """

    def __init__(self, keys: Any = "pred", calibrator: Callable | None = None, image_key: str = "image") -> None:
        super().__init__(keys)
        self.calibrator = calibrator
        self.image_key = image_key

    def __call__(self, data: dict) -> dict:
        from monai.data import MetaTensor

        from calibmonai.prediction import to_probabilities

        d = dict(data)
        image = d[self.image_key]
        for key in self.key_iterator(d):
            logits = torch.as_tensor(d[key]).float().cpu()
            prob = to_probabilities(logits[None], torch.as_tensor(image), self.calibrator)[0]
            log_p = torch.log(prob.clamp_min(1e-12))
            stacked = torch.cat([log_p, torch.ones_like(log_p[:1])])
            d[key] = MetaTensor(stacked, affine=image.affine, meta=dict(image.meta), applied_operations=list(image.applied_operations))
        return d


class ProbabilityMapsd(MapTransform):
    """From inverted log-probabilities with a field-of-view channel (:class:`CalibratedLogProbabilitiesd` then
    ``Invertd``), write the maps a clinician reads, each a channel-first ``MetaTensor`` in the scan's grid:
    ``seg`` (argmax, first index on ties), ``conf`` (max probability), ``uncertainty`` (entropy / log C in [0, 1])
    and ``prob`` (per-class probabilities). Voxels outside the network's field of view are background.

    Args:
        keys: the inverted prediction key (``pred``).
        num_classes: number of classes C (the last input channel is the field of view).
        case_key: the item's case name (:func:`scan_datalist`), recorded in the maps' metadata as ``case_name`` so the
            outputs are named after the case whatever its files are called.
    """

    def __init__(self, keys: Any = "pred", num_classes: int = 2, case_key: str = "case") -> None:
        super().__init__(keys)
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
        self.num_classes = num_classes
        self.case_key = case_key

    def __call__(self, data: dict) -> dict:
        from monai.data import MetaTensor

        d = dict(data)
        for key in self.key_iterator(d):
            inverted = d[key]
            values = torch.as_tensor(inverted).float()
            if values.shape[0] != self.num_classes + 1:
                raise ValueError(f"{key} has {values.shape[0]} channels, expected {self.num_classes} classes + 1 field-of-view channel.")
            prob = torch.softmax(values[:-1], dim=0)
            outside = values[-1:] < 0.5
            background = torch.zeros_like(prob)
            background[0] = 1.0
            prob = torch.where(outside, background, prob)
            conf, seg = prob.max(0, keepdim=True)
            entropy = (-(prob * torch.log(prob.clamp_min(1e-12))).sum(0, keepdim=True) / math.log(self.num_classes)).clamp(0, 1)
            meta = dict(getattr(inverted, "meta", {}))
            if d.get(self.case_key):
                meta["case_name"] = str(d[self.case_key])
            affine = getattr(inverted, "affine", None)
            for name, arr in (("seg", seg.to(torch.uint8)), ("conf", conf), ("uncertainty", entropy), ("prob", prob)):
                d[name] = MetaTensor(arr, affine=affine, meta=dict(meta))
        return d


def _root_message(error: BaseException) -> str:
    """The innermost error's message (MONAI wraps a reader's error in 'applying transform <repr>' errors)."""
    root = error
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    text = str(root).strip()
    return (text.splitlines()[-1] if text else type(root).__name__)[:200]


class ScanInferenceEngine:
    """The inference bundles' ``evaluator``: runs ``preprocessing`` -> ``inferer`` -> ``postprocessing`` (which
    saves the outputs with MONAI's ``SaveImaged``) over every scan of ``dataset``, one scan at a time.

    A scan that fails (missing, unreadable, wrong modalities or dimensionality, non-finite values) is reported
    with a one-line reason naming the file and the reader's own error, and the others go on; existing outputs are
    kept unless ``overwrite``. The same ``preprocessing``/``inferer``/``postprocessing`` objects are what a
    MONAI Deploy bundle operator reads from the config.

    Args:
        dataset: a MONAI ``Dataset`` of :func:`scan_datalist` items whose ``transform`` is the preprocessing.
        network: the trained network (weights loaded by the config's ``checkpointloader``).
        inferer: ``inferer(image, network)`` -> logits (``SliceInferer`` for a 2D network on volumes).
        postprocessing: dictionary transform on ``{"image", "pred"}`` that writes the outputs.
        output_dir, output_ext, postfixes: where the outputs go and which ones a finished scan has
            (``<case>_<postfix><ext>``), to skip finished scans.
        num_modalities, spatial_dims: what a valid scan has.
        provenance: what makes the maps (:func:`output_provenance`: weights and calibrator), recorded per case in
            ``output_dir/calibmonai_outputs.json``. Without ``overwrite`` a finished scan is skipped only when its
            outputs were recorded with the same provenance; outputs of other weights, another calibrator, or unrecorded
            ones fail that scan (nothing written) and say so. ``None``: finished scans are skipped whatever made them.
    """

    def __init__(
        self,
        dataset: Any,
        network: torch.nn.Module,
        inferer: Callable,
        postprocessing: Callable,
        output_dir: str,
        postfixes: Sequence[str] = ("seg", "conf", "uncertainty"),
        output_ext: str = ".nii.gz",
        overwrite: Any = False,
        num_modalities: int = 1,
        spatial_dims: int = 3,
        device: Any = "cpu",
        amp: bool = False,
        source: Any = None,
        provenance: Mapping[str, str] | None = None,
    ) -> None:
        from calibmonai.bundle_tools import as_bool

        self.dataset = dataset
        self.network = network
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.output_dir = str(output_dir)
        self.postfixes = list(postfixes)
        self.output_ext = output_ext if output_ext.startswith(".") else f".{output_ext}"
        self.overwrite = as_bool(overwrite, "overwrite")
        self.num_modalities = int(num_modalities)
        self.spatial_dims = int(spatial_dims)
        self.device = torch.device(device)
        self.amp = bool(amp) and self.device.type == "cuda"
        self.summary = InferenceSummary()
        self.source = source
        self.provenance = dict(provenance) if provenance else None

    def _check_files(self, files: Sequence[str]) -> None:
        for f in files:
            if not os.path.isfile(f):
                raise ScanError(f"file not found: {f}")
        if len(files) == 1 and self.num_modalities > 1 and _nifti_channels(files[0]) == self.num_modalities:
            return  # one 4D file holding every modality (the decathlon's layout); its axes are checked once read
        if len(files) != self.num_modalities:
            one_file = f" or one 4D NIfTI file of {self.num_modalities} channels" if self.num_modalities > 1 else ""
            raise ScanError(f"expected {self.num_modalities} modality file(s) per scan{one_file}, got {len(files)}: {[os.path.basename(f) for f in files]}")
        for f in files:
            if f.lower().endswith((".nii", ".nii.gz")):
                try:
                    ndim = len(nib.load(f).shape)
                except Exception as e:  # noqa: BLE001
                    raise ScanError(f"cannot read the NIfTI header of {f} (corrupt?): {_root_message(e)}") from e
                if ndim < self.spatial_dims:
                    raise ScanError(f"a {ndim}D image given to a model that segments {self.spatial_dims}D scans ({os.path.basename(f)})")

    def _check_image(self, image: Any) -> None:
        if image.ndim - 1 != self.spatial_dims:
            raise ScanError(f"a {image.ndim - 1}D image given to a model that segments {self.spatial_dims}D scans (shape {tuple(image.shape[1:])})")
        if image.shape[0] != self.num_modalities:
            raise ScanError(f"expected {self.num_modalities} channel(s), the scan has {image.shape[0]}")
        if not bool(torch.isfinite(torch.as_tensor(image)).all()):
            raise ScanError("the scan contains non-finite voxel values (NaN or Inf)")

    def _is_output(self, item: dict) -> bool:
        """Whether ``item`` is an output of an earlier run in this output folder (``<case>_seg<ext>``, ...): with the
        output folder the input folder, the second run would otherwise segment its own outputs."""
        out = os.path.realpath(self.output_dir)
        files = list(item.get("files") or ([item["image"]] if isinstance(item["image"], str) else item["image"]))
        return all(
            os.path.realpath(os.path.dirname(os.path.abspath(f))) == out
            and str(f).lower().endswith(self.output_ext.lower())
            and re.fullmatch(rf".+_({'|'.join(OUTPUT_SUFFIXES)})", os.path.basename(str(f))[: -len(self.output_ext)]) is not None
            for f in files
        )

    def _existing_outputs(self, case: str) -> tuple[list[str], list[str]]:
        """``(existing, missing)``: this run's outputs of ``case`` that exist and do not, and any other output of
        ``case`` that an earlier run left (``_prob`` of a run with probability maps) among the existing."""
        wanted = [os.path.join(self.output_dir, f"{case}_{p}{self.output_ext}") for p in self.postfixes]
        others = [os.path.join(self.output_dir, f"{case}_{p}{self.output_ext}") for p in OUTPUT_SUFFIXES if p not in self.postfixes]
        existing = [f for f in wanted + others if os.path.isfile(f)]
        return existing, [f for f in wanted if not os.path.isfile(f)]

    def _records(self) -> dict[str, Any]:
        """The output folder's record (:data:`OUTPUTS_RECORD`), ``{}`` when there is none.

        Raises:
            ValueError: for a record that cannot be read or is not a JSON object, naming it (it would otherwise be
                overwritten with this run's cases only, and every finished case taken as unrecorded).
        """
        path = os.path.join(self.output_dir, OUTPUTS_RECORD)
        if not os.path.exists(path):
            return {}
        try:
            with open(path) as f:
                records = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"the outputs record {path} cannot be read ({type(e).__name__}: {e}): move it away (the outputs it described then count as unrecorded) and run again.") from e
        if not isinstance(records, dict):
            raise ValueError(f"the outputs record {path} is not a JSON object of cases: move it away and run again.")
        return records

    def _recorded(self, case: str) -> dict[str, str] | None:
        """The provenance recorded for ``case``'s outputs, ``None`` when none was."""
        found = self._records().get(case)
        return found if isinstance(found, dict) else None

    def _record(self, case: str, provenance: Mapping[str, str] | None) -> None:
        """Record what made ``case``'s outputs, or (``None``) that it is unknown: before outputs are replaced (a scan
        failing half-way through must not keep the earlier maker's record beside the new maps), and after they were
        written.

        Raises:
            ScanError: when the record cannot be written (its folder read-only, the disk full).
        """
        path = os.path.join(self.output_dir, OUTPUTS_RECORD)
        with folder_lock(self.output_dir):  # another run writing into this folder must not lose this case or its own
            records = self._records()
            if provenance is None:
                if records.pop(case, None) is None:
                    return
            else:
                records[case] = dict(provenance)
            try:
                with atomic_file(path) as tmp:
                    tmp.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
            except OSError as e:
                raise ScanError(f"cannot write the outputs record {path}: {e}") from e

    def run(self) -> InferenceSummary:
        """Segment every scan; raises ``RuntimeError`` listing the failures after all scans were tried."""
        items = list(self.dataset.data)
        earlier = [it for it in items if self._is_output(it)]
        if earlier:
            items = [it for it in items if not self._is_output(it)]
            _log(f"[inference] left out {len(earlier)} file(s) of the output folder that are outputs of an earlier run "
                 f"(e.g. {os.path.basename(str((earlier[0].get('files') or [earlier[0]['image']])[0]))})")  # fmt: skip
            if not items:
                raise FileNotFoundError(f"no scan found in {self.source!r}: only outputs of an earlier run ({len(earlier)} file(s)).")
        if not items:
            source = self.source
            if isinstance(source, (str, os.PathLike)) and not any(ch in str(source) for ch in "*?[") and not os.path.exists(source):
                raise FileNotFoundError(f"the input {str(source)!r} does not exist (give a folder of scans, a glob or a file).")
            hint = scan_hint(str(source)) if isinstance(source, (str, os.PathLike)) and os.path.isdir(str(source)) else ""
            raise FileNotFoundError(f"no scan found in {source!r} (extensions {', '.join(SCAN_EXTENSIONS)}).{hint}")
        os.makedirs(self.output_dir, exist_ok=True)
        self._records()  # a damaged record stops the run before any scan, naming it
        transform = self.dataset.transform
        self.network.eval()
        summary = self.summary = InferenceSummary()
        t0 = time.time()
        for i, item in enumerate(items):
            case = item["case"]
            files = list(item.get("files") or ([item["image"]] if isinstance(item["image"], str) else item["image"]))
            prefix = f"[inference] {i + 1}/{len(items)} {case}"
            existing, missing = self._existing_outputs(case)
            made_by = self._recorded(case)
            if not self.overwrite and existing and not missing and (self.provenance is None or _same_maker(made_by, self.provenance)):
                summary.skipped.append(case)
                _log(f"{prefix}: outputs exist, skipped (use --overwrite)")
                continue
            try:
                if not self.overwrite and existing and not missing:  # complete, but made another way
                    raise ScanError(
                        f"its outputs exist but {_made_otherwise(made_by, self.provenance or {})}: nothing written; "
                        f"--overwrite true to replace them, or another --output"
                    )
                if not self.overwrite and existing:  # never rewrite some outputs and keep others (of another run)
                    raise ScanError(
                        f"some outputs exist ({', '.join(os.path.basename(f) for f in existing)}) and others do not "
                        f"({', '.join(os.path.basename(f) for f in missing)}): nothing written; --overwrite true to redo the scan's outputs"
                    )
                self._check_files(files)
                try:
                    data = transform(dict(item))
                except Exception as e:  # noqa: BLE001 - any reader error is this scan's failure
                    raise ScanError(f"cannot read or preprocess {files[0] if len(files) == 1 else files} (corrupt, truncated or unsupported?): {_root_message(e)}") from e
                image = data["image"]
                self._check_image(image)
                with torch.no_grad(), torch.autocast(self.device.type, enabled=self.amp):
                    logits = self.inferer(torch.as_tensor(image)[None].float().to(self.device), self.network)
                data["pred"] = torch.as_tensor(logits)[0].float().cpu()
                if existing:  # outputs about to be replaced (--overwrite): their maker's record goes first
                    self._record(case, None)
                try:
                    data = self.postprocessing(data)
                except Exception as e:  # noqa: BLE001 - inversion or writing failed for this scan: the others go on
                    raise ScanError(f"cannot map back or write the outputs of {files[0] if len(files) == 1 else files}: {_root_message(e)}") from e
                self._record(case, self.provenance)
                summary.done.append(case)
                conf = data.get("conf")
                extra = f", mean confidence {float(torch.as_tensor(conf).float().mean()):.3f}" if conf is not None else ""
                _log(f"{prefix}: done, shape {tuple(torch.as_tensor(data.get('seg', image)).shape[1:])}{extra} ({time.time() - t0:.0f} s)")
            except ScanError as e:
                summary.failed[case] = str(e)
                _log(f"{prefix}: FAILED: {e}")
        for line in summary.lines():
            _log(f"[inference] {line}")
        if summary.failed:
            raise RuntimeError(f"{len(summary.failed)} of {len(items)} scan(s) failed: " + "; ".join(f"{c}: {w}" for c, w in summary.failed.items()))
        return summary


def _log(message: str) -> None:
    """Progress line: printed (the CLI's user reads it) and sent to ``logging`` (a bundle's logging.conf routes it)."""
    print(message, flush=True)
    logging.getLogger("calibmonai.inference").debug(message)


def save_transforms(output_dir: str, save_probs: Any = False, output_ext: str = ".nii.gz", separate_folder: bool = False) -> list:
    """The ``SaveImaged`` transforms of the inference outputs, MONAI's conventions: ``<case>_seg`` (uint8),
    ``<case>_conf``, ``<case>_uncertainty`` and with ``save_probs`` ``<case>_prob`` (float32; 4D, class last)."""
    from monai.transforms import SaveImaged

    from calibmonai.bundle_tools import as_bool

    keys = [("seg", np.uint8), ("conf", np.float32), ("uncertainty", np.float32)]
    if as_bool(save_probs, "save_probs"):
        keys.append(("prob", np.float32))
    return [
        SaveImaged(keys=k, output_dir=output_dir, output_postfix=k, output_ext=output_ext, separate_folder=separate_folder,
                   output_dtype=dtype, resample=False, writer=AtomicNibabelWriter, output_name_formatter=scan_name_formatter,
                   print_log=False)  # fmt: skip
        for k, dtype in keys
    ]


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
    overwrite: Any = False,
    save_probs: Any = False,
    num_modalities: int = 1,
    spatial_dims: int = 3,
) -> InferenceSummary:
    """Segment every scan of ``inputs`` (Python entry point; the bundles build the same pipeline in
    ``inference.yaml``) and write, in the scan's own grid, affine and orientation: ``<case>_seg.nii.gz``,
    ``<case>_conf.nii.gz``, ``<case>_uncertainty.nii.gz`` and, with ``save_probs``, ``<case>_prob.nii.gz``.

    Raises:
        RuntimeError: after every scan was tried, when any failed (the message lists them).
    """
    from monai.data import Dataset
    from monai.transforms import Compose, Invertd

    from calibmonai.bundle_tools import as_bool
    from calibmonai.prediction import load_checkpoint

    load_checkpoint(network, checkpoint, device)
    postprocessing = Compose([
        CalibratedLogProbabilitiesd(keys="pred", calibrator=calibrator),
        Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=False, to_tensor=True),
        ProbabilityMapsd(keys="pred", num_classes=num_classes),
        *save_transforms(output_dir, save_probs),
    ])  # fmt: skip
    postfixes = list(OUTPUT_SUFFIXES if as_bool(save_probs, "save_probs") else OUTPUT_SUFFIXES[:3])
    engine = ScanInferenceEngine(
        Dataset(scan_datalist(inputs, num_modalities), transform=preprocessing), network, inferer, postprocessing,
        output_dir, postfixes=postfixes, overwrite=overwrite, num_modalities=num_modalities, spatial_dims=spatial_dims,
        device=device, source=inputs, provenance=output_provenance(checkpoint, calibrator),
    )  # fmt: skip
    return engine.run()
