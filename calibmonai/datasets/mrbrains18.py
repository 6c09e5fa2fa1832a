"""MRBrainS18: Grand Challenge on MR Brain Segmentation at MICCAI 2018 (3T, UMC Utrecht).

https://mrbrains18.isi.uu.nl/data/ (data and label definitions); evaluation script
https://github.com/hjkuijf/MRBrainS18 (labels 1-8 scored, 9 and 10 masked out). Protocol of the predecessor:
Mendrik, A.M. et al. "MRBrainS Challenge: Online Evaluation Framework for Brain Image Segmentation in 3T MRI
Scans", Computational Intelligence and Neuroscience 2015, https://mrbrains13.isi.uu.nl/data/.

Layout of the training download (the given folder may be ``training`` itself or a parent)::

    training/1/pre/reg_T1.nii.gz    3D T1 registered to the FLAIR grid (bias-field corrected)
    training/1/pre/reg_IR.nii.gz    T1 inversion recovery registered to the FLAIR grid
    training/1/pre/FLAIR.nii.gz     T2-FLAIR (the reference grid, 0.958 x 0.958 x 3.0 mm)
    training/1/pre/T1.nii.gz ...    the unregistered scans (not used)
    training/1/orig/...             the scans before bias-field correction (not used)
    training/1/segm.nii.gz          the manual reference, labels 0-10

Subjects of the challenge release: 1, 4, 5, 7, 14, 070, 148 (ids are kept as strings: ``"070"``). Any
sub-folder holding ``pre/`` is a subject, so a re-release with other ids reads the same way.

Channels, in this order: reg_T1, reg_IR, FLAIR (:data:`MODALITIES`).

Labels of ``segm.nii.gz`` (challenge data page) and the 3-class mapping used here (:data:`LABEL_MAP`):

====  ==============================================  =================
raw   structure                                       mapped
====  ==============================================  =================
0     background                                      0 background
1     cortical gray matter                            2 GM
2     basal ganglia                                   2 GM
3     white matter                                    3 WM
4     white matter lesions                            3 WM
5     cerebrospinal fluid in the extracerebral space  1 CSF
6     ventricles                                      1 CSF
7     cerebellum                                      0 background
8     brain stem                                      0 background
9     infarction                                      0 background
10    other                                           0 background
====  ==============================================  =================

Why: the three tissue classes are merged as the MRBrainS13 organisers prescribe for a GM/WM/CSF method
("merge labels 1 and 2, 3 and 4, and 5 and 6"; their 3-class reference labels the cerebellum and brain stem
as background because they are excluded from the evaluation). Labels 9 and 10 (infarctions, other lesions)
are excluded by the MRBrainS18 evaluation (masked out); with no ignore label in the training losses they
become background too, which keeps them out of every tissue class. The class order (background, CSF, GM,
WM) is the MRBrainS13 3-class order and that of calibmonai's MNI tissue task. The MbLS segmentation study
(Murugesan et al. 2023) segments the same three tissues.

Split: leave-one-subject-out over the 7 subjects: fold ``k`` tests subject ``k`` (natural order
1, 4, 5, 7, 14, 070, 148), one other subject (drawn with the seed) validates, five train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from monai.transforms import MapLabelValued

from calibmonai.datasets import common
from calibmonai.datasets.common import Case

__all__ = [
    "NAME",
    "CLASS_NAMES",
    "LABEL_VALUES",
    "LABEL_NAMES",
    "LABEL_MAP",
    "MODALITIES",
    "SCAN_MODALITY_NAMES",
    "SCAN_SKIP_NAMES",
    "FILES",
    "SPLIT_COUNTS",
    "KNOWN_IDS",
    "find_cases",
    "check_case",
    "make_split",
    "datalist",
    "label_transform",
]

NAME = "mrbrains18"
CLASS_NAMES = ("background", "CSF", "GM", "WM")
LABEL_VALUES = tuple(range(11))
LABEL_NAMES = {
    0: "background",
    1: "cortical gray matter",
    2: "basal ganglia",
    3: "white matter",
    4: "white matter lesions",
    5: "cerebrospinal fluid in the extracerebral space",
    6: "ventricles",
    7: "cerebellum",
    8: "brain stem",
    9: "infarction",
    10: "other",
}
#: raw label -> class index in CLASS_NAMES (background 0, CSF 1, GM 2, WM 3)
LABEL_MAP = {0: 0, 1: 2, 2: 2, 3: 3, 4: 3, 5: 1, 6: 1, 7: 0, 8: 0, 9: 0, 10: 0}
MODALITIES = ("T1", "T1-IR", "FLAIR")
#: inference on files named as published: a subject's ``pre/reg_T1``, ``pre/reg_IR``, ``pre/FLAIR`` (channel order of :data:`MODALITIES`), ``segm`` left out
SCAN_MODALITY_NAMES = ("reg_T1", "reg_IR", "FLAIR")
SCAN_SKIP_NAMES = ("segm",)

#: file stems in ``<subject>/pre/``, in MODALITIES order
FILES = ("reg_T1", "reg_IR", "FLAIR")
LABEL_FILE = "segm"
#: 5 training, 1 validation, 1 test subject per fold
SPLIT_COUNTS = (5, 1, 1)
KNOWN_IDS = ("1", "4", "5", "7", "14", "070", "148")


def _is_subject(p: Path) -> bool:
    return p.is_dir() and common.child_dir(p, "pre") is not None


def _has_subjects(folder: Path) -> bool:
    try:
        return any(_is_subject(p) for p in common.list_dir(folder, dirs=True))
    except FileNotFoundError:
        return False


def find_cases(root: str | Path, strict: bool = True) -> list[Case]:
    """One case per subject folder (a folder holding ``pre/``) under ``root``, naturally sorted.

    Raises:
        FileNotFoundError: naming ``root`` when no subject folder is found, and (``strict``) the first
            missing ``pre/<modality>.nii.gz`` or ``segm.nii.gz``.
    """
    folder = common.find_dataset_dir(
        root, _has_subjects, "MRBrainS18 subject folders (training/<id>/pre/)", prefer=("training",)
    )
    cases = []
    for subject in common.list_dir(folder, dirs=True):
        if not _is_subject(subject):
            continue
        pre = common.child_dir(subject, "pre")
        images = tuple(common.expect_nifti(pre, stem, strict=strict) for stem in FILES)
        label = common.expect_nifti(subject, LABEL_FILE, strict=strict)
        cases.append(Case(id=subject.name, subject=subject.name, images=images, label=label))
    return cases


def check_case(case: Case) -> list[str]:
    """Problems of one subject: missing/corrupt files, modalities or label off the FLAIR grid, labels
    outside 0-10."""
    return common.check_nifti_case(case, LABEL_VALUES)


def make_split(case_ids: Sequence[str], seed: int = 0, fold: int = 0) -> dict[str, list[str]]:
    """Leave-one-subject-out fold ``fold``: the ``fold``-th subject (natural order) tests, one other
    subject drawn with ``seed`` validates, the rest train."""
    return common.leave_one_out_split(case_ids, fold=fold, seed=seed, n_validation=1 if len(list(case_ids)) > 2 else 0)


def datalist(root: str | Path, split: Any = None, seed: int = 0, fold: int = 0) -> dict[str, list[dict[str, Any]]]:
    """MONAI datalist (``image``: ``[reg_T1, reg_IR, FLAIR]``, ``label``: ``segm``) of fold ``fold`` (or of
    the given ``split``)."""
    kwargs = {"fold": fold} if split is None else {}
    return common.build_datalist(find_cases(root), split, make_split, seed, **kwargs)


def label_transform(keys: Sequence[str] | str = "label", allow_missing_keys: bool = False) -> MapLabelValued:
    """MONAI transform mapping the raw labels 0-10 to the 4 classes of :data:`LABEL_MAP`."""
    orig = sorted(LABEL_MAP)
    return MapLabelValued(
        keys, orig_labels=orig, target_labels=[LABEL_MAP[k] for k in orig], allow_missing_keys=allow_missing_keys
    )
