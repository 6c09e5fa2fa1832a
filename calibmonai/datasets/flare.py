"""FLARE 2021: Fast and Low GPU memory Abdominal oRgan sEgmentation (abdominal CT, MICCAI 2021).

Ma, J. et al. "Fast and Low-GPU-memory abdomen CT organ segmentation: The FLARE challenge." Medical Image
Analysis 82, 2022. https://flare.grand-challenge.org/

Layout of the download (the given folder may be the one holding ``TrainingImg``, or any parent of it)::

    TrainingImg/train_000_0000.nii.gz     CT volume (nnU-Net style ``_0000`` channel suffix)
    TrainingMask/train_000.nii.gz         reference segmentation of the same case
    ...                                   361 training cases (train_000, train_001, ...)
    ValidationImg/validation_001_0000.nii.gz, TestImg/...   no masks: not read

Labels (challenge page): 0 background, 1 liver, 2 kidney (both kidneys), 3 spleen, 4 pancreas; used as they
are. One case per ``TrainingImg`` file, ``id`` = ``subject`` = its name without ``_0000.nii.gz``. ``.nii`` and
``.nii.gz`` are both read; junk (``._*``, ``.DS_Store``, ``desktop.ini``) and non-NIfTI files are ignored. A
mask without its image (or an image without its mask) is a case with a missing file.

Split (MbLS segmentation study, Murugesan et al. 2023): 240/40/80 cases. The release has 361 training cases,
one more than 240 + 40 + 80; :func:`calibmonai.datasets.common.split_counts` keeps the validation and test
sizes (40, 80) and gives the extra case to training (241/40/80).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from calibmonai.datasets import common
from calibmonai.datasets.common import Case

__all__ = [
    "NAME",
    "CLASS_NAMES",
    "LABEL_VALUES",
    "MODALITIES",
    "SPLIT_COUNTS",
    "KNOWN_IDS",
    "IMAGE_DIR",
    "MASK_DIR",
    "find_cases",
    "check_case",
    "make_split",
    "datalist",
]

NAME = "flare21"
CLASS_NAMES = ("background", "liver", "kidney", "spleen", "pancreas")
LABEL_VALUES = (0, 1, 2, 3, 4)
MODALITIES = ("CT",)
SPLIT_COUNTS = (240, 40, 80)
#: not listed in advance: the split is computed from the cases found
KNOWN_IDS = None

IMAGE_DIR = "TrainingImg"
MASK_DIR = "TrainingMask"
_CHANNEL = "_0000"


def _is_data_dir(folder: Path) -> bool:
    return common.child_dir(folder, IMAGE_DIR) is not None or common.child_dir(folder, MASK_DIR) is not None


def _stems(folder: Path | None, channel: bool) -> dict[str, Path]:
    """Case id -> file, for the NIfTI files of ``folder`` (image files must end in ``_0000``)."""
    out: dict[str, Path] = {}
    if folder is None:
        return out
    for p in common.list_dir(folder, dirs=False):
        stem = common.nifti_stem(p)
        if stem is None:
            continue
        if channel:
            if not stem.endswith(_CHANNEL):
                continue
            stem = stem[: -len(_CHANNEL)]
        out.setdefault(stem, p)
    return out


def find_cases(root: str | Path, strict: bool = True) -> list[Case]:
    """The labelled training cases under ``root``.

    Args:
        root: the folder holding ``TrainingImg``/``TrainingMask``, or a parent of it.
        strict: raise ``FileNotFoundError`` naming the first missing image or mask; when ``False`` keep the
            expected path for :func:`check_case` to report.
    """
    data_dir = common.find_dataset_dir(root, _is_data_dir, f"FLARE21 {IMAGE_DIR}/{MASK_DIR} folders")
    img_dir = common.child_dir(data_dir, IMAGE_DIR)
    mask_dir = common.child_dir(data_dir, MASK_DIR)
    images = _stems(img_dir, channel=True)
    masks = _stems(mask_dir, channel=False)
    ids = sorted(set(images) | set(masks), key=common.natural_key)
    if not ids:
        raise FileNotFoundError(f"no FLARE21 case (*{_CHANNEL}.nii.gz) in {img_dir or data_dir / IMAGE_DIR}")
    cases = []
    for cid in ids:
        image = images.get(cid)
        if image is None:
            image_path = common.expect_nifti(img_dir or data_dir / IMAGE_DIR, cid + _CHANNEL, strict=strict)
        else:
            image_path = str(image)
        mask = masks.get(cid)
        if mask is None:
            label_path = common.expect_nifti(mask_dir or data_dir / MASK_DIR, cid, strict=strict)
        else:
            label_path = str(mask)
        cases.append(Case(id=cid, subject=cid, images=(image_path,), label=label_path))
    return cases


def check_case(case: Case) -> list[str]:
    """Problems of one case (see :func:`calibmonai.datasets.common.check_nifti_case`): missing or corrupt
    file, image/mask grid mismatch, mask values outside 0-4."""
    return common.check_nifti_case(case, LABEL_VALUES)


def make_split(case_ids: Sequence[str], seed: int = 0) -> dict[str, list[str]]:
    """Seeded 240/40/80 split of the case ids (241/40/80 for the 361 cases; the same fractions otherwise)."""
    return common.seeded_split(case_ids, SPLIT_COUNTS, seed)


def datalist(root: str | Path, split: Any = None, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """MONAI datalist of the training cases (``image``: the CT volume, ``label``: its mask, ``case``,
    ``subject``)."""
    return common.build_datalist(find_cases(root), split, make_split, seed)
