"""Readers of public segmentation datasets as downloaded by a researcher (the unzipped folder, untouched).

Each dataset is one module of this package, registered in :data:`DATASETS` by name -> module path (modules
are imported lazily, on first use). Adding a dataset is one module plus one line in :data:`DATASETS`.

The API of a dataset module
---------------------------
``NAME: str``
    the registry name.
``CLASS_NAMES: tuple[str, ...]``
    names of the classes the networks predict, background first (after any label mapping).
``LABEL_VALUES: tuple[int, ...]``
    the raw values allowed in the publisher's label files (before mapping).
``MODALITIES: tuple[str, ...]``
    the image channels, in the fixed order of ``Case.images`` and of the network input.
``SCAN_MODALITY_NAMES``, ``SCAN_SKIP_NAMES`` (optional)
    how the publisher names the files of a scan, so that inference reads new scans named that way: the modality
    names in channel order (``<case>_<name>`` or ``<subject folder>/<name>``) and the names of files beside them
    that are not scans (reference segmentations); see :func:`calibmonai.inference.find_scans`.
``SPLIT_COUNTS: tuple[int, int, int] | None``
    (training, validation, test) subject counts of the paper for the full dataset.
``KNOWN_IDS: tuple[str, ...] | None``
    the subject ids of the full dataset when they are known in advance (a split can then be written without
    the data, see :func:`write_split`).
``find_cases(root, strict=True) -> list[Case]``
    the cases under ``root`` (the dataset folder, its parent, or the archive's nesting), naturally sorted,
    skipping junk (``._*``, ``.DS_Store``, ``desktop.ini``, ``Thumbs.db``, README/manual files); accepts
    ``.nii`` and ``.nii.gz``. Raises ``FileNotFoundError`` naming the folder when no case is found and, when
    ``strict``, naming the first missing file; with ``strict=False`` missing files are kept as paths for
    :func:`check_case` to report.
``check_case(case) -> list[str]``
    the problems of one case, each naming the file: missing/unreadable/corrupt file, missing modality or
    label, image/label shape or affine mismatch, label values outside ``LABEL_VALUES`` (helpers in
    :mod:`calibmonai.datasets.common`).
``make_split(case_ids, seed=0, **kwargs) -> dict``
    ``{"training", "validation", "test"}`` lists of *subject* ids (patient-level: ``Case.subject``; a reader
    may also accept sample ids and keep each subject's samples together, as ACDC does), with
    ``SPLIT_COUNTS`` for the full dataset and the same fractions otherwise, deterministic for a seed
    (dataset-specific keywords, e.g. MRBrainS18's ``fold``).
``datalist(root, split=None, seed=0, **kwargs) -> dict``
    MONAI datalist ``{"training": [...], "validation": [...], "test": [...]}``; each entry has ``image``
    (one path, or a list of modality paths in ``MODALITIES`` order), ``label``, ``case``, ``subject`` and
    the case's extra fields. ``split`` is a split dict, a split JSON file or ``None`` (``make_split`` with
    ``seed``). A reader may add further keys (ACDC's ``challenge_test``).
``transforms`` helpers where the raw files need them (e.g. a label-mapping ``MapTransform``).

Package-level helpers: :func:`get_dataset`, :func:`find_cases`, :func:`check_folder` +
:func:`format_report` (for ``calibmonai check-data``), :func:`datalist`, :func:`make_split`,
:func:`write_split`.

Split files
-----------
:func:`write_split` writes ``{"dataset", "seed", "unit": "subject", "n_subjects", "counts", "training",
"validation", "test"}`` as JSON. Where the dataset's subject ids are known (``KNOWN_IDS``: ACDC
``patient001``..``patient100``, BUSI ``benign (1)``..``benign (437)`` and ``malignant (1)``..``malignant (210)``,
MRBrainS18's seven subjects) ``root=None`` computes the split without the data, and it equals the split
computed from a complete download with the same seed.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from calibmonai.datasets.common import Case, CheckReport, format_report, save_split

__all__ = [
    "DATASETS",
    "ALIASES",
    "Case",
    "CheckReport",
    "available",
    "get_dataset",
    "find_cases",
    "check_folder",
    "format_report",
    "make_split",
    "datalist",
    "write_split",
    "bundle_dataset",
    "EMBEDDED_TASK",
]

#: the embedded task's dataset name (``mni_tissue_seg2d``): a ``datalist.json`` folder, no reader of a download
EMBEDDED_TASK = "mni_tissue"

#: registry: dataset name -> module path (imported on first use)
DATASETS: dict[str, str] = {
    "acdc": "calibmonai.datasets.acdc",
    "mrbrains18": "calibmonai.datasets.mrbrains18",
    "brats19": "calibmonai.datasets.brats",
    "busi": "calibmonai.datasets.busi",
    "flare21": "calibmonai.datasets.flare",
    "promise12": "calibmonai.datasets.promise12",
    "msd_hippocampus": "calibmonai.datasets.msd_hippocampus",
    "left_atrium": "calibmonai.datasets.left_atrium",
    "wmh": "calibmonai.datasets.wmh",
}

#: other spellings accepted by :func:`get_dataset`
ALIASES: dict[str, str] = {
    "mrbrains": "mrbrains18",
    "mrbrains2018": "mrbrains18",
    "brats": "brats19",
    "brats2019": "brats19",
}


def available() -> list[str]:
    """The registered dataset names."""
    return sorted(DATASETS)


def get_dataset(name: str) -> ModuleType:
    """The reader module of dataset ``name`` (case-insensitive; ``-`` and ``_`` are ignored for aliases)."""
    key = str(name).strip().lower()
    if key not in DATASETS:
        key = ALIASES.get(key.replace("-", "").replace("_", ""), key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {available()}")
    return importlib.import_module(DATASETS[key])


def find_cases(name: str, root: str | Path, strict: bool = True) -> list[Case]:
    """``get_dataset(name).find_cases(root, strict)``."""
    return get_dataset(name).find_cases(root, strict=strict)


def check_folder(name: str, root: str | Path) -> CheckReport:
    """Read the folder of dataset ``name`` and check every case (what ``calibmonai check-data`` runs).

    Never raises for a bad folder: a folder that cannot be read at all is reported in ``report.error``. The embedded
    task (:data:`EMBEDDED_TASK`, a ``datalist.json`` folder) is checked with :func:`calibmonai.data.check_datalist`.
    """
    if name == EMBEDDED_TASK:
        from calibmonai.data import check_datalist

        return check_datalist(root)
    module = get_dataset(name)
    report = CheckReport(dataset=module.NAME, root=str(root))
    try:
        cases = module.find_cases(root, strict=False)
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        report.error = str(e)
        return report
    if cases:
        report.data_dir = os.path.commonpath([str(Path(p).parent) for c in cases for p in c.paths()])
    for case in cases:
        report.cases.append(case.id)
        try:
            problems = module.check_case(case)
        except Exception as e:  # a reader bug or an OS error must not hide the other cases
            problems = [f"could not check {case.id}: {type(e).__name__}: {e}"]
        if problems:
            report.problems[case.id] = list(problems)
    return report


def make_split(name: str, case_ids: Any, seed: int = 0, **kwargs: Any) -> dict[str, list[str]]:
    """``get_dataset(name).make_split(case_ids, seed, **kwargs)``."""
    return get_dataset(name).make_split(case_ids, seed=seed, **kwargs)


def datalist(name: str, root: str | Path, split: Any = None, seed: int = 0, **kwargs: Any) -> dict[str, list[dict]]:
    """``get_dataset(name).datalist(root, split, seed, **kwargs)``."""
    return get_dataset(name).datalist(root, split=split, seed=seed, **kwargs)


def write_split(name: str, root: str | Path | None, path: str | Path, seed: int = 0, **kwargs: Any) -> Path:
    """Write the split of dataset ``name`` as JSON at ``path`` and return the path.

    The subjects are those found under ``root``, or, with ``root=None``, the dataset's ``KNOWN_IDS``
    (``ValueError`` for a dataset whose ids are not known in advance). ``kwargs`` go to ``make_split``
    (e.g. ``fold`` for MRBrainS18) and are recorded in the file.
    """
    module = get_dataset(name)
    if root is None:
        ids = getattr(module, "KNOWN_IDS", None)
        if not ids:
            raise ValueError(f"the subject ids of {module.NAME} are not known in advance: give the data folder")
        source = "known ids"
    else:
        ids = sorted({c.subject for c in module.find_cases(root)})
        source = str(root)
    split = module.make_split(ids, seed=seed, **kwargs)
    return save_split(
        split, path, dataset=module.NAME, seed=int(seed), unit="subject", source=source, n_subjects=len(ids), **kwargs
    )


def bundle_dataset(bundle: str | Path) -> str:
    """The registry name of the dataset a bundle trains on: ``dataset_name`` of its ``configs/train.yaml`` (a bundle
    name under the repository's ``bundles/`` or a bundle folder), e.g. ``"acdc"`` for ``acdc_seg2d``.

    Raises:
        FileNotFoundError: the bundle or its ``configs/train.yaml`` does not exist.
        ValueError: the bundle names no ``dataset_name``, or one that is neither a registered dataset reader nor
            the embedded task (:data:`EMBEDDED_TASK`, returned as is).
    """
    import yaml

    from calibmonai.bundle_tools import bundle_dir

    path = bundle_dir(str(bundle)) / "configs" / "train.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"bundle {bundle!r} has no {path}")
    config = yaml.safe_load(path.read_text()) or {}
    name = config.get("dataset_name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{path} names no dataset_name")
    if name == EMBEDDED_TASK:
        return name
    try:
        return get_dataset(name).NAME
    except ValueError:
        raise ValueError(f"bundle {bundle!r} trains on {name!r}, which is not a dataset reader; known: {available()}") from None
