"""WMH 2017: the White Matter Hyperintensity Segmentation Challenge (brain MRI, MICCAI 2017, UMC Utrecht).

Kuijf, H. J. et al. "Standardized Assessment of Automatic Segmentation of White Matter Hyperintensities and
Results of the WMH Segmentation Challenge." IEEE TMI 38(11), 2019. https://wmh.isi.uu.nl/ (data:
https://doi.org/10.34894/AECRSD)

Layout of the training data (60 subjects, 20 per scanner; the 2017 archive has the scanner folders at its top,
the 2022 DataverseNL release puts them under ``training/`` and the GE scanner under ``Amsterdam/``)::

    training/Utrecht/0/pre/FLAIR.nii.gz        bias-corrected FLAIR (the reference grid)
    training/Utrecht/0/pre/T1.nii.gz           T1 registered to the FLAIR
    training/Utrecht/0/orig/...                the unprocessed scans (3DT1, FLAIR, T1): not read
    training/Utrecht/0/wmh.nii.gz              reference: 0 background, 1 WMH, 2 other pathology
    training/Singapore/50/...   training/GE3T/100/...   (2022: training/Amsterdam/GE3T/100/...)
    test/...  additional_annotations/...       not read (held-out test subjects, other observers)

Label 2 ("other pathology", dilated by one voxel in-plane) is not a class: the challenge ignores it in every
measure. :data:`IGNORE_VALUE` names it; :class:`IgnoreMaskd` turns it into a voxel mask (``mask`` key, true
where the voxel counts, the ``mask`` argument of calibmonai's calibration metrics) and relabels it to
background so that the label is a valid binary map; :func:`ignore_mask` does the same on a tensor.

Subjects are the folders holding ``pre/`` (or ``wmh.nii.gz``) up to five levels below the given folder;
``id`` = ``subject`` = ``<scanner>_<folder>`` (``Utrecht_0``, ``GE3T_100``). FLAIR then T1 are the channels
(:data:`MODALITIES`); ``.nii`` is accepted for ``.nii.gz``; junk files are ignored.

Split (MEEP, Larrazabal et al. 2023): 42/3/15 subjects, stratified by scanner (14/1/5 per scanner), seeded.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from calibmonai.datasets import common
from calibmonai.datasets.common import Case
from calibmonai.datasets.promise12 import find_folders

__all__ = [
    "NAME",
    "CLASS_NAMES",
    "LABEL_VALUES",
    "IGNORE_VALUE",
    "MODALITIES",
    "SCAN_MODALITY_NAMES",
    "SCAN_SKIP_NAMES",
    "SPLIT_COUNTS",
    "KNOWN_IDS",
    "SCANNERS",
    "find_cases",
    "check_case",
    "make_split",
    "datalist",
    "ignore_mask",
    "IgnoreMaskd",
]

NAME = "wmh"
CLASS_NAMES = ("background", "WMH")
LABEL_VALUES = (0, 1, 2)
#: raw label of "other pathology": ignored in the loss and in every metric
IGNORE_VALUE = 2
MODALITIES = ("FLAIR", "T1")
#: inference on files named as published: a subject's ``pre/FLAIR``, ``pre/T1`` (channel order of :data:`MODALITIES`); the reference ``wmh`` and the unregistered ``3DT1`` left out
SCAN_MODALITY_NAMES = ("FLAIR", "T1")
SCAN_SKIP_NAMES = ("wmh", "3DT1")

SPLIT_COUNTS = (42, 3, 15)
#: subject folder names are only known per scanner: the split is computed from the subjects found
KNOWN_IDS = None
#: the scanner folders of the training data
SCANNERS = ("Utrecht", "Singapore", "GE3T")

_LABEL = "wmh"
_TEST_DIR = re.compile(r"^(test(ing)?([ _-]?(set|data))?|additional[ _-]?annotations)$", re.IGNORECASE)


def _is_subject(folder: Path) -> bool:
    return common.child_dir(folder, "pre") is not None or common.find_nifti(folder, _LABEL) is not None


def find_cases(root: str | Path, strict: bool = True) -> list[Case]:
    """The training subjects under ``root``.

    Args:
        root: the ``training`` folder, a scanner folder, the release root, or a parent.
        strict: raise ``FileNotFoundError`` naming the first missing FLAIR, T1 or ``wmh.nii.gz``; when
            ``False`` keep the expected path for :func:`check_case` to report.

    Raises:
        ValueError: when two subject folders get the same id.
    """
    root = Path(root)
    dirs = find_folders(root, _is_subject, skip=_TEST_DIR.match, max_depth=5)
    if not dirs:
        raise FileNotFoundError(f"no WMH subject folder (<scanner>/<id>/pre/FLAIR.nii.gz, T1.nii.gz, wmh.nii.gz) in {root}")
    cases: dict[str, Case] = {}
    for folder in dirs:
        scanner = folder.parent.name
        cid = f"{scanner}_{folder.name}"
        if cid in cases:
            raise ValueError(f"two subject folders have the id {cid}: {cases[cid].extra['folder']} and {folder}")
        pre = common.child_dir(folder, "pre") or folder / "pre"
        images = tuple(common.expect_nifti(pre, m, strict=strict) for m in MODALITIES)
        label = common.expect_nifti(folder, _LABEL, strict=strict)
        cases[cid] = Case(id=cid, subject=cid, images=images, label=label, extra={"scanner": scanner, "folder": str(folder)})
    return [cases[k] for k in sorted(cases, key=common.natural_key)]


def check_case(case: Case) -> list[str]:
    """Problems of one subject (see :func:`calibmonai.datasets.common.check_nifti_case`): missing or corrupt
    FLAIR, T1 or ``wmh.nii.gz``, any of them on another grid than the FLAIR, a 4D file, labels outside 0-2."""
    return common.check_nifti_case(case, LABEL_VALUES, channels=1)


def _scanner(subject: str) -> str:
    return subject.rsplit("_", 1)[0] if "_" in subject else ""


def make_split(case_ids: Sequence[str], seed: int = 0, stratify: bool = True) -> dict[str, list[str]]:
    """Seeded 42/3/15 split of the subject ids (the same fractions for another number of subjects).

    With ``stratify`` the subjects of each scanner (the id's prefix, ``Utrecht_0`` -> ``Utrecht``) are
    shuffled apart and dealt in turn, test first, then validation, then training: 60 subjects of three
    scanners give 5/1/14 per scanner.
    """
    if not stratify:
        return common.seeded_split(case_ids, SPLIT_COUNTS, seed)
    given = [str(i) for i in case_ids]
    ids = sorted(set(given), key=common.natural_key)
    if len(ids) != len(given):
        raise ValueError(f"duplicate subject ids: {sorted({i for i in given if given.count(i) > 1})[:10]}")
    rng = random.Random(int(seed))
    groups: dict[str, list[str]] = {}
    for i in ids:
        groups.setdefault(_scanner(i), []).append(i)
    queues = []
    for name in sorted(groups, key=common.natural_key):
        members = list(groups[name])
        rng.shuffle(members)
        queues.append(members)
    order: list[str] = []
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop(0))
    n_train, n_val, n_test = common.split_counts(len(order), SPLIT_COUNTS)
    parts = {"test": order[:n_test], "validation": order[n_test : n_test + n_val], "training": order[n_test + n_val :]}
    return {k: sorted(parts[k], key=common.natural_key) for k in common.SPLIT_KEYS}


def datalist(root: str | Path, split: Any = None, seed: int = 0, stratify: bool = True) -> dict[str, list[dict[str, Any]]]:
    """MONAI datalist of the training subjects (``image``: ``[FLAIR, T1]``, ``label``: ``wmh.nii.gz``, plus
    ``case``, ``subject``, ``scanner``, ``folder``)."""
    cases = find_cases(root)
    if split is None:
        split = make_split([c.subject for c in cases], seed=seed, stratify=stratify)
    return common.make_datalist(cases, split)


# ------------------------------------------------------------------------------------------- transforms


def ignore_mask(label: torch.Tensor, ignore_value: int = IGNORE_VALUE) -> tuple[torch.Tensor, torch.Tensor]:
    """``(label, mask)``: the label with ``ignore_value`` set to background (0) and the boolean mask of the
    voxels that count (``label != ignore_value``), both of the label's shape."""
    mask = label != ignore_value
    return torch.where(mask, label, torch.zeros_like(label)), mask


class IgnoreMaskd(MapTransform):
    """Split the WMH reference into a binary label and a mask of the voxels that count.

    For each key, adds ``mask_key`` (boolean, the label's shape, false on "other pathology") and sets those
    voxels to background in the label. Pass ``mask`` to the loss and to calibmonai's metrics
    (``metric(y_pred, y, mask=mask)``) so that label 2 counts nowhere.

    Args:
        keys: the label key(s).
        mask_key: name of the added mask (``"mask"``); with several keys, ``<key>_<mask_key>``.
        ignore_value: the raw value to ignore (:data:`IGNORE_VALUE`).
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        mask_key: str = "mask",
        ignore_value: int = IGNORE_VALUE,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.ignore_value = int(ignore_value)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        several = len(self.keys) > 1
        for key in self.key_iterator(d):
            label = d[key] if isinstance(d[key], torch.Tensor) else torch.as_tensor(d[key])
            new_label, mask = ignore_mask(label, self.ignore_value)
            d[key] = new_label
            d[f"{key}_{self.mask_key}" if several else self.mask_key] = mask
        return d
