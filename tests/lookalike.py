"""Look-alike copies of public dataset downloads for the reader tests: the real folder and file names,
label values, ``Info.cfg`` / ``dataset.json`` files and the junk real archives carry (``._*`` AppleDouble
files, ``.DS_Store``, ``desktop.ini``, ``Thumbs.db``, README/citation files), with tiny volumes.

Images carry known values so tests can check channel order and label mapping by hand:
- every modality ``c`` (in the reader's ``MODALITIES`` order) is filled with ``100 * (c + 1)`` plus a small
  ramp, so channel ``c`` of a loaded case has minimum ``100 * (c + 1)``;
- a label volume holds every value of ``values`` along its first axis (:func:`label_volume`), so each value's
  voxels are known.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

__all__ = [
    "SHAPE",
    "label_volume",
    "modality_volume",
    "write_nifti",
    "write_junk",
    "write_acdc",
    "write_mrbrains18",
    "write_brats2019",
    "write_msd_brats",
    "write_busi",
]

SHAPE = (16, 16, 4)


def label_volume(values: Sequence[int], shape: Sequence[int] = SHAPE) -> np.ndarray:
    """``uint8`` volume whose row ``i`` (first axis) is ``values[i % len(values)]``."""
    vol = np.zeros(shape, dtype=np.uint8)
    for i in range(shape[0]):
        vol[i] = values[i % len(values)]
    return vol


def modality_volume(channel: int, shape: Sequence[int] = SHAPE) -> np.ndarray:
    """``int16`` volume of channel ``channel``: ``100 * (channel + 1)`` plus a ramp 0..9 along the last axis."""
    ramp = np.arange(shape[-1], dtype=np.int16) % 10
    return (np.full(shape, 100 * (channel + 1), dtype=np.int16) + ramp).astype(np.int16)


def write_nifti(path: str | Path, data: np.ndarray, spacing: Sequence[float] = (1.5, 1.5, 10.0)) -> Path:
    """Write ``data`` with a diagonal affine of ``spacing`` (``.nii`` or ``.nii.gz`` by the name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag(list(spacing)[:3] + [1.0])
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def write_junk(folder: str | Path, names: Sequence[str] = ()) -> None:
    """The operating-system junk of real archives in ``folder``, plus ``._<name>`` AppleDouble twins of
    ``names`` (binary garbage, not NIfTI)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    (folder / "desktop.ini").write_text("[.ShellClassInfo]\r\nIconResource=C:\\x.ico,0\r\n")
    (folder / "Thumbs.db").write_bytes(bytes(32))
    for name in names:
        (folder / f"._{name}").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(32))


# ------------------------------------------------------------------------------------------------ ACDC


def _info_cfg(ed: int, es: int, group: str, nb_frames: int) -> str:
    return f"ED: {ed}\nES: {es}\nGroup: {group}\nHeight: 184.0\nNbFrame: {nb_frames}\nWeight: 95.0\n"


def write_acdc(
    root: str | Path,
    n_training: int = 3,
    n_testing: int = 1,
    nested: bool = True,
    testing_gt: bool = True,
) -> Path:
    """ACDC as unzipped: ``root/ACDC/database/{training,testing}/patientNNN/`` (``nested``) or
    ``root/{training,testing}/``. Returns the folder to give the reader (``root/ACDC`` or ``root``).

    Patient ``i`` (1-based): ED frame 1, ES frame ``10 + i`` (``Info.cfg``), groups cycling DCM, HCM, MINF,
    NOR, RV; frame labels :func:`label_volume` of ``(0, 1, 2, 3)``; a small ``_4d`` file; patient 2's files
    are ``.nii`` (not ``.nii.gz``). Testing patients are numbered from 101, with ``_gt`` files when
    ``testing_gt``. Junk: ``._*`` twins, ``.DS_Store``, ``desktop.ini``, ``Thumbs.db``,
    ``MANDATORY_CITATION.md``.
    """
    root = Path(root)
    top = root / "ACDC" if nested else root
    base = top / "database" if nested else top
    groups = ("DCM", "HCM", "MINF", "NOR", "RV")
    for subset, first, n in (("training", 1, n_training), ("testing", 101, n_testing)):
        for i in range(first, first + n):
            pid = f"patient{i:03d}"
            folder = base / subset / pid
            ext = ".nii" if i == 2 else ".nii.gz"
            es = 10 + (i % 20)
            nb = es + 3
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "Info.cfg").write_text(_info_cfg(1, es, groups[(i - 1) % len(groups)], nb))
            (folder / "MANDATORY_CITATION.md").write_text("Please cite Bernard et al., IEEE TMI 2018.\n")
            four_d = np.stack([modality_volume(0)] * 2, axis=-1)
            write_nifti(folder / f"{pid}_4d{ext}", four_d)
            for frame in (1, es):
                write_nifti(folder / f"{pid}_frame{frame:02d}{ext}", modality_volume(0) + frame)
                if subset == "training" or testing_gt:
                    write_nifti(folder / f"{pid}_frame{frame:02d}_gt{ext}", label_volume((0, 1, 2, 3)))
            write_junk(folder, [f"{pid}_frame01{ext}"])
    write_junk(base / "training")
    (base / "MANDATORY_CITATION.md").write_text("ACDC\n")
    return top


# ------------------------------------------------------------------------------------------- MRBrainS18


def write_mrbrains18(root: str | Path, ids: Sequence[str] = ("1", "4", "070"), nested: bool = True) -> Path:
    """MRBrainS18 training data: ``root/MRBrainS18/training/<id>/{pre,orig}/...`` and ``<id>/segm.nii.gz``
    (``nested``), or ``root/training/``. Returns the folder to give the reader.

    ``pre/`` has ``reg_T1``, ``reg_IR``, ``FLAIR`` (channels 0, 1, 2 of :func:`modality_volume`) and the
    unregistered ``T1``, ``IR`` (another shape, as on disk); ``orig/`` the same names; ``segm`` holds
    :func:`label_volume` of ``0..10``. Subject ``"4"`` uses ``.nii`` files. A ``README.txt`` and junk sit
    beside the subjects.
    """
    root = Path(root)
    top = root / "MRBrainS18" if nested else root
    training = top / "training"
    for sid in ids:
        folder = training / sid
        ext = ".nii" if sid == "4" else ".nii.gz"
        spacing = (0.958, 0.958, 3.0)
        for sub in ("pre", "orig"):
            for c, stem in enumerate(("reg_T1", "reg_IR", "FLAIR")):
                write_nifti(folder / sub / f"{stem}{ext}", modality_volume(c), spacing)
            for stem in ("T1", "IR"):
                write_nifti(folder / sub / f"{stem}{ext}", modality_volume(0, (12, 12, 8)), (1.0, 1.0, 1.0))
        write_nifti(folder / f"segm{ext}", label_volume(tuple(range(11))), spacing)
        write_junk(folder / "pre", [f"FLAIR{ext}"])
    write_junk(training)
    (training / "README.txt").write_text("MRBrainS18 training data\n")
    return top


# ----------------------------------------------------------------------------------------------- BraTS


def write_brats2019(
    root: str | Path,
    hgg: Sequence[str] = ("BraTS19_2013_10_1", "BraTS19_CBICA_AAB_1"),
    lgg: Sequence[str] = ("BraTS19_2013_0_1",),
) -> Path:
    """``root/MICCAI_BraTS_2019_Data_Training/{HGG,LGG}/<id>/<id>_{flair,t1,t1ce,t2,seg}.nii.gz`` with
    ``name_mapping.csv`` and ``survival_data.csv``; returns ``root``. Modality ``flair, t1, t1ce, t2`` is
    channel 0..3 of :func:`modality_volume`; ``seg`` holds :func:`label_volume` of ``(0, 1, 2, 4)``. The
    LGG case uses ``.nii`` files."""
    root = Path(root)
    top = root / "MICCAI_BraTS_2019_Data_Training"
    for grade, ids in (("HGG", hgg), ("LGG", lgg)):
        for cid in ids:
            folder = top / grade / cid
            ext = ".nii" if grade == "LGG" else ".nii.gz"
            for c, suffix in enumerate(("flair", "t1", "t1ce", "t2")):
                write_nifti(folder / f"{cid}_{suffix}{ext}", modality_volume(c), (1.0, 1.0, 1.0))
            write_nifti(folder / f"{cid}_seg{ext}", label_volume((0, 1, 2, 4)), (1.0, 1.0, 1.0))
            write_junk(folder, [f"{cid}_seg{ext}"])
        write_junk(top / grade)
    (top / "name_mapping.csv").write_text("Grade,BraTS_2017_subject_ID,BraTS_2018_subject_ID,BraTS_2019_subject_ID\n")
    (top / "survival_data.csv").write_text("BraTS19ID,Age,Survival,ResectionStatus\n")
    return root


def write_msd_brats(
    root: str | Path, n: int = 3, n_test: int = 1, modality: Sequence[str] = ("FLAIR", "T1w", "t1gd", "T2w")
) -> Path:
    """``root/Task01_BrainTumour/`` as released by the Medical Segmentation Decathlon: ``dataset.json``,
    ``imagesTr/BRATS_NNN.nii.gz`` 4D (channel ``c`` = :func:`modality_volume` ``c`` in the last axis),
    ``labelsTr/`` with :func:`label_volume` of ``(0, 1, 2, 3)``, ``imagesTs/``, and the ``._BRATS_*`` twins
    of the real archive. Returns the task folder."""
    top = Path(root) / "Task01_BrainTumour"
    training = []
    for i in range(1, n + 1):
        name = f"BRATS_{i:03d}.nii.gz"
        image = np.stack([modality_volume(c) for c in range(4)], axis=-1)
        write_nifti(top / "imagesTr" / name, image, (1.0, 1.0, 1.0))
        write_nifti(top / "labelsTr" / name, label_volume((0, 1, 2, 3)), (1.0, 1.0, 1.0))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        write_junk(top / "imagesTr", [name])
        write_junk(top / "labelsTr", [name])
    tests = []
    for i in range(n + 1, n + 1 + n_test):
        name = f"BRATS_{i:03d}.nii.gz"
        write_nifti(top / "imagesTs" / name, np.stack([modality_volume(c) for c in range(4)], axis=-1), (1.0, 1.0, 1.0))
        tests.append(f"./imagesTs/{name}")
    doc = {
        "name": "BRATS",
        "description": "Gliomas segmentation tumour and oedema in on brain images",
        "tensorImageSize": "4D",
        "modality": {str(i): m for i, m in enumerate(modality)},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": n,
        "numTest": n_test,
        "training": training,
        "test": tests,
    }
    (top / "dataset.json").write_text(json.dumps(doc, indent=4))
    return top


# ------------------------------------------------------------------------------------------------ BUSI


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(str(path))


def busi_image(index: int, size: tuple[int, int] = (20, 24)) -> np.ndarray:
    """RGB ``(height, width, 3)`` uint8 grey-level image (three equal channels), a ramp plus ``index``."""
    h, w = size
    grey = (np.add.outer(np.arange(h) * 3, np.arange(w) * 2) + index).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def busi_mask(rows: slice, cols: slice, size: tuple[int, int] = (20, 24), rgb: bool = False) -> np.ndarray:
    """0/255 mask ``(height, width)`` (or RGB) with the rectangle ``rows x cols`` set."""
    m = np.zeros(size, dtype=np.uint8)
    m[rows, cols] = 255
    return np.repeat(m[..., None], 3, axis=-1) if rgb else m


def write_busi(
    root: str | Path, n_benign: int = 3, n_malignant: int = 2, n_normal: int = 1, nested: bool = True
) -> Path:
    """``root/archive/Dataset_BUSI_with_GT/{benign,malignant,normal}/`` (``nested``) or
    ``root/Dataset_BUSI_with_GT``; returns the folder holding ``Dataset_BUSI_with_GT``.

    Image ``<cat> (i)`` is :func:`busi_image` ``(i)`` (RGB), its mask the rectangle rows 2:6, cols 3:8;
    ``benign (2)`` also has ``_mask_1.png`` (rows 10:12, cols 15:20) and ``_mask_2.png`` (rows 14:16,
    cols 1:3); ``malignant (1)``'s mask is RGB. Junk everywhere."""
    root = Path(root)
    parent = root / "archive" if nested else root
    top = parent / "Dataset_BUSI_with_GT"
    for cat, n in (("benign", n_benign), ("malignant", n_malignant), ("normal", n_normal)):
        folder = top / cat
        for i in range(1, n + 1):
            stem = f"{cat} ({i})"
            _png(folder / f"{stem}.png", busi_image(i))
            rgb = cat == "malignant" and i == 1
            _png(
                folder / f"{stem}_mask.png",
                (
                    busi_mask(slice(2, 6), slice(3, 8), rgb=rgb)
                    if cat != "normal"
                    else busi_mask(slice(0, 0), slice(0, 0))
                ),
            )
            if cat == "benign" and i == 2:
                _png(folder / f"{stem}_mask_1.png", busi_mask(slice(10, 12), slice(15, 20)))
                _png(folder / f"{stem}_mask_2.png", busi_mask(slice(14, 16), slice(1, 3)))
        write_junk(folder, [f"{cat} (1).png"])
    write_junk(top)
    return parent
