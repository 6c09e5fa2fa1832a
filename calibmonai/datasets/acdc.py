"""ACDC: Automated Cardiac Diagnosis Challenge (cine MRI, MICCAI 2017).

Bernard, O. et al. "Deep Learning Techniques for Automatic MRI Cardiac Multi-Structures Segmentation and
Diagnosis: Is the Problem Solved?" IEEE TMI 37(11), 2018. https://www.creatis.insa-lyon.fr/Challenge/acdc/

Layout of the download (``ACDC/database/`` in the current release; the given folder may be ``ACDC``,
``database``, ``training`` itself, or any parent of these)::

    training/patient001/Info.cfg                    ED: 1 / ES: 12 / Group: DCM / Height / NbFrame / Weight
    training/patient001/patient001_4d.nii.gz        the whole cine sequence (not used)
    training/patient001/patient001_frame01.nii.gz   end-diastole (ED) frame
    training/patient001/patient001_frame01_gt.nii.gz
    training/patient001/patient001_frame12.nii.gz   end-systole (ES) frame
    training/patient001/patient001_frame12_gt.nii.gz
    testing/patient101/...                          same layout (the current release ships its ``_gt`` files)

Labels: 0 background, 1 right-ventricle cavity (RV), 2 myocardium (MYO), 3 left-ventricle cavity (LV); used
as they are. One case per (patient, phase): the ED and the ES frame of each patient, ``id`` the frame's file
stem (``patient001_frame01``), ``subject`` the patient. ``.nii`` and ``.nii.gz`` are both read; junk and
other files (``MANDATORY_CITATION.md``, ``._*``, ``.DS_Store``) are ignored.

Split (MbLS segmentation study, Murugesan et al. 2023): the 100 training patients, 70/10/20 at patient level;
``testing/`` patients, when present, are listed apart under the datalist key ``challenge_test``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from calibmonai.datasets import common
from calibmonai.datasets.common import Case

__all__ = [
    "NAME",
    "CLASS_NAMES",
    "LABEL_VALUES",
    "MODALITIES",
    "SCAN_SKIP_NAMES",
    "SPLIT_COUNTS",
    "KNOWN_IDS",
    "read_info",
    "patient_of",
    "find_cases",
    "check_case",
    "make_split",
    "datalist",
]

NAME = "acdc"
CLASS_NAMES = ("background", "RV", "MYO", "LV")
LABEL_VALUES = (0, 1, 2, 3)
MODALITIES = ("cine-MRI",)
#: inference on files named as published: a patient folder's ``_frameNN`` volumes; the ``_gt`` references and the ``_4d`` cine left out
SCAN_SKIP_NAMES = ("gt", "4d")

SPLIT_COUNTS = (70, 10, 20)
#: the 100 training patients of the release
KNOWN_IDS = tuple(f"patient{i:03d}" for i in range(1, 101))

_PATIENT = re.compile(r"^patient\d+$", re.IGNORECASE)
_PATIENT_PREFIX = re.compile(r"^(patient\d+)", re.IGNORECASE)
_FRAME_GT = re.compile(r"^(?P<pid>patient\d+)_frame(?P<frame>\d+)_gt$", re.IGNORECASE)


def _is_patient_dir(p: Path) -> bool:
    return p.is_dir() and bool(_PATIENT.match(p.name))


def _has_patients(folder: Path) -> bool:
    try:
        return any(_is_patient_dir(p) for p in common.list_dir(folder, dirs=True))
    except FileNotFoundError:
        return False


def read_info(path: str | Path) -> dict[str, Any]:
    """Parse an ACDC ``Info.cfg`` (``key: value`` lines) into ``{"ED": int, "ES": int, "Group": str,
    "Height": float, "NbFrame": int, "Weight": float}`` (the keys present).

    Raises:
        FileNotFoundError: when the file is missing.
        ValueError: naming the file when ``ED`` or ``ES`` is missing or not an integer.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")
    info: dict[str, Any] = {}
    for line in path.read_text(errors="replace").splitlines():
        if ":" not in line:
            continue
        key, value = (t.strip() for t in line.split(":", 1))
        info[key] = value
    out: dict[str, Any] = {}
    for key in ("ED", "ES"):
        try:
            out[key] = int(float(info[key]))
        except (KeyError, ValueError):
            raise ValueError(f"{path}: no integer {key} frame (read {info.get(key)!r})") from None
    if "Group" in info:
        out["Group"] = info["Group"]
    for key, cast in (("Height", float), ("Weight", float), ("NbFrame", int)):
        if key in info:
            try:
                out[key] = cast(float(info[key]))
            except ValueError:
                pass
    return out


def _frame_file(folder: Path, pid: str, frame: int, gt: bool, strict: bool) -> str:
    suffix = "_gt" if gt else ""
    for stem in (f"{pid}_frame{frame:02d}{suffix}", f"{pid}_frame{frame}{suffix}"):
        p = common.find_nifti(folder, stem)
        if p is not None:
            return str(p)
    return common.expect_nifti(folder, f"{pid}_frame{frame:02d}{suffix}", strict=strict)


def _patient_cases(folder: Path, subset: str, strict: bool, require_label: bool) -> list[Case]:
    pid = folder.name
    info_path = folder / "Info.cfg"
    if not info_path.is_file():
        alt = [p for p in common.list_dir(folder, dirs=False) if p.name.lower() == "info.cfg"]
        info_path = alt[0] if alt else info_path
    try:
        info = read_info(info_path)
    except (FileNotFoundError, ValueError):
        if strict:
            raise
        # without Info.cfg: the labelled frames, phase unknown; check_case reports the Info.cfg problem
        frames = []
        for p in common.list_dir(folder, dirs=False):
            m = _FRAME_GT.match(common.nifti_stem(p) or "")
            if m:
                frames.append(int(m.group("frame")))
        phases = [(None, f) for f in sorted(set(frames))]
        info = {}
    else:
        phases = [("ED", info["ED"]), ("ES", info["ES"])]
        if info["ES"] == info["ED"]:
            phases = phases[:1]
    cases = []
    for phase, frame in phases:
        image = _frame_file(folder, pid, frame, gt=False, strict=strict)
        label_path = _frame_file(folder, pid, frame, gt=True, strict=strict and require_label)
        label: str | None = label_path
        if not require_label and not Path(label_path).is_file():
            label = None
        extra: dict[str, Any] = {"phase": phase, "frame": frame, "subset": subset, "info": str(info_path)}
        if "Group" in info:
            extra["group"] = info["Group"]
        for key in ("Height", "Weight", "NbFrame"):
            if key in info:
                extra[key.lower()] = info[key]
        cases.append(
            Case(
                id=common.nifti_stem(image) or Path(image).name, subject=pid, images=(image,), label=label, extra=extra
            )
        )
    return cases


def _training_dir(root: str | Path) -> Path:
    return common.find_dataset_dir(
        root, _has_patients, "ACDC patient folders (training/patientNNN)", prefer=("training",)
    )


def find_cases(root: str | Path, strict: bool = True, subsets: Sequence[str] = ("training",)) -> list[Case]:
    """The ED and ES cases of every patient under ``root``.

    Args:
        root: the ACDC folder, ``database``, ``training`` itself or a parent.
        strict: raise ``FileNotFoundError``/``ValueError`` naming the first missing file or bad
            ``Info.cfg``; when ``False``, keep the cases for :func:`check_case` to report.
        subsets: ``"training"`` and/or ``"testing"`` (the sibling ``testing/`` folder, read when present; its
            frames without ``_gt`` file get ``label=None``).
    """
    train_dir = _training_dir(root)
    folders: list[tuple[str, Path]] = []
    for subset in subsets:
        if subset == "training":
            folders.append(("training", train_dir))
        elif subset == "testing":
            test_dir = common.child_dir(train_dir.parent, "testing")
            if test_dir is not None and test_dir != train_dir and _has_patients(test_dir):
                folders.append(("testing", test_dir))
        else:
            raise ValueError(f"subsets must be 'training' and/or 'testing', got {subset!r}")
    cases: list[Case] = []
    for subset, folder in folders:
        for p in common.list_dir(folder, dirs=True):
            if _is_patient_dir(p):
                cases.extend(_patient_cases(p, subset, strict, require_label=subset == "training"))
    return cases


def check_case(case: Case) -> list[str]:
    """Problems of one case (see :func:`calibmonai.datasets.common.check_nifti_case`) and of its
    ``Info.cfg``."""
    problems = []
    info = case.extra.get("info")
    if info is not None:
        try:
            read_info(info)
        except (FileNotFoundError, ValueError) as e:
            problems.append(str(e))
    return problems + common.check_nifti_case(case, LABEL_VALUES)


def patient_of(case_id: str) -> str:
    """``patient001_frame01`` -> ``patient001`` (ids that are not ACDC names are their own patient)."""
    m = _PATIENT_PREFIX.match(str(case_id))
    return m.group(1) if m else str(case_id)


def make_split(case_ids: Sequence[str], seed: int = 0) -> dict[str, list[str]]:
    """Patient-level 70/10/20 split (the same fractions for a subset) of patient ids (``patient001``...) or
    of case ids (``patient001_frame01``...: counted in patients, both frames of a patient in one part)."""
    return common.seeded_split(case_ids, SPLIT_COUNTS, seed, group_of=patient_of)


def datalist(root: str | Path, split: Any = None, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """MONAI datalist of the training patients (``image``: the frame, ``label``: its ``_gt``, plus ``case``,
    ``subject``, ``phase``, ``frame``, ``group``...), and ``challenge_test`` with the ``testing/`` patients
    when that folder is present."""
    out = common.build_datalist(find_cases(root), split, make_split, seed)
    testing = find_cases(root, subsets=("testing",))
    if testing:
        out["challenge_test"] = [c.entry() for c in testing]
    return out
