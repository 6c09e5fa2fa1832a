"""Shared pieces of the dataset readers: the :class:`Case` record, junk-file filtering, locating the dataset
folder inside whatever the researcher unzipped, NIfTI checks, seeded patient-level splits, split files and
MONAI datalists.

The readers follow the layout of each publisher's download, in the spirit of nnU-Net's conversion scripts
(``nnunetv2/dataset_conversion``): one small module per dataset that only knows its layout, everything
downstream shared.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from calibmonai.run_files import atomic_file

__all__ = [
    "Case",
    "CheckReport",
    "SPLIT_KEYS",
    "JUNK_NAMES",
    "is_junk",
    "natural_key",
    "list_dir",
    "find_nifti",
    "expect_nifti",
    "nifti_stem",
    "AmbiguousDataError",
    "find_dataset_dir",
    "child_dir",
    "check_nifti_case",
    "check_label_values",
    "split_counts",
    "seeded_split",
    "leave_one_out_split",
    "make_datalist",
    "build_datalist",
    "load_split",
    "save_split",
    "format_report",
]

#: the three parts of a split and of a datalist, with MONAI's datalist key names
SPLIT_KEYS = ("training", "validation", "test")

#: names (lower case) that real downloads carry and that are never data
JUNK_NAMES = frozenset(
    {
        ".ds_store",
        "desktop.ini",
        "thumbs.db",
        "__macosx",
        ".spotlight-v100",
        ".trashes",
        ".fseventsd",
        ".ipynb_checkpoints",
        "@eadir",
    }
)

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class Case:
    """One sample of a dataset as found on disk.

    Attributes:
        id: unique id of the sample within the dataset (e.g. ``"patient001_ED"``, ``"benign (12)"``).
        subject: the patient/subject the sample belongs to; splits are made over subjects so that no
            patient is in two parts (equal to ``id`` when a subject has one sample).
        images: image paths, one per modality in the module's ``MODALITIES`` order, or a single path to a
            multi-channel file (e.g. the 4D MSD BraTS volume, channels in ``MODALITIES`` order).
        label: label path, or ``None`` when the sample has no reference segmentation.
        extra: dataset-specific fields copied into the datalist entry (e.g. ``phase``, ``frame``, ``group``,
            ``masks`` for BUSI's several mask files).
    """

    id: str
    subject: str
    images: tuple[str, ...]
    label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def image(self) -> str | list[str]:
        """The datalist's ``image``: the one path, or the list of modality paths."""
        return self.images[0] if len(self.images) == 1 else list(self.images)

    def paths(self) -> list[str]:
        """Every file of the case: images then label (and extra ``masks`` when present)."""
        out = list(self.images)
        if self.label is not None:
            out.append(self.label)
        out.extend(p for p in self.extra.get("masks", ()) if p not in out)
        return out

    def missing(self) -> list[str]:
        """The case's files that do not exist on disk."""
        return [p for p in self.paths() if not Path(p).is_file()]

    def entry(self) -> dict[str, Any]:
        """The MONAI datalist entry: ``image`` (one path or a list of modality paths), ``label``, ``case``,
        ``subject`` and the extra fields."""
        out: dict[str, Any] = {"image": self.image}
        if self.label is not None:
            out["label"] = self.label
        out["case"] = self.id
        out["subject"] = self.subject
        out.update(self.extra)
        return out


# ----------------------------------------------------------------------------------------------- files


def is_junk(path: str | Path) -> bool:
    """Whether a file or folder name is operating-system or archive junk: AppleDouble ``._*`` files, hidden
    ``.*`` names, ``.DS_Store``, ``desktop.ini``, ``Thumbs.db``, ``__MACOSX``, Office lock files ``~$*``."""
    name = Path(path).name
    low = name.lower()
    return low in JUNK_NAMES or name.startswith(".") or name.startswith("~$")


_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str | Path) -> tuple:
    """Sort key ordering embedded numbers by value: ``"benign (2)" < "benign (10)"``, ``"14" < "070" < "148"``."""
    parts = _DIGITS.split(str(text))
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p.lower()) for p in parts)


def list_dir(folder: str | Path, dirs: bool | None = None) -> list[Path]:
    """Entries of ``folder`` without junk, naturally sorted.

    Args:
        folder: the folder to list.
        dirs: ``True`` for sub-folders only, ``False`` for files only, ``None`` for both.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    out = []
    for p in folder.iterdir():
        if is_junk(p):
            continue
        if dirs is True and not p.is_dir():
            continue
        if dirs is False and not p.is_file():
            continue
        out.append(p)
    return sorted(out, key=lambda p: natural_key(p.name))


def nifti_stem(path: str | Path) -> str | None:
    """The name without ``.nii.gz`` / ``.nii`` (any case), or ``None`` when it is not a NIfTI name."""
    name = Path(path).name
    low = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return None


def find_nifti(folder: str | Path, stem: str) -> Path | None:
    """``folder/stem.nii.gz`` or ``folder/stem.nii`` (exact name first, then ignoring case); ``None`` if absent."""
    folder = Path(folder)
    for suffix in NIFTI_SUFFIXES:
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    if folder.is_dir():
        low = stem.lower()
        for p in list_dir(folder, dirs=False):
            s = nifti_stem(p)
            if s is not None and s.lower() == low:
                return p
    return None


def expect_nifti(folder: str | Path, stem: str, strict: bool = True) -> str:
    """Path of ``stem.nii.gz``/``stem.nii`` in ``folder``.

    Raises:
        FileNotFoundError: naming the expected ``folder/stem.nii.gz`` when absent and ``strict``; when not
            ``strict`` that path is returned instead, for :meth:`Case.missing` and the checks to report.
    """
    p = find_nifti(folder, stem)
    if p is not None:
        return str(p)
    expected = Path(folder) / f"{stem}.nii.gz"
    if strict:
        raise FileNotFoundError(f"missing file: {expected} (nor {stem}.nii)")
    return str(expected)


class AmbiguousDataError(ValueError):
    """A data folder holds two candidate dataset folders at the same depth (two releases or copies of a dataset)."""


def find_dataset_dir(
    root: str | Path,
    is_match: Callable[[Path], bool],
    what: str,
    max_depth: int = 4,
    prefer: Sequence[str] = (),
) -> Path:
    """The first folder at or below ``root`` (breadth first, junk skipped, up to ``max_depth`` levels) for
    which ``is_match`` holds: this accepts the dataset folder itself, its parent, or the archive's nesting
    (e.g. ``ACDC/database/training``). Among matches at the same depth, a name in ``prefer`` (ignoring case)
    wins, e.g. ``training`` over its sibling ``testing``.

    Raises:
        FileNotFoundError: naming ``root`` and what was looked for.
        AmbiguousDataError: when two folders at the same depth match and ``prefer`` does not choose between them
            (two releases or two copies of a dataset under one parent), naming both: reading either silently would
            train on data the user did not mean.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data folder does not exist: {root}")
    if not root.is_dir():
        raise FileNotFoundError(f"data path is not a folder: {root}")
    preferred = [p.lower() for p in prefer]
    level = [root]
    for _ in range(max_depth + 1):
        matches = [f for f in level if is_match(f)]
        if matches:
            def rank(f: Path) -> int:
                return preferred.index(f.name.lower()) if f.name.lower() in preferred else len(preferred)

            best = min(rank(f) for f in matches)
            tied = [f for f in matches if rank(f) == best]
            if len(tied) > 1:
                raise AmbiguousDataError(
                    f"{len(tied)} folders in {root} hold a {what}: {', '.join(str(f) for f in tied)}; give the one "
                    f"to use as the data folder (the bundle's --dataset_dir, check-data's --data)"
                )
            return tied[0]
        nxt: list[Path] = []
        for folder in level:
            try:
                nxt.extend(list_dir(folder, dirs=True))
            except (FileNotFoundError, PermissionError):
                continue
        level = nxt
        if not level:
            break
    raise FileNotFoundError(f"no {what} found in {root} (searched {max_depth} folder levels down)")


def child_dir(folder: str | Path, name: str) -> Path | None:
    """The sub-folder of ``folder`` called ``name``, ignoring case; ``None`` if absent."""
    folder = Path(folder)
    p = folder / name
    if p.is_dir():
        return p
    if folder.is_dir():
        for q in list_dir(folder, dirs=True):
            if q.name.lower() == name.lower():
                return q
    return None


# ---------------------------------------------------------------------------------------------- checks


def _load_nifti(path: str, problems: list[str]):
    """``(shape, affine, data)`` of a NIfTI file, or ``None`` after appending a problem naming it."""
    import nibabel as nib

    if not Path(path).is_file():
        problems.append(f"missing file: {path}")
        return None
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel, gzip, zlib and EOF errors all mean the same thing here
        problems.append(f"unreadable or corrupt file: {path} ({type(e).__name__}: {e})")
        return None
    return tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=np.float64), data


def check_label_values(data: np.ndarray, allowed: Iterable[int], path: str) -> list[str]:
    """Problems with the values of a label array: non-integer values, values outside ``allowed``."""
    values = np.unique(np.asarray(data))
    allowed = sorted(int(v) for v in allowed)
    out = []
    if values.size and not np.all(np.equal(np.mod(values, 1), 0)):
        frac = values[np.mod(values, 1) != 0][:5]
        out.append(f"non-integer label values in {path}: {frac.tolist()}")
        values = values[np.mod(values, 1) == 0]
    bad = sorted(int(v) for v in values if int(v) not in allowed)
    if bad:
        out.append(f"label values outside {allowed} in {path}: {bad}")
    return out


def check_nifti_case(
    case: Case,
    label_values: Iterable[int],
    channels: int | None = None,
    spatial_dims: int = 3,
    affine_atol: float = 1e-3,
) -> list[str]:
    """Problems of a NIfTI case, each naming the file: missing or unreadable/corrupt files, images and label
    whose spatial shapes or affines differ, NaN or Inf image voxels, label values outside ``label_values``, and
    (``channels``) a single multi-channel image without that many channels.

    The first image is the reference grid; affines are compared with an absolute tolerance of
    ``affine_atol`` (mm), which ignores header rounding but not a different grid.
    """
    problems: list[str] = []
    loaded = {}
    for p in list(case.images) + ([case.label] if case.label is not None else []):
        r = _load_nifti(p, problems)
        if r is not None:
            loaded[p] = r
    if case.label is None:
        problems.append(f"no label file for case {case.id}")
    if channels is not None and len(case.images) == 1 and case.images[0] in loaded:
        shape = loaded[case.images[0]][0]
        n = shape[spatial_dims] if len(shape) > spatial_dims else 1
        if n != channels:
            problems.append(f"{case.images[0]} has {n} channels (shape {shape}), expected {channels}")
    ref_path = next((p for p in case.images if p in loaded), None)
    if ref_path is not None:
        ref_shape, ref_affine, _ = loaded[ref_path]
        for p, (shape, affine, _) in loaded.items():
            if p == ref_path:
                continue
            if tuple(shape[:spatial_dims]) != tuple(ref_shape[:spatial_dims]):
                problems.append(
                    f"shape mismatch: {p} is {tuple(shape[:spatial_dims])} but {ref_path} is "
                    f"{tuple(ref_shape[:spatial_dims])}"
                )
            elif not np.allclose(affine, ref_affine, atol=affine_atol):
                problems.append(f"affine mismatch: {p} and {ref_path} are not on the same grid")
    for p in case.images:
        if p in loaded and np.issubdtype(loaded[p][2].dtype, np.floating) and not np.isfinite(loaded[p][2]).all():
            bad = int(np.size(loaded[p][2]) - np.count_nonzero(np.isfinite(loaded[p][2])))
            problems.append(f"{bad} non-finite voxel value(s) (NaN or Inf) in {p}")
    if case.label is not None and case.label in loaded:
        shape, _, data = loaded[case.label]
        if len(shape) > spatial_dims and int(np.prod(shape[spatial_dims:])) != 1:
            problems.append(f"label {case.label} has extra dimensions: shape {shape}")
        problems.extend(check_label_values(data, label_values, case.label))
    return problems


@dataclass
class CheckReport:
    """What ``calibmonai check-data`` prints: per-case problems and the number of usable cases.

    Attributes:
        dataset: the dataset name.
        root: the folder that was given.
        cases: ids of every case found, in order.
        problems: case id -> its problems (only cases with problems).
        error: a problem that stopped the reading altogether (folder missing or empty, no dataset layout).
        data_dir: the dataset folder located under ``root``.
    """

    dataset: str
    root: str
    cases: list[str] = field(default_factory=list)
    problems: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    data_dir: str | None = None

    @property
    def n_cases(self) -> int:
        return len(self.cases)

    @property
    def n_usable(self) -> int:
        """Cases without any problem."""
        return sum(1 for c in self.cases if not self.problems.get(c))

    @property
    def ok(self) -> bool:
        """True when the folder was read, holds at least one case and every case is usable."""
        return self.error is None and self.n_cases > 0 and self.n_usable == self.n_cases

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "root": self.root,
            "data_dir": self.data_dir,
            "n_cases": self.n_cases,
            "n_usable": self.n_usable,
            "ok": self.ok,
            "error": self.error,
            "problems": self.problems,
        }


def format_report(report: CheckReport, max_problems: int = 50) -> str:
    """Human-readable text of a :class:`CheckReport` (what ``calibmonai check-data`` prints)."""
    lines = [f"dataset {report.dataset}: {report.root}"]
    if report.data_dir and report.data_dir != report.root:
        lines.append(f"  dataset folder: {report.data_dir}")
    if report.error is not None:
        lines.append(f"  ERROR: {report.error}")
        lines.append("  0 usable cases")
        return "\n".join(lines)
    shown = 0
    for case_id in report.cases:
        for problem in report.problems.get(case_id, ()):
            if shown < max_problems:
                lines.append(f"  {case_id}: {problem}")
            shown += 1
    if shown > max_problems:
        lines.append(f"  ... and {shown - max_problems} more problems")
    bad = report.n_cases - report.n_usable
    lines.append(
        f"  {report.n_usable} usable cases of {report.n_cases}"
        + (f" ({bad} with problems)" if bad else "")
        + ("" if report.n_cases else " (no case found)")
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- splits


def split_counts(n: int, full_counts: Sequence[int]) -> tuple[int, int, int]:
    """``(training, validation, test)`` sizes for ``n`` subjects.

    The published counts ``full_counts`` when ``n`` equals their sum; otherwise the same fractions
    (validation and test rounded to the nearest integer, training the rest), with at least one subject in
    each part when ``n >= 3`` (so a small subset still trains, validates and tests).
    """
    if n < 0:
        raise ValueError(f"number of subjects must be >= 0, got {n}")
    full = tuple(int(c) for c in full_counts)
    if len(full) != 3 or min(full) < 0 or sum(full) == 0:
        raise ValueError(f"full_counts must be three non-negative counts, got {full_counts}")
    if n == sum(full):
        return full  # type: ignore[return-value]
    total = sum(full)
    val = int(math.floor(n * full[1] / total + 0.5))
    test = int(math.floor(n * full[2] / total + 0.5))
    if n >= 3:
        val = max(val, 1) if full[1] else 0
        test = max(test, 1) if full[2] else 0
    val = min(val, n)
    test = min(test, n - val)
    return n - val - test, val, test


def _unique_sorted(ids: Iterable[str]) -> list[str]:
    ids = [str(i) for i in ids]
    seen, dup = set(), []
    for i in ids:
        if i in seen:
            dup.append(i)
        seen.add(i)
    if dup:
        raise ValueError(f"duplicate subject ids: {sorted(set(dup))[:10]}")
    return sorted(ids, key=natural_key)


def seeded_split(
    case_ids: Iterable[str],
    full_counts: Sequence[int],
    seed: int = 0,
    group_of: Callable[[str], str] | None = None,
) -> dict[str, list[str]]:
    """Deterministic random split of ids into ``training``/``validation``/``test``.

    The subjects are sorted (natural order), shuffled with ``random.Random(seed)`` (the same on every
    platform and Python version) and cut at :func:`split_counts`; each part is returned naturally sorted.
    The result depends only on the set of ids and the seed, not on their order or on the file system.

    Args:
        case_ids: subject ids, or sample ids when ``group_of`` maps each to its subject.
        full_counts: ``(training, validation, test)`` subject counts of the full dataset.
        seed: the seed.
        group_of: sample id -> subject id (e.g. ``patient001_frame01`` -> ``patient001``); the counts are
            then counted in subjects and every sample follows its subject, and the parts list the given ids.
    """
    ids = [str(i) for i in case_ids]
    if group_of is None:
        ids = _unique_sorted(ids)
        groups = {i: [i] for i in ids}
    else:
        groups = {}
        for i in _unique_sorted(ids):
            groups.setdefault(group_of(i), []).append(i)
    subjects = sorted(groups, key=natural_key)
    n_train, n_val, _ = split_counts(len(subjects), full_counts)
    order = list(subjects)
    random.Random(int(seed)).shuffle(order)
    parts = (order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])
    return {k: sorted((i for g in p for i in groups[g]), key=natural_key) for k, p in zip(SPLIT_KEYS, parts)}


def leave_one_out_split(
    case_ids: Iterable[str], fold: int, seed: int = 0, n_validation: int = 1
) -> dict[str, list[str]]:
    """Leave-one-subject-out: subject ``fold`` (in natural order) is the test set, ``n_validation`` of the
    others (drawn with ``random.Random(seed + fold)``) validate, the rest train."""
    ids = _unique_sorted(case_ids)
    if not 0 <= int(fold) < len(ids):
        raise ValueError(f"fold must be in [0, {len(ids) - 1}] for {len(ids)} subjects, got {fold}")
    test = [ids[int(fold)]]
    rest = [i for i in ids if i != test[0]]
    if not 0 <= n_validation <= max(len(rest) - 1, 0):
        raise ValueError(
            f"n_validation must be in [0, {max(len(rest) - 1, 0)}] for {len(ids)} subjects, got {n_validation}"
        )
    order = list(rest)
    random.Random(int(seed) + int(fold)).shuffle(order)
    val = sorted(order[:n_validation], key=natural_key)
    train = sorted(order[n_validation:], key=natural_key)
    return {"training": train, "validation": val, "test": test}


def save_split(split: Mapping[str, Sequence[str]], path: str | Path, **meta: Any) -> Path:
    """Write a split as JSON: ``meta`` fields (dataset, seed, ...) then the three lists of subject ids."""
    for k in SPLIT_KEYS:
        if k not in split:
            raise ValueError(f"split lacks the {k!r} part (has {sorted(split)})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = dict(meta)
    doc["counts"] = {k: len(split[k]) for k in SPLIT_KEYS}
    for k in SPLIT_KEYS:
        doc[k] = list(split[k])
    with atomic_file(path) as tmp:  # 4-space indent in key order: model-zoo's pretty-format-json hook
        tmp.write_text(json.dumps(doc, indent=4) + "\n")
    return path


def load_split(split: str | Path | Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """A split from a JSON file written by :func:`save_split` (or a mapping); checks the three parts are
    present and disjoint."""
    if isinstance(split, Mapping):
        doc = dict(split)
        source = "split"
    else:
        path = Path(split)
        if not path.is_file():
            raise FileNotFoundError(f"split file not found: {path}")
        doc = json.loads(path.read_text())
        source = str(path)
    out = {}
    for k in SPLIT_KEYS:
        if k not in doc:
            raise ValueError(f"{source} lacks the {k!r} list")
        out[k] = [str(i) for i in doc[k]]
    seen: dict[str, str] = {}
    for k in SPLIT_KEYS:
        for i in out[k]:
            if i in seen:
                raise ValueError(f"{source}: subject {i!r} is in both {seen[i]!r} and {k!r}")
            seen[i] = k
    return out


def make_datalist(cases: Sequence[Case], split: Mapping[str, Sequence[str]]) -> dict[str, list[dict[str, Any]]]:
    """MONAI datalist ``{"training": [...], "validation": [...], "test": [...]}``: for each part, the cases
    of the subjects it names (every sample of a subject goes to that subject's part); a part may also name
    single cases by ``Case.id``.

    Raises:
        FileNotFoundError: when the split names ids that match no subject nor case in ``cases``.
    """
    split = load_split(split)
    by_subject: dict[str, list[Case]] = {}
    by_id: dict[str, Case] = {}
    for c in cases:
        by_subject.setdefault(c.subject, []).append(c)
        by_id[c.id] = c
    absent = [i for k in SPLIT_KEYS for i in split[k] if i not in by_subject and i not in by_id]
    if absent:
        raise FileNotFoundError(
            f"the split names {len(absent)} subjects that are not in the data folder, e.g. {absent[:5]}"
        )
    out: dict[str, list[dict[str, Any]]] = {}
    for k in SPLIT_KEYS:
        entries, seen = [], set()
        for i in split[k]:
            for c in by_subject.get(i) or [by_id[i]]:
                if c.id not in seen:
                    seen.add(c.id)
                    entries.append(c.entry())
        out[k] = entries
    return out


def build_datalist(
    cases: Sequence[Case],
    split: Any,
    make_split: Callable[..., Mapping[str, Sequence[str]]],
    seed: int = 0,
    **kwargs: Any,
) -> dict[str, list[dict[str, Any]]]:
    """Body of a module's ``datalist``: ``split`` is a mapping, a split JSON path, or ``None`` to call
    ``make_split(subject_ids, seed=seed, **kwargs)`` on the subjects of ``cases``."""
    if split is None:
        split = make_split(sorted({c.subject for c in cases}, key=natural_key), seed=seed, **kwargs)
    elif kwargs:
        raise ValueError(f"split keywords {sorted(kwargs)} are only used when split is None")
    return make_datalist(cases, split)
