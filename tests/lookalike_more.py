"""Look-alike copies of five more public downloads for the reader tests (FLARE 2021, PROMISE12, MSD Task05
prostate, MSD Task04 hippocampus, 2018 Atrial Segmentation Challenge in its nrrd and UA-MT h5 forms, WMH 2017 in
its 2017 and 2022 releases): the real folder and file names (spaces included), formats (``.nii.gz``/``.nii``,
``.mhd`` + ``.raw``, ``.nrrd``, ``.h5``), label values, ``dataset.json`` / ``train.list`` / ``test.list``
where the real ones have them, and the junk of real archives, with tiny volumes.

Known values (as in :mod:`lookalike`): modality ``c`` is :func:`lookalike.modality_volume` ``(c)`` (minimum
``100 * (c + 1)``), a label volume is :func:`lookalike.label_volume` of the dataset's values along the first
axis, so every value's voxel count is known by hand.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from lookalike import label_volume, modality_volume, write_junk, write_nifti  # noqa: E402

__all__ = [
    "LA_IDS",
    "write_itk",
    "write_flare",
    "write_promise12",
    "write_msd_prostate",
    "write_hippocampus",
    "write_left_atrium_nrrd",
    "write_left_atrium_h5",
    "write_h5",
    "write_wmh",
]

#: challenge-style patient ids (20 upper-case letters and digits) of the left atrium look-alikes
LA_IDS = (
    "0RZDK210BSMWAA6467LU",
    "2XL5HSFSE93RMOJDRGR4",
    "5UB5KFD2PK38Z4LS6W80",
    "A5RNNK0A891WUSC2V624",
    "CMPXO4J23G58J53Q98SZ",
    "K32FD6LRSUSSXGS1YUOX",
    "Q7J0WYM695R9MA285ZW0",
    "ZQPMJ4XEC5A4BISD45P1",
)


def write_itk(path: str | Path, data: np.ndarray, spacing: Sequence[float], compression: bool = False) -> Path:
    """Write an ``(x, y, z)`` array with ITK (``.mhd`` + ``.raw``, ``.nrrd``: by the name), so that MONAI's
    ``ITKReader`` gives the same array back."""
    import itk

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = itk.image_from_array(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    itk.imwrite(img, str(path), compression=compression)
    return path


def write_metaimage_char(path: str | Path, data: np.ndarray, spacing: Sequence[float]) -> Path:
    """Write an ``(x, y, z)`` array as a MetaImage of signed 8-bit voxels (``ElementType = MET_CHAR``, the type of
    PROMISE12's reference segmentations), header written by hand: ITK's Python wheels can neither write nor (as
    ``itk.imread`` without a pixel type) read this type."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(data)
    raw = path.with_suffix(".raw")
    raw.write_bytes(np.ascontiguousarray(arr.transpose(2, 1, 0)).astype(np.int8).tobytes())
    header = [
        "ObjectType = Image", "NDims = 3", "BinaryData = True", "BinaryDataByteOrderMSB = False",
        "CompressedData = False", "TransformMatrix = 1 0 0 0 1 0 0 0 1", "Offset = 0 0 0", "CenterOfRotation = 0 0 0",
        "AnatomicalOrientation = RAI", "ElementSpacing = " + " ".join(f"{float(s):g}" for s in spacing),
        "DimSize = " + " ".join(str(n) for n in arr.shape), "ElementType = MET_CHAR", f"ElementDataFile = {raw.name}",
    ]  # fmt: skip
    path.write_text("\n".join(header) + "\n")
    return path


# ----------------------------------------------------------------------------------------------- FLARE


def write_flare(root: str | Path, n: int = 4, n_validation: int = 1) -> Path:
    """FLARE21 as unzipped: ``root/FLARE21/TrainingImg/train_NNN_0000.nii.gz``,
    ``TrainingMask/train_NNN.nii.gz`` (labels :func:`label_volume` of ``0..4``), ``ValidationImg/`` without
    masks, ``README.txt``. Case ``train_001`` is stored as ``.nii`` (image and mask); case ``i``'s image is
    ``modality_volume(0) + i``. Junk: ``._*`` twins, ``.DS_Store``, ``desktop.ini``, ``Thumbs.db``. Returns
    ``root/FLARE21``."""
    top = Path(root) / "FLARE21"
    for i in range(n):
        cid = f"train_{i:03d}"
        ext = ".nii" if i == 1 else ".nii.gz"
        write_nifti(top / "TrainingImg" / f"{cid}_0000{ext}", modality_volume(0) + i, (0.8, 0.8, 2.5))
        write_nifti(top / "TrainingMask" / f"{cid}{ext}", label_volume((0, 1, 2, 3, 4)), (0.8, 0.8, 2.5))
    for i in range(1, n_validation + 1):
        write_nifti(top / "ValidationImg" / f"validation_{i:03d}_0000.nii.gz", modality_volume(0), (0.8, 0.8, 2.5))
    write_junk(top / "TrainingImg", ["train_000_0000.nii.gz"])
    write_junk(top / "TrainingMask", ["train_000.nii.gz"])
    write_junk(top)
    (top / "README.txt").write_text("MICCAI FLARE 2021 training data\n")
    return top


# -------------------------------------------------------------------------------------------- PROMISE12


def write_promise12(root: str | Path, n: int = 6, n_test: int = 2) -> Path:
    """PROMISE12 as unzipped: ``root/PROMISE12/TrainingData_Part{1,2,3}/CaseNN.mhd`` + ``.raw`` (int16
    :func:`modality_volume` ``(0) + i``) and ``CaseNN_segmentation.mhd`` + ``.raw`` (:func:`label_volume` of
    ``(0, 1)`` as the publisher's signed 8-bit ``MET_CHAR``, :func:`write_metaimage_char`), cases dealt in turn over the three parts, spacing 0.625 x 0.625 x 3.6 mm; ``TestData/`` with
    ``Case00.mhd`` ... (no segmentation, names shared with training); ``__MACOSX/`` with AppleDouble twins; junk.
    Returns ``root/PROMISE12``."""
    top = Path(root) / "PROMISE12"
    spacing = (0.625, 0.625, 3.6)
    for i in range(n):
        part = top / f"TrainingData_Part{i % 3 + 1}"
        write_itk(part / f"Case{i:02d}.mhd", modality_volume(0) + i, spacing)
        write_metaimage_char(part / f"Case{i:02d}_segmentation.mhd", label_volume((0, 1)), spacing)
    for p in range(1, 4):
        write_junk(top / f"TrainingData_Part{p}", ["Case00.mhd"])
        write_junk(top / "__MACOSX" / f"TrainingData_Part{p}", ["Case00.mhd", "Case00.raw"])
    for i in range(n_test):
        write_itk(top / "TestData" / f"Case{i:02d}.mhd", modality_volume(0), spacing)
    write_junk(top)
    return top


def _msd_json(name: str, description: str, modality: dict, labels: dict, training: list, tests: list) -> dict:
    return {
        "name": name,
        "description": description,
        "reference": "see http://medicaldecathlon.com/",
        "licence": "CC-BY-SA 4.0",
        "relase": "1.0 04/05/2018",
        "tensorImageSize": "4D" if len(modality) > 1 else "3D",
        "modality": modality,
        "labels": labels,
        "numTraining": len(training),
        "numTest": len(tests),
        "training": training,
        "test": tests,
    }


def write_msd_prostate(root: str | Path, ids: Sequence[int] = (0, 1, 2, 4, 6), test_ids: Sequence[int] = (3,)) -> Path:
    """``root/Task05_Prostate/`` of the decathlon: ``imagesTr/prostate_NN.nii.gz`` 4D ``(x, y, z, 2)``
    (channel 0 T2 = :func:`modality_volume` ``(0)``, channel 1 ADC = ``(1)``), ``labelsTr/`` with
    :func:`label_volume` of ``(0, 1, 2)``, ``imagesTs/``, ``dataset.json`` and the ``._prostate_*`` twins of
    the real tar. Returns the task folder."""
    top = Path(root) / "Task05_Prostate"
    spacing = (0.6, 0.6, 4.0)
    training = []
    for i in ids:
        name = f"prostate_{i:02d}.nii.gz"
        write_nifti(top / "imagesTr" / name, np.stack([modality_volume(0), modality_volume(1)], axis=-1), spacing)
        write_nifti(top / "labelsTr" / name, label_volume((0, 1, 2)), spacing)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        write_junk(top / "imagesTr", [name])
        write_junk(top / "labelsTr", [name])
    tests = []
    for i in test_ids:
        name = f"prostate_{i:02d}.nii.gz"
        write_nifti(top / "imagesTs" / name, np.stack([modality_volume(0), modality_volume(1)], axis=-1), spacing)
        write_junk(top / "imagesTs", [name])
        tests.append(f"./imagesTs/{name}")
    doc = _msd_json(
        "PROSTATE",
        "Prostate transitional zone and peripheral zone segmentation",
        {"0": "T2", "1": "ADC"},
        {"0": "background", "1": "PZ", "2": "TZ"},
        training,
        tests,
    )
    (top / "dataset.json").write_text(json.dumps(doc, indent=4))
    write_junk(top, ["dataset.json"])
    return top


# ------------------------------------------------------------------------------------------ Hippocampus


def write_hippocampus(root: str | Path, ids: Sequence[int] = (1, 3, 4, 6, 7, 8), test_ids: Sequence[int] = (2,)) -> Path:
    """``root/Task04_Hippocampus/`` of the decathlon: ``imagesTr/hippocampus_NNN.nii.gz`` (3D, case ``i`` =
    :func:`modality_volume` ``(0) + i`` on a ``(12, 14, 10)`` grid), ``labelsTr/`` with :func:`label_volume`
    of ``(0, 1, 2)``, ``imagesTs/``, ``dataset.json``, the ``._hippocampus_*`` twins; ``hippocampus_003`` is
    stored as ``.nii``. Returns the task folder."""
    top = Path(root) / "Task04_Hippocampus"
    shape, spacing = (12, 14, 10), (1.0, 1.0, 1.0)
    training = []
    for i in ids:
        ext = ".nii" if i == 3 else ".nii.gz"
        name = f"hippocampus_{i:03d}"
        write_nifti(top / "imagesTr" / f"{name}{ext}", modality_volume(0, shape) + i, spacing)
        write_nifti(top / "labelsTr" / f"{name}{ext}", label_volume((0, 1, 2), shape), spacing)
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
        write_junk(top / "imagesTr", [f"{name}{ext}"])
        write_junk(top / "labelsTr", [f"{name}{ext}"])
    tests = []
    for i in test_ids:
        name = f"hippocampus_{i:03d}.nii.gz"
        write_nifti(top / "imagesTs" / name, modality_volume(0, shape), spacing)
        tests.append(f"./imagesTs/{name}")
    doc = _msd_json(
        "Hippocampus",
        "Left and right hippocampus segmentation",
        {"0": "MRI"},
        {"0": "background", "1": "Anterior", "2": "Posterior"},
        training,
        tests,
    )
    (top / "dataset.json").write_text(json.dumps(doc, indent=4))
    return top


# ---------------------------------------------------------------------------------------- Left atrium


def _la_label(shape: Sequence[int], value: int) -> np.ndarray:
    """Binary atrium: rows 4..9 of the first axis set to ``value`` (6 * shape[1] * shape[2] voxels)."""
    lab = np.zeros(shape, dtype=np.uint8)
    lab[4:10] = value
    return lab


def write_left_atrium_nrrd(root: str | Path, ids: Sequence[str] = LA_IDS[:5], n_test: int = 1) -> Path:
    """The challenge download: ``root/2018 Atrial Segmentation Challenge COMPLETE DATASET/Training Set/<ID>/``
    with ``lgemri.nrrd`` (uint8 :func:`modality_volume` ``(0)``, gzip-compressed as the challenge files) and
    ``laendo.nrrd`` (0/255, rows 4..9 of the first axis = 255), 0.625 mm isotropic on a ``(16, 14, 8)`` grid;
    ``Testing Set/<ID>/`` cases; ``desktop.ini`` in the first case folder; junk. Returns the top folder."""
    top = Path(root) / "2018 Atrial Segmentation Challenge COMPLETE DATASET"
    shape, spacing = (16, 14, 8), (0.625, 0.625, 0.625)
    for subset, names in (("Training Set", ids), ("Testing Set", [f"TEST{i:016d}" for i in range(n_test)])):
        for cid in names:
            folder = top / subset / cid
            write_itk(folder / "lgemri.nrrd", modality_volume(0, shape).astype(np.uint8), spacing, compression=True)
            write_itk(folder / "laendo.nrrd", _la_label(shape, 255), spacing, compression=True)
    (top / "Training Set" / ids[0] / "desktop.ini").write_text("[.ShellClassInfo]\r\nLocalizedResourceName=@x,0\r\n")
    write_junk(top / "Training Set", ["lgemri.nrrd"])
    write_junk(top)
    return top


def write_h5(path: str | Path, image: np.ndarray | None, label: np.ndarray | None) -> Path:
    """An ``mri_norm2.h5`` as written by UA-MT's ``la_heart_processing.py``: gzip datasets ``image`` (float32)
    and ``label`` (uint8), either left out when ``None``."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        if image is not None:
            f.create_dataset("image", data=np.asarray(image, dtype=np.float32), compression="gzip")
        if label is not None:
            f.create_dataset("label", data=np.asarray(label, dtype=np.uint8), compression="gzip")
    return path


def write_left_atrium_h5(root: str | Path, ids: Sequence[str] = LA_IDS, test_ids: Sequence[str] = LA_IDS[-2:], lists: bool = True) -> Path:
    """UA-MT's preprocessed copy: ``root/data/2018LA_Seg_Training Set/<ID>/mri_norm2.h5`` (``image``: case
    ``k`` = :func:`modality_volume` ``(0) + k`` as float32, ``label``: 0/1 rows 4..9, on a ``(16, 14, 8)``
    grid), and, with ``lists``, ``root/data/train.list`` / ``test.list`` (UNIX newlines, the test ids in
    ``test.list``); ``desktop.ini`` in the first case folder as in the UA-MT repository. Returns ``root/data``."""
    data = Path(root) / "data"
    shape = (16, 14, 8)
    for k, cid in enumerate(ids):
        write_h5(data / "2018LA_Seg_Training Set" / cid / "mri_norm2.h5", modality_volume(0, shape) + k, _la_label(shape, 1))
    (data / "2018LA_Seg_Training Set" / ids[0] / "desktop.ini").write_text("[.ShellClassInfo]\r\nLocalizedResourceName=@x,0\r\n")
    if lists:
        (data / "train.list").write_text("".join(f"{i}\n" for i in ids if i not in test_ids))
        (data / "test.list").write_text("".join(f"{i}\n" for i in test_ids))
    write_junk(data / "2018LA_Seg_Training Set")
    return data


# ------------------------------------------------------------------------------------------------- WMH


#: scanner -> (folder under ``training/`` in the 2017 archive, in the 2022 release), subject ids
WMH_SCANNERS = {
    "Utrecht": (("Utrecht",), ("Utrecht",), ("0", "2", "4")),
    "Singapore": (("Singapore",), ("Singapore",), ("50", "51", "52")),
    "GE3T": (("GE3T",), ("Amsterdam", "GE3T"), ("100", "101", "102")),
}


def write_wmh(root: str | Path, release: str = "2017", per_scanner: int = 3) -> Path:
    """WMH 2017 training data, ``per_scanner`` subjects of each scanner of :data:`WMH_SCANNERS`:
    ``training/<scanner>/<id>/`` (``release="2017"``) or ``training/Amsterdam/GE3T/<id>/`` for GE3T
    (``"2022"``, the DataverseNL release, which also has ``test/`` subjects with ``wmh.nii.gz`` and
    ``additional_annotations/observer_o3/...``). Each subject: ``pre/FLAIR.nii.gz``, ``pre/T1.nii.gz``
    (channels 0 and 1 of :func:`modality_volume`), ``orig/{FLAIR,T1,3DT1}.nii.gz`` (3DT1 on another grid),
    ``wmh.nii.gz`` (:func:`label_volume` of ``(0, 1, 2)``). Subject ``"51"`` uses ``.nii`` files. Returns
    ``root``."""
    root = Path(root)
    spacing = (0.96, 0.96, 3.0)

    def subject(folder: Path, ext: str = ".nii.gz") -> None:
        for c, m in enumerate(("FLAIR", "T1")):
            write_nifti(folder / "pre" / f"{m}{ext}", modality_volume(c), spacing)
            write_nifti(folder / "orig" / f"{m}{ext}", modality_volume(c), spacing)
        write_nifti(folder / "orig" / f"3DT1{ext}", modality_volume(0, (12, 12, 10)), (1.0, 1.0, 1.0))
        write_nifti(folder / f"wmh{ext}", label_volume((0, 1, 2)), spacing)
        write_junk(folder / "pre", [f"FLAIR{ext}"])

    for name, (old, new, ids) in WMH_SCANNERS.items():
        base = root / "training" / Path(*(old if release == "2017" else new))
        for sid in ids[:per_scanner]:
            subject(base / sid, ".nii" if sid == "51" else ".nii.gz")
        write_junk(base)
    if release == "2022":
        subject(root / "test" / "Utrecht" / "1")
        subject(root / "test" / "Amsterdam" / "GE1T5" / "138")
        write_nifti(root / "additional_annotations" / "observer_o3" / "training" / "Utrecht" / "0" / "result.nii.gz", label_volume((0, 1)), spacing)
        (root / "readme.pdf").write_bytes(b"%PDF-1.4\n")
    write_junk(root / "training")
    return root
