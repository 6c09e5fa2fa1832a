"""Hippocampus: Medical Segmentation Decathlon Task04 (T1-weighted MRI crops, Vanderbilt University Medical
Center).

Antonelli, M. et al. "The Medical Segmentation Decathlon." Nature Communications 13, 4128 (2022).
http://medicaldecathlon.com/ (CC-BY-SA 4.0)

Layout of ``Task04_Hippocampus.tar`` (the given folder may be ``Task04_Hippocampus`` or any parent of it,
e.g. a folder holding several decathlon tasks)::

    dataset.json                        name "Hippocampus", modality {"0": "MRI"},
                                        labels {"0": "background", "1": "Anterior", "2": "Posterior"},
                                        numTraining 260, "training": [{"image": "./imagesTr/hippocampus_367.nii.gz",
                                        "label": "./labelsTr/hippocampus_367.nii.gz"}, ...]
    imagesTr/hippocampus_367.nii.gz     one 3D volume per case (ids are not contiguous)
    labelsTr/hippocampus_367.nii.gz
    imagesTs/...                        130 unlabelled test volumes: not read
    imagesTr/._hippocampus_367.nii.gz   macOS AppleDouble files shipped in the tar: ignored

Labels: 0 background, 1 anterior (hippocampus head), 2 posterior (body and tail); used as they are. A case is
every id found in ``imagesTr``, ``labelsTr`` or the ``training`` list of ``dataset.json`` (``.nii`` accepted
for ``.nii.gz``), so a file missing on either side is reported, not skipped. A ``dataset.json`` whose labels
differ from the above is refused (the folder is another task).

Split (MbLS segmentation study, Murugesan et al. 2023): 185/25/50 of the 260 training cases.

The MSD helpers here (:func:`read_dataset_json`, :func:`find_msd_dir`, :func:`msd_cases`) also serve the
Task05 prostate layout of :mod:`calibmonai.datasets.promise12`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from calibmonai.datasets import common
from calibmonai.datasets.common import Case

__all__ = [
    "NAME",
    "CLASS_NAMES",
    "LABEL_VALUES",
    "MODALITIES",
    "SPLIT_COUNTS",
    "KNOWN_IDS",
    "DATASET_JSON_LABELS",
    "read_dataset_json",
    "find_msd_dir",
    "msd_cases",
    "find_cases",
    "check_case",
    "make_split",
    "datalist",
]

NAME = "msd_hippocampus"
CLASS_NAMES = ("background", "anterior", "posterior")
LABEL_VALUES = (0, 1, 2)
MODALITIES = ("MRI",)
SPLIT_COUNTS = (185, 25, 50)
#: not listed in advance (the decathlon ids have gaps): the split is computed from the cases found
KNOWN_IDS = None
#: the ``labels`` of the task's ``dataset.json``
DATASET_JSON_LABELS = {"0": "background", "1": "Anterior", "2": "Posterior"}

_TASK = "Hippocampus"


def read_dataset_json(path: str | Path) -> dict[str, Any]:
    """The parsed decathlon ``dataset.json``.

    Raises:
        FileNotFoundError: when the file is missing.
        ValueError: naming the file when it is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not a JSON object")
    return doc


def _dataset_json(folder: Path) -> Path | None:
    p = folder / "dataset.json"
    if p.is_file():
        return p
    for q in common.list_dir(folder, dirs=False):
        if q.name.lower() == "dataset.json":
            return q
    return None


def find_msd_dir(root: str | Path, task: str) -> Path:
    """The decathlon task folder at or below ``root``: a folder with ``imagesTr`` and ``labelsTr`` whose
    ``dataset.json`` has ``name`` ``task`` (ignoring case), or, without ``dataset.json``, whose own name
    contains ``task`` (``Task04_Hippocampus``).

    Raises:
        FileNotFoundError: naming ``root`` when no such folder is found.
    """

    def is_task(folder: Path) -> bool:
        if common.child_dir(folder, "imagesTr") is None or common.child_dir(folder, "labelsTr") is None:
            return False
        js = _dataset_json(folder)
        if js is None:
            return task.lower() in folder.name.lower()
        try:
            return str(read_dataset_json(js).get("name", "")).strip().lower() == task.lower()
        except ValueError:
            return task.lower() in folder.name.lower()

    return common.find_dataset_dir(root, is_task, f"decathlon {task} folder (imagesTr/, labelsTr/, dataset.json)")


def _check_json_labels(path: Path, doc: Mapping[str, Any], labels: Mapping[str, str]) -> None:
    raw = dict(doc.get("labels", {}) or {})
    if raw and all(isinstance(v, int) for v in raw.values()):  # nnU-Net v2 style {"background": 0, ...}
        raw = {v: k for k, v in raw.items()}
    got = {str(k): str(v) for k, v in raw.items()}
    want = {str(k): str(v) for k, v in labels.items()}
    if {k: v.lower() for k, v in got.items()} != {k: v.lower() for k, v in want.items()}:
        raise ValueError(f"{path}: labels {got} differ from the expected {want}")


def msd_cases(task_dir: str | Path, strict: bool = True, labels: Mapping[str, str] | None = None) -> list[Case]:
    """The training cases of a decathlon task folder: every id of ``imagesTr``, ``labelsTr`` and of the
    ``training`` list of ``dataset.json``, ``images=(imagesTr/<id>.nii.gz,)``, ``label=labelsTr/<id>.nii.gz``.

    Args:
        task_dir: the task folder (see :func:`find_msd_dir`).
        strict: raise ``FileNotFoundError`` naming the first missing image or label; when ``False`` keep the
            expected path for the checks to report.
        labels: the expected ``labels`` of ``dataset.json`` (checked when the file is present).

    Raises:
        ValueError: naming ``dataset.json`` when it is unreadable or its labels differ from ``labels``.
        FileNotFoundError: when the folder holds no case.
    """
    task_dir = Path(task_dir)
    img_dir = common.child_dir(task_dir, "imagesTr") or task_dir / "imagesTr"
    lab_dir = common.child_dir(task_dir, "labelsTr") or task_dir / "labelsTr"
    ids: dict[str, None] = {}
    found: dict[str, dict[str, Path]] = {"image": {}, "label": {}}
    for key, folder in (("image", img_dir), ("label", lab_dir)):
        if folder.is_dir():
            for p in common.list_dir(folder, dirs=False):
                stem = common.nifti_stem(p)
                if stem is not None:
                    found[key].setdefault(stem, p)
                    ids[stem] = None
    js = _dataset_json(task_dir)
    if js is not None:
        doc = read_dataset_json(js)
        if labels is not None:
            _check_json_labels(js, doc, labels)
        for entry in doc.get("training", []) or []:
            if isinstance(entry, Mapping) and entry.get("image"):
                stem = common.nifti_stem(Path(str(entry["image"])).name)
                if stem is not None and not stem.startswith("."):
                    ids[stem] = None
    if not ids:
        raise FileNotFoundError(f"no case in {img_dir} or {lab_dir}")
    cases = []
    for cid in sorted(ids, key=common.natural_key):
        paths = []
        for key, folder in (("image", img_dir), ("label", lab_dir)):
            p = found[key].get(cid)
            paths.append(str(p) if p is not None else common.expect_nifti(folder, cid, strict=strict))
        cases.append(Case(id=cid, subject=cid, images=(paths[0],), label=paths[1]))
    return cases


def find_cases(root: str | Path, strict: bool = True) -> list[Case]:
    """The labelled training cases of ``Task04_Hippocampus`` under ``root`` (see :func:`msd_cases`)."""
    return msd_cases(find_msd_dir(root, _TASK), strict=strict, labels=DATASET_JSON_LABELS)


def check_case(case: Case) -> list[str]:
    """Problems of one case (see :func:`calibmonai.datasets.common.check_nifti_case`): missing or corrupt
    file, a 4D image, image/label grid mismatch, label values outside 0-2."""
    return common.check_nifti_case(case, LABEL_VALUES, channels=1)


def make_split(case_ids: Sequence[str], seed: int = 0) -> dict[str, list[str]]:
    """Seeded 185/25/50 split of the case ids (the same fractions for a subset)."""
    return common.seeded_split(case_ids, SPLIT_COUNTS, seed)


def datalist(root: str | Path, split: Any = None, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """MONAI datalist of the training cases (``image``, ``label``, ``case``, ``subject``)."""
    return common.build_datalist(find_cases(root), split, make_split, seed)
