"""Prostate MRI: PROMISE12 (MICCAI 2012 grand challenge) and the Medical Segmentation Decathlon Task05 prostate.

Litjens, G. et al. "Evaluation of prostate segmentation algorithms for MRI: the PROMISE12 challenge." Medical
Image Analysis 18(2), 2014. https://promise12.grand-challenge.org/
Antonelli, M. et al. "The Medical Segmentation Decathlon." Nature Communications 13, 4128 (2022).

Two layouts are read (``layout="auto"`` picks the one found under the given folder):

``promise12`` -- the challenge download (``TrainingData_Part1.zip`` ... ``Part3``, unzipped side by side or
into one folder; MetaImage header ``.mhd`` + raw voxels ``.raw``, read through MONAI's ``ITKReader``)::

    TrainingData_Part1/Case00.mhd  Case00.raw                            T2-weighted volume (MET_SHORT)
    TrainingData_Part1/Case00_segmentation.mhd  Case00_segmentation.raw  reference (MET_CHAR, signed 8-bit, 0/1)
    TrainingData_Part2/...  TrainingData_Part3/...                       Case00 ... Case49
    TestData/Case00.mhd ...                                              no reference: not read
    training_data/Case00.mhd ...                                         Zenodo's copy: the 50 cases in one folder

  The publisher's voxel types: T2 SHORT (16-bit signed), reference CHAR (8-bit signed, which ITK's Python wheels do
  not wrap: :class:`~calibmonai.datasets.itk_reader.AnyPixelITKReader` reads it as float).

  Labels 0 background, 1 prostate (whole gland). Test-data folders (``TestData``, ``Test``, ``test_data``,
  ``LiveChallengeTestData``), and any folder of ``CaseNN.mhd`` files without a single ``_segmentation`` file
  beside labelled folders, are not read: their cases have no reference and reuse the names ``Case00`` ...;
  a case name found twice elsewhere is refused.

``msd`` -- ``Task05_Prostate`` of the decathlon (Radboud University Nijmegen; nnU-Net's
``convert_MSD_dataset.py`` reads the same files)::

    dataset.json                         name "PROSTATE", modality {"0": "T2", "1": "ADC"},
                                         labels {"0": "background", "1": "PZ", "2": "TZ"}, numTraining 32
    imagesTr/prostate_00.nii.gz          4D: (x, y, z, 2), channel 0 T2, channel 1 ADC
    labelsTr/prostate_00.nii.gz          0 background, 1 peripheral zone (PZ), 2 transition zone (TZ)
    imagesTr/._prostate_00.nii.gz        macOS AppleDouble junk: ignored

The task defined here is the one both layouts share: whole-gland segmentation from T2 (:data:`CLASS_NAMES`,
:data:`MODALITIES`). :func:`label_transform` merges PZ and TZ into the gland and :class:`SelectChannelsd`
keeps the T2 channel of the decathlon volumes (a no-op on the single-channel PROMISE12 volumes). The zonal
task of the decathlon (:data:`ZONE_CLASS_NAMES`, the 3-class prostate of the MbLS study) is
``label_transform(zones=True)`` on the ``msd`` layout.

Split: 70/10/20 of the cases (35/5/10 of the 50 PROMISE12 cases; the same fractions, 23/3/6, for the 32
decathlon cases), seeded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapLabelValued, MapTransform

from calibmonai.datasets import common
from calibmonai.datasets.common import Case
from calibmonai.datasets.msd_hippocampus import find_msd_dir, msd_cases

__all__ = [
    "NAME",
    "CLASS_NAMES",
    "LABEL_VALUES",
    "MODALITIES",
    "SCAN_SKIP_NAMES",
    "SPLIT_COUNTS",
    "KNOWN_IDS",
    "LAYOUTS",
    "ZONE_CLASS_NAMES",
    "MSD_LABEL_VALUES",
    "MSD_MODALITIES",
    "MSD_DATASET_JSON_LABELS",
    "find_folders",
    "mhd_data_file",
    "read_itk",
    "check_itk_case",
    "detect_layout",
    "find_cases",
    "check_case",
    "make_split",
    "datalist",
    "label_transform",
    "SelectChannelsd",
]

NAME = "promise12"
CLASS_NAMES = ("background", "prostate")
#: values of the PROMISE12 ``_segmentation`` files
LABEL_VALUES = (0, 1)
MODALITIES = ("T2",)
#: inference on files named as published: ``CaseNN.mhd`` scans; the ``CaseNN_segmentation`` references left out
SCAN_SKIP_NAMES = ("segmentation",)

SPLIT_COUNTS = (35, 5, 10)
#: the 50 PROMISE12 training cases (the ``promise12`` layout)
KNOWN_IDS = tuple(f"Case{i:02d}" for i in range(50))
LAYOUTS = ("promise12", "msd")

ZONE_CLASS_NAMES = ("background", "PZ", "TZ")
#: values of the decathlon ``labelsTr`` files
MSD_LABEL_VALUES = (0, 1, 2)
MSD_MODALITIES = ("T2", "ADC")
MSD_DATASET_JSON_LABELS = {"0": "background", "1": "PZ", "2": "TZ"}

_MSD_TASK = "PROSTATE"
_CASE = re.compile(r"^(?P<cid>case\d+)(?P<seg>_segmentation)?\.mhd$", re.IGNORECASE)
#: folders of unlabelled challenge data (``TestData``, ``LiveChallengeTestData``...): not read
_TEST_DIR = re.compile(r"^(live[ _-]?challenge[ _-]?)?test(ing)?([ _-]?(data|set|cases|images))?$", re.IGNORECASE)


# ------------------------------------------------------------------------------------------ ITK files


def _mhd_fields(path: str | Path) -> dict[str, str]:
    """The ``key = value`` lines of a MetaImage header, keys lower-cased."""
    with open(path, "rb") as f:
        head = f.read(65536).decode("latin-1", errors="replace")
    fields = {}
    for line in head.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    return fields


def mhd_data_file(path: str | Path) -> Path | None:
    """The voxel file named by the ``ElementDataFile`` line of a MetaImage header (relative to the header),
    or ``None`` when the header embeds its voxels (``LOCAL``) or names a list of files."""
    value = _mhd_fields(path).get("elementdatafile")
    if value is None or value.upper() == "LOCAL" or value.upper().startswith("LIST") or "%" in value:
        return None
    return Path(path).parent / value


#: bytes per voxel of the MetaImage element types whose size MetaIO fixes
_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_FLOAT": 4, "MET_DOUBLE": 8, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8}


def mhd_expected_bytes(path: str | Path) -> int | None:
    """The size in bytes of the uncompressed voxel file a MetaImage header describes (``HeaderSize`` +
    ``DimSize`` x ``ElementNumberOfChannels`` x the element type's size), ``None`` when the header does not fix it
    (compressed data, ``HeaderSize = -1``, an element type of platform size, a field missing or malformed)."""
    fields = _mhd_fields(path)
    if fields.get("compresseddata", "false").lower() == "true" or fields.get("elementtype", "").upper() not in _MET_BYTES:
        return None
    try:
        dims = [int(v) for v in fields["dimsize"].split()]
        channels = int(fields.get("elementnumberofchannels", "1"))
        header = int(fields.get("headersize", "0"))
    except (KeyError, ValueError):
        return None
    if header < 0:  # -1: the voxels are the file's last bytes, whatever precedes them
        return None
    return header + int(np.prod(dims)) * channels * _MET_BYTES[fields["elementtype"].upper()]


def read_itk(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Voxels and metadata of a file read as the loader reads it: MONAI's ``ITKReader`` (array in
    ``(x, y, z)`` order, ``affine`` in RAS), the reference segmentations' signed 8-bit voxels (``MET_CHAR``, a type
    ITK's Python wrapping lacks) as floats (:class:`~calibmonai.datasets.itk_reader.AnyPixelITKReader`)."""
    from calibmonai.datasets.itk_reader import AnyPixelITKReader

    reader = AnyPixelITKReader()
    return reader.get_data(reader.read(str(path)))


def _load_itk(path: str, problems: list[str]) -> tuple[tuple[int, ...], np.ndarray, np.ndarray] | None:
    if not Path(path).is_file():
        problems.append(f"missing file: {path}")
        return None
    if path.lower().endswith(".mhd"):
        try:
            data_file = mhd_data_file(path)
        except OSError as e:
            problems.append(f"unreadable or corrupt file: {path} ({type(e).__name__}: {e})")
            return None
        if data_file is not None and not data_file.is_file():
            problems.append(f"missing file: {data_file} (the voxel file of {path})")
            return None
    try:
        array, meta = read_itk(path)
    except Exception as e:  # ITK raises RuntimeError for truncated or malformed files
        if path.lower().endswith(".mhd"):  # ITK names the header, and says "No such file" for a short voxel file
            try:
                data_file, need = mhd_data_file(path), mhd_expected_bytes(path)
                if data_file is not None and need is not None and data_file.stat().st_size != need:
                    problems.append(
                        f"truncated or corrupt voxel file: {data_file} holds {data_file.stat().st_size} bytes, its "
                        f"header {path} needs {need}"
                    )
                    return None
            except OSError:
                pass
        msg = " ".join(str(e).split())
        msg = msg if len(msg) <= 240 else "... " + msg[-240:]
        problems.append(f"unreadable or corrupt file: {path} ({type(e).__name__}: {msg})")
        return None
    shape = tuple(int(s) for s in np.asarray(meta.get("spatial_shape", array.shape)).tolist())
    return shape, np.asarray(meta["affine"], dtype=np.float64), np.asarray(array)


def check_itk_case(case: Case, label_values: Sequence[int], affine_atol: float = 1e-3) -> list[str]:
    """Problems of a case stored in ITK formats (``.mhd``/``.raw``, ``.nrrd``), each naming the file: missing
    header or voxel file, unreadable or truncated file, image and label on different grids (shape or affine,
    absolute tolerance ``affine_atol`` mm), label values outside ``label_values``."""
    problems: list[str] = []
    loaded = {}
    for p in list(case.images) + ([case.label] if case.label is not None else []):
        r = _load_itk(p, problems)
        if r is not None:
            loaded[p] = r
    if case.label is None:
        problems.append(f"no label file for case {case.id}")
    ref = next((p for p in case.images if p in loaded), None)
    if ref is not None:
        ref_shape, ref_affine, _ = loaded[ref]
        for p, (shape, affine, _) in loaded.items():
            if p == ref:
                continue
            if shape != ref_shape:
                problems.append(f"shape mismatch: {p} is {shape} but {ref} is {ref_shape}")
            elif not np.allclose(affine, ref_affine, atol=affine_atol):
                problems.append(f"affine mismatch: {p} and {ref} are not on the same grid")
    if case.label is not None and case.label in loaded:
        problems.extend(common.check_label_values(loaded[case.label][2], label_values, case.label))
    return problems


# ---------------------------------------------------------------------------------------------- layouts


def find_folders(
    root: str | Path,
    is_match: Callable[[Path], bool],
    skip: Callable[[str], Any] | None = None,
    max_depth: int = 4,
    descend: bool = False,
) -> list[Path]:
    """Every folder at or below ``root`` (breadth first, up to ``max_depth`` levels, junk skipped) for which
    ``is_match`` holds, without looking inside a match unless ``descend``; sub-folders whose name satisfies
    ``skip`` are not entered (e.g. the unlabelled ``TestData``).

    Raises:
        FileNotFoundError: naming ``root`` when it is not a folder.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data folder does not exist: {root}")
    if not root.is_dir():
        raise FileNotFoundError(f"data path is not a folder: {root}")
    out, level = [], [root]
    for _ in range(max_depth + 1):
        nxt: list[Path] = []
        for folder in level:
            if is_match(folder):
                out.append(folder)
                if not descend:
                    continue
            try:
                nxt.extend(p for p in common.list_dir(folder, dirs=True) if skip is None or not skip(p.name))
            except (FileNotFoundError, PermissionError):
                continue
        level = nxt
    return out


def _promise_files(root: Path, max_depth: int = 4) -> dict[str, dict[str, list[Path]]]:
    """``case id -> {"image": [...], "label": [...]}`` of the ``CaseNN[_segmentation].mhd`` files at or
    below ``root`` (breadth first, junk and test-data folders skipped)."""
    out: dict[str, dict[str, list[Path]]] = {}
    for folder in find_folders(root, lambda f: True, skip=_TEST_DIR.match, max_depth=max_depth, descend=True):
        for p in common.list_dir(folder, dirs=False):
            m = _CASE.match(p.name)
            if m:
                cid = "Case" + m.group("cid")[4:]
                key = "label" if m.group("seg") else "image"
                out.setdefault(cid, {"image": [], "label": []})[key].append(p)
    # a folder of images without any reference (unlabelled challenge data under another name) is not training
    labelled = {p.parent for entry in out.values() for p in entry["label"]}
    if labelled:
        for entry in out.values():
            entry["image"] = [p for p in entry["image"] if p.parent in labelled]
        out = {cid: e for cid, e in out.items() if e["image"] or e["label"]}
    return out


def _promise_cases(files: Mapping[str, Mapping[str, list[Path]]], strict: bool) -> list[Case]:
    cases = []
    for cid in sorted(files, key=common.natural_key):
        entry = files[cid]
        for key in ("image", "label"):
            if len(entry[key]) > 1:
                raise ValueError(f"case {cid} is in several folders: {[str(p) for p in entry[key]]}")
        image = entry["image"][0] if entry["image"] else None
        label = entry["label"][0] if entry["label"] else None
        folder = (image or label).parent  # type: ignore[union-attr]
        if image is None:
            image = folder / f"{cid}.mhd"
            if strict:
                raise FileNotFoundError(f"missing file: {image} (the image of {label})")
        if label is None:
            label = folder / f"{cid}_segmentation.mhd"
            if strict:
                raise FileNotFoundError(f"missing file: {label} (the reference of {image})")
        extra = {"layout": "promise12", "part": folder.name}
        cases.append(Case(id=cid, subject=cid, images=(str(image),), label=str(label), extra=extra))
    return cases


def detect_layout(root: str | Path) -> str:
    """``"promise12"`` or ``"msd"``: the layout found under ``root``.

    Raises:
        FileNotFoundError: when neither is found.
        AmbiguousDataError: when both are (a ``ValueError`` naming both folders).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder does not exist: {root}")
    promise_files = _promise_files(root)
    has_promise = bool(promise_files)
    try:
        msd_dir = find_msd_dir(root, _MSD_TASK)
        has_msd = True
    except FileNotFoundError:
        has_msd = False
    if has_promise and has_msd:
        promise_dir = os.path.commonpath([str(p.parent) for e in promise_files.values() for k in ("image", "label") for p in e[k]])
        raise common.AmbiguousDataError(
            f"{root} holds both PROMISE12 CaseNN.mhd files (in {promise_dir}) and a decathlon Task05_Prostate folder "
            f"({msd_dir}): give the one to use as the data folder (the bundle's --dataset_dir, check-data's --data; "
            f"in Python, find_cases(root, layout='promise12' or 'msd'))"
        )
    if not (has_promise or has_msd):
        raise FileNotFoundError(
            f"no PROMISE12 CaseNN.mhd / CaseNN_segmentation.mhd files and no decathlon Task05_Prostate folder "
            f"(imagesTr/, labelsTr/, dataset.json) in {root}"
        )
    return "promise12" if has_promise else "msd"


def find_cases(root: str | Path, strict: bool = True, layout: str = "auto") -> list[Case]:
    """The labelled training cases under ``root``.

    Args:
        root: the PROMISE12 folder (or ``TrainingData_Part1`` ...), the decathlon ``Task05_Prostate``, or a
            parent.
        strict: raise ``FileNotFoundError`` naming the first missing image or reference; when ``False`` keep the
            expected path for :func:`check_case` to report.
        layout: ``"auto"``, ``"promise12"`` or ``"msd"``; each case records it in ``extra["layout"]``.
    """
    if layout not in ("auto",) + LAYOUTS:
        raise ValueError(f"layout must be 'auto', 'promise12' or 'msd', got {layout!r}")
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "msd":
        cases = msd_cases(find_msd_dir(root, _MSD_TASK), strict=strict, labels=MSD_DATASET_JSON_LABELS)
        for c in cases:
            c.extra["layout"] = "msd"
        return cases
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder does not exist: {root}")
    files = _promise_files(root)
    if not files:
        raise FileNotFoundError(f"no PROMISE12 CaseNN.mhd / CaseNN_segmentation.mhd files in {root}")
    return _promise_cases(files, strict)


def check_case(case: Case) -> list[str]:
    """Problems of one case, each naming the file: missing ``.mhd`` or ``.raw``, unreadable or truncated file,
    image/reference grid mismatch, reference values outside 0/1 (PROMISE12); for the decathlon layout
    :func:`calibmonai.datasets.common.check_nifti_case` with two channels and labels 0-2."""
    if case.extra.get("layout") == "msd":
        return common.check_nifti_case(case, MSD_LABEL_VALUES, channels=len(MSD_MODALITIES))
    return check_itk_case(case, LABEL_VALUES)


def make_split(case_ids: Sequence[str], seed: int = 0) -> dict[str, list[str]]:
    """Seeded 70/10/20 split of the case ids (35/5/10 of the 50 PROMISE12 cases)."""
    return common.seeded_split(case_ids, SPLIT_COUNTS, seed)


def datalist(root: str | Path, split: Any = None, seed: int = 0, layout: str = "auto") -> dict[str, list[dict[str, Any]]]:
    """MONAI datalist of the training cases (``image``: the ``.mhd`` or 4D ``.nii.gz``, ``label``, ``case``,
    ``subject``, ``layout``, and ``part`` for PROMISE12)."""
    return common.build_datalist(find_cases(root, layout=layout), split, make_split, seed)


# ------------------------------------------------------------------------------------------- transforms


def label_transform(keys: KeysCollection = "label", zones: bool = False, allow_missing_keys: bool = False) -> MapLabelValued:
    """MONAI transform giving the classes of the task: the whole gland (PZ and TZ of the decathlon merged to 1;
    PROMISE12's 0/1 unchanged) or, with ``zones``, the decathlon zones as they are (:data:`ZONE_CLASS_NAMES`)."""
    target = [0, 1, 2] if zones else [0, 1, 1]
    return MapLabelValued(keys, orig_labels=[0, 1, 2], target_labels=target, allow_missing_keys=allow_missing_keys)


class SelectChannelsd(MapTransform):
    """Keep the given channels (first dimension) of channel-first images, e.g. ``channels=(0,)`` for the T2
    channel of the decathlon's (T2, ADC) volumes; a single-channel PROMISE12 volume is kept as it is when
    ``channels=(0,)``.

    Raises:
        ValueError: naming the key and shape when a channel index is out of range.
    """

    def __init__(self, keys: KeysCollection = "image", channels: Sequence[int] = (0,), allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = tuple(int(c) for c in channels)
        if not self.channels:
            raise ValueError("channels must name at least one channel")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            n = int(img.shape[0])
            bad = [c for c in self.channels if not -n <= c < n]
            if bad:
                raise ValueError(f"{key}: channels {bad} out of range for shape {tuple(img.shape)}")
            d[key] = img[list(self.channels)]
        return d
