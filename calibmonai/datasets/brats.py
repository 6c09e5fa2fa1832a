"""BraTS 2019: multimodal brain tumour segmentation (glioma), and the same task as released by the Medical
Segmentation Decathlon (Task01_BrainTumour, BraTS 2016/2017 data).

Menze, B.H. et al. "The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS)", IEEE TMI 2015;
Bakas, S. et al. "Advancing The Cancer Genome Atlas glioma MRI collections with expert segmentation labels
and radiomic features", Sci. Data 2017; https://www.med.upenn.edu/cbica/brats2019/data.html .
Antonelli, M. et al. "The Medical Segmentation Decathlon", Nat. Commun. 2022; http://medicaldecathlon.com/ .

Two layouts are read (the given folder may be the dataset folder or a parent):

BraTS (``MICCAI_BraTS_2019_Data_Training``)::

    HGG/BraTS19_2013_10_1/BraTS19_2013_10_1_{flair,t1,t1ce,t2,seg}.nii.gz     259 high-grade
    LGG/BraTS19_2013_0_1/...                                                    76 low-grade
    name_mapping.csv, survival_data.csv                                         (not used)

labels 0 background, 1 necrotic and non-enhancing tumour core (NCR/NET), 2 peritumoural edema (ED),
4 GD-enhancing tumour (ET). A folder of case folders without HGG/LGG (BraTS 2020/2021 style) is read too.

MSD (``Task01_BrainTumour``)::

    dataset.json                  modality {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    imagesTr/BRATS_001.nii.gz     4D, the 4 modalities in the last axis
    labelsTr/BRATS_001.nii.gz     0 background, 1 edema, 2 non-enhancing tumour, 3 enhancing tumour
    imagesTs/                     no labels (not used)

(the MSD archive also carries ``._BRATS_*.nii.gz`` AppleDouble files, skipped as junk).

One convention after :class:`BratsLabelsd`: 0 background, 1 NCR/NET, 2 edema, 3 enhancing tumour (BraTS
with 4 -> 3; MSD 1 -> 2, 2 -> 1, 3 -> 3). Channels: FLAIR, T1, T1ce (= MSD t1gd), T2, the MSD order, so both
layouts give the network the same input. Evaluation regions (:data:`REGIONS`, :class:`BratsRegionsd`):
TC (tumour core) = {1, 3}, WT (whole tumour) = {1, 2, 3}, ET (enhancing tumour) = {3}, in MONAI's TC/WT/ET
channel order (``ConvertToMultiChannelBasedOnBratsClasses``).

Split (MbLS segmentation study, Murugesan et al. 2023): 235/35/65 of the 335 BraTS 2019 training cases;
the same fractions otherwise (e.g. the 484 MSD cases).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapLabelValue, MapTransform

from calibmonai.datasets import common
from calibmonai.datasets.common import Case

__all__ = [
    "NAME",
    "CLASS_NAMES",
    "LABEL_VALUES",
    "MSD_LABEL_VALUES",
    "MODALITIES",
    "SCAN_MODALITY_NAMES",
    "SCAN_SKIP_NAMES",
    "SPLIT_COUNTS",
    "KNOWN_IDS",
    "REGIONS",
    "find_cases",
    "check_case",
    "make_split",
    "datalist",
    "map_labels",
    "regions",
    "BratsLabelsd",
    "BratsRegionsd",
]

NAME = "brats19"
CLASS_NAMES = ("background", "NCR/NET", "edema", "enhancing tumour")
#: raw values of the BraTS label files (``*_seg``)
LABEL_VALUES = (0, 1, 2, 4)
#: raw values of the MSD label files (``labelsTr``)
MSD_LABEL_VALUES = (0, 1, 2, 3)
MODALITIES = ("FLAIR", "T1", "T1ce", "T2")
#: inference on files named as published: a BraTS case folder's ``<id>_flair`` ... ``<id>_t2`` (channel order of :data:`MODALITIES`), its ``<id>_seg`` left out
SCAN_MODALITY_NAMES = ("flair", "t1", "t1ce", "t2")
SCAN_SKIP_NAMES = ("seg",)

#: file suffixes of the BraTS layout, in MODALITIES order
SUFFIXES = ("flair", "t1", "t1ce", "t2")
SPLIT_COUNTS = (235, 35, 65)
KNOWN_IDS = None
#: raw value -> class index, per layout
LABEL_MAPS = {"brats": {0: 0, 1: 1, 2: 2, 4: 3}, "msd": {0: 0, 1: 2, 2: 1, 3: 3}}
#: evaluation regions over the mapped classes, in MONAI's TC, WT, ET order
REGIONS = {"TC": (1, 3), "WT": (1, 2, 3), "ET": (3,)}
_MSD_MODALITIES = ("flair", "t1w", "t1gd", "t2w")
_GRADES = ("HGG", "LGG")


def _find_suffix(folder: Path, case_id: str, suffix: str) -> Path | None:
    """``<case_id>_<suffix>.nii(.gz)``, else the one NIfTI file of ``folder`` whose stem ends with ``_<suffix>``."""
    p = common.find_nifti(folder, f"{case_id}_{suffix}")
    if p is not None:
        return p
    hits = [
        q for q in common.list_dir(folder, dirs=False) if (common.nifti_stem(q) or "").lower().endswith(f"_{suffix}")
    ]
    return hits[0] if len(hits) == 1 else None


def _is_brats_case(p: Path) -> bool:
    return p.is_dir() and any(
        (common.nifti_stem(q) or "").lower().endswith("_flair") for q in common.list_dir(p, dirs=False)
    )


def _layout(folder: Path) -> str | None:
    """``"msd"``, ``"brats"`` (HGG/LGG), ``"flat"`` (case folders) or ``None``."""
    if not folder.is_dir():
        return None
    if common.child_dir(folder, "imagesTr") is not None and common.child_dir(folder, "labelsTr") is not None:
        return "msd"
    if any(common.child_dir(folder, g) is not None for g in _GRADES):
        return "brats"
    try:
        if any(_is_brats_case(p) for p in common.list_dir(folder, dirs=True)):
            return "flat"
    except FileNotFoundError:
        return None
    return None


def _brats_case(folder: Path, grade: str | None, strict: bool) -> Case:
    cid = folder.name
    images = []
    for suffix in SUFFIXES:
        p = _find_suffix(folder, cid, suffix)
        images.append(str(p) if p is not None else common.expect_nifti(folder, f"{cid}_{suffix}", strict=strict))
    p = _find_suffix(folder, cid, "seg")
    label = str(p) if p is not None else common.expect_nifti(folder, f"{cid}_seg", strict=strict)
    extra: dict[str, Any] = {"layout": "brats"}
    if grade is not None:
        extra["grade"] = grade
    return Case(id=cid, subject=cid, images=tuple(images), label=label, extra=extra)


def _check_msd_json(folder: Path) -> None:
    path = folder / "dataset.json"
    if not path.is_file():
        return
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"unreadable {path}: {e}") from None
    modality = doc.get("modality") or doc.get("channel_names")
    if isinstance(modality, Mapping):
        names = tuple(str(modality[k]).lower() for k in sorted(modality, key=lambda k: int(k)))
        if names != _MSD_MODALITIES:
            raise ValueError(f"{path}: modalities {names}, expected the MSD BraTS order {_MSD_MODALITIES}")


def _msd_cases(folder: Path, strict: bool) -> list[Case]:
    _check_msd_json(folder)
    images_dir = common.child_dir(folder, "imagesTr")
    labels_dir = common.child_dir(folder, "labelsTr")
    cases = []
    for p in common.list_dir(images_dir, dirs=False):
        stem = common.nifti_stem(p)
        if stem is None:
            continue
        label = common.expect_nifti(labels_dir, stem, strict=strict)
        cases.append(Case(id=stem, subject=stem, images=(str(p),), label=label, extra={"layout": "msd"}))
    return cases


def find_cases(root: str | Path, strict: bool = True) -> list[Case]:
    """Every labelled case under ``root``, in either layout (naturally sorted; HGG before LGG).

    Raises:
        FileNotFoundError: naming ``root`` when neither layout is found, and (``strict``) the first missing
            modality or label file.
        ValueError: an MSD ``dataset.json`` listing other modalities.
    """
    what = "BraTS layout (HGG/LGG case folders) or MSD layout (imagesTr, labelsTr)"
    try:  # a labelled layout first, so that a sibling validation folder of flat case folders is not taken
        folder = common.find_dataset_dir(root, lambda f: _layout(f) in ("msd", "brats"), what)
    except FileNotFoundError:
        folder = common.find_dataset_dir(root, lambda f: _layout(f) is not None, what)
    layout = _layout(folder)
    if layout == "msd":
        return _msd_cases(folder, strict)
    if layout == "brats":
        cases = []
        for grade in _GRADES:
            sub = common.child_dir(folder, grade)
            if sub is not None:
                cases.extend(_brats_case(p, grade, strict) for p in common.list_dir(sub, dirs=True))
        return cases
    return [_brats_case(p, None, strict) for p in common.list_dir(folder, dirs=True) if _is_brats_case(p)]


def check_case(case: Case) -> list[str]:
    """Problems of one case: missing/corrupt files, modalities off the label grid, an MSD image without 4
    channels, label values outside the layout's set."""
    if case.extra.get("layout") == "msd":
        return common.check_nifti_case(case, MSD_LABEL_VALUES, channels=len(MODALITIES))
    return common.check_nifti_case(case, LABEL_VALUES)


def make_split(case_ids: Sequence[str], seed: int = 0) -> dict[str, list[str]]:
    """235/35/65 for the 335 BraTS 2019 cases, the same fractions otherwise."""
    return common.seeded_split(case_ids, SPLIT_COUNTS, seed)


def datalist(root: str | Path, split: Any = None, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """MONAI datalist: ``image`` is the list of the 4 modality files (BraTS) or the 4D file (MSD), plus
    ``label``, ``case``, ``subject``, ``layout`` (and ``grade``); map the labels with :class:`BratsLabelsd`."""
    return common.build_datalist(find_cases(root), split, make_split, seed)


def map_labels(label: Any, layout: str = "brats") -> Any:
    """Raw labels of ``layout`` (``"brats"``: 0, 1, 2, 4; ``"msd"``: 0-3) -> the 0-3 convention of
    :data:`CLASS_NAMES` (numpy array or tensor, same type back)."""
    if layout not in LABEL_MAPS:
        raise ValueError(f"layout must be one of {sorted(LABEL_MAPS)}, got {layout!r}")
    m = LABEL_MAPS[layout]
    orig = sorted(m)
    return MapLabelValue(orig_labels=orig, target_labels=[m[k] for k in orig])(label)


def regions(label: Any) -> Any:
    """``(3, *spatial)`` TC, WT, ET masks of a mapped label (``(*spatial)`` or ``(1, *spatial)``)."""
    if isinstance(label, torch.Tensor):
        lab = label[0] if label.ndim >= 1 and label.shape[0] == 1 and label.ndim > 2 else label
        return torch.stack([sum((lab == v) for v in vals).bool() for vals in REGIONS.values()]).to(torch.float32)
    lab = np.asarray(label)
    lab = lab[0] if lab.ndim > 2 and lab.shape[0] == 1 else lab
    return np.stack([np.isin(lab, vals) for vals in REGIONS.values()]).astype(np.float32)


class BratsLabelsd(MapTransform):
    """Map raw BraTS or MSD labels to the 0-3 convention; the layout is read per item from ``layout_key``
    (the datalist's ``layout`` field), ``default_layout`` when absent."""

    def __init__(
        self,
        keys: KeysCollection = "label",
        layout_key: str = "layout",
        default_layout: str = "brats",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if default_layout not in LABEL_MAPS:
            raise ValueError(f"default_layout must be one of {sorted(LABEL_MAPS)}, got {default_layout!r}")
        self.layout_key = layout_key
        self.default_layout = default_layout

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        layout = d.get(self.layout_key, self.default_layout)
        for key in self.key_iterator(d):
            d[key] = map_labels(d[key], layout)
        return d


class BratsRegionsd(MapTransform):
    """Replace a mapped label by its 3 region channels TC, WT, ET (see :func:`regions`)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = regions(d[key])
        return d
