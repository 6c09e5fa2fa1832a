"""Readers of FLARE21, PROMISE12 / MSD Task05, MSD Task04 hippocampus, left atrium and WMH 2017 on look-alike
copies of the real downloads (tests/lookalike_more.py): cases, modality order, label values counted by hand,
splits, junk, and the message of each bad layout."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import EnsureChannelFirstd, LoadImage

sys.path.insert(0, os.path.dirname(__file__))
import lookalike_more as M  # noqa: E402
from lookalike import label_volume, modality_volume, write_nifti  # noqa: E402

import calibmonai.datasets as D  # noqa: E402
from calibmonai.datasets import common, flare, left_atrium, msd_hippocampus, promise12, wmh  # noqa: E402
from calibmonai.datasets.itk_reader import load_imaged  # noqa: E402

NAMES = ("flare21", "promise12", "msd_hippocampus", "left_atrium", "wmh")


def _load(entry, keys=("image", "label")):
    return EnsureChannelFirstd(keys)(load_imaged(keys, image_only=True)(entry))


def _problems(name, root):
    report = D.check_folder(name, root)
    return report, [p for ps in report.problems.values() for p in ps]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("downloads")
    return {
        "flare": M.write_flare(base / "flare"),
        "promise": M.write_promise12(base / "promise"),
        "prostate": M.write_msd_prostate(base / "msd"),
        "hippo": M.write_hippocampus(base / "msd"),
        "la_nrrd": M.write_left_atrium_nrrd(base / "la nrrd"),
        "la_h5": M.write_left_atrium_h5(base / "la_h5"),
        "wmh": M.write_wmh(base / "wmh2017", "2017"),
        "wmh22": M.write_wmh(base / "wmh2022", "2022"),
        "base": base,
    }


def test_registry():
    for name in NAMES:
        m = D.get_dataset(name)
        assert m.NAME == name
        assert m.CLASS_NAMES[0] == "background"
        for attr in ("LABEL_VALUES", "MODALITIES", "SPLIT_COUNTS", "find_cases", "check_case", "make_split", "datalist"):
            assert hasattr(m, attr), (name, attr)
        assert sum(m.SPLIT_COUNTS) > 0


# ----------------------------------------------------------------------------------------------- FLARE


def test_flare_cases_and_values(roots):
    cases = flare.find_cases(roots["flare"].parent)  # a parent of the FLARE21 folder
    assert [c.id for c in cases] == ["train_000", "train_001", "train_002", "train_003"]
    assert [Path(c.images[0]).name for c in cases][:2] == ["train_000_0000.nii.gz", "train_001_0000.nii"]
    assert all(Path(c.images[0]).parent.name == "TrainingImg" and Path(c.label).parent.name == "TrainingMask" for c in cases)
    d = _load(cases[2].entry())
    assert d["image"].shape == (1, 16, 16, 4) and float(d["image"].min()) == 100 + 2
    lab = d["label"][0].numpy()
    # label_volume of 0..4: first-axis row i holds i % 5 -> rows {0,5,10,15} = 0, {1,6,11} = 1, ...
    assert {v: int((lab == v).sum()) for v in range(5)} == {0: 4 * 64, 1: 3 * 64, 2: 3 * 64, 3: 3 * 64, 4: 3 * 64}
    report = D.check_folder("flare21", roots["flare"])
    assert report.ok and report.n_usable == 4


def test_flare_split():
    ids = [f"train_{i:03d}" for i in range(361)]
    a = flare.make_split(ids, seed=0)
    assert {k: len(v) for k, v in a.items()} == {"training": 241, "validation": 40, "test": 80}
    assert a == flare.make_split(list(reversed(ids)), seed=0)
    assert a != flare.make_split(ids, seed=1)
    assert {k: len(v) for k, v in flare.make_split(ids[:360]).items()} == {"training": 240, "validation": 40, "test": 80}


def test_flare_bad_layouts(tmp_path, roots):
    root = _copy(roots["flare"], tmp_path / "FLARE21")
    (root / "TrainingMask" / "train_002.nii.gz").unlink()
    write_nifti(root / "TrainingMask" / "train_003.nii.gz", label_volume((0, 7)), (0.8, 0.8, 2.5))
    write_nifti(root / "TrainingMask" / "train_000.nii.gz", label_volume((0, 1), (16, 16, 5)), (0.8, 0.8, 2.5))
    write_nifti(root / "TrainingMask" / "train_009.nii.gz", label_volume((0, 1)), (0.8, 0.8, 2.5))  # no image
    data = (root / "TrainingImg" / "train_001_0000.nii").read_bytes()
    (root / "TrainingImg" / "train_001_0000.nii").write_bytes(data[:200])
    with pytest.raises(FileNotFoundError, match=r"missing file: .*TrainingMask/train_002\.nii\.gz"):
        flare.find_cases(root)
    report, problems = _problems("flare21", root)
    assert report.n_cases == 5 and report.n_usable == 0
    text = "\n".join(problems)
    assert "missing file: " + str(root / "TrainingMask" / "train_002.nii.gz") in text
    assert "missing file: " + str(root / "TrainingImg" / "train_009_0000.nii.gz") in text
    assert f"label values outside [0, 1, 2, 3, 4] in {root / 'TrainingMask' / 'train_003.nii.gz'}: [7]" in text
    assert "shape mismatch: " + str(root / "TrainingMask" / "train_000.nii.gz") in text
    assert "unreadable or corrupt file: " + str(root / "TrainingImg" / "train_001_0000.nii") in text


# -------------------------------------------------------------------------------------------- PROMISE12


def test_promise12_cases_and_values(roots):
    cases = promise12.find_cases(roots["promise"])
    assert [c.id for c in cases] == [f"Case{i:02d}" for i in range(6)]  # TestData/Case00.mhd is not a 7th case
    assert [c.extra["part"] for c in cases] == ["TrainingData_Part1", "TrainingData_Part2", "TrainingData_Part3"] * 2
    assert all(c.extra["layout"] == "promise12" and c.label.endswith(f"{c.id}_segmentation.mhd") for c in cases)
    d = _load(cases[4].entry())  # the ITK reader for .mhd, signed 8-bit segmentations as floats
    assert d["image"].shape == (1, 16, 16, 4) and float(d["image"].min()) == 104
    assert np.allclose(np.abs(np.diag(d["image"].affine.numpy()))[:3], (0.625, 0.625, 3.6))
    lab = d["label"][0].numpy()
    assert int((lab == 1).sum()) == 8 * 64 and int((lab == 0).sum()) == 8 * 64
    assert promise12.detect_layout(roots["promise"]) == "promise12"
    report = D.check_folder("promise12", roots["promise"])
    assert report.ok and report.n_cases == 6


def test_promise12_split():
    a = promise12.make_split(promise12.KNOWN_IDS, seed=0)
    assert {k: len(v) for k, v in a.items()} == {"training": 35, "validation": 5, "test": 10}
    assert a == promise12.make_split(promise12.KNOWN_IDS, seed=0)
    msd = promise12.make_split([f"prostate_{i:02d}" for i in range(32)], seed=0)
    assert {k: len(v) for k, v in msd.items()} == {"training": 23, "validation": 3, "test": 6}


def test_promise12_bad_layouts(tmp_path, roots):
    root = _copy(roots["promise"], tmp_path / "PROMISE12")
    p1, p2 = root / "TrainingData_Part1", root / "TrainingData_Part2"
    # unlabelled images in a folder not named like TestData are not training cases either
    M.write_itk(root / "LiveChallengeData" / "Case00.mhd", modality_volume(0), (0.625, 0.625, 3.6))
    assert [c.extra["part"] for c in promise12.find_cases(root)][:1] == ["TrainingData_Part1"]
    (p1 / "Case03.raw").unlink()  # Case03 is in part 1
    raw = p2 / "Case04_segmentation.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    M.write_itk(p1 / "Case00_segmentation.mhd", label_volume((0, 3)), (0.625, 0.625, 3.6))
    M.write_itk(p2 / "Case01_segmentation.mhd", label_volume((0, 1), (16, 16, 5)), (0.625, 0.625, 3.6))
    report, problems = _problems("promise12", root)
    text = "\n".join(problems)
    assert report.n_cases == 6 and report.n_usable == 2
    assert f"missing file: {p1 / 'Case03.raw'} (the voxel file of {p1 / 'Case03.mhd'})" in text
    # the truncated voxel file itself is named, with the size its header needs (1 byte per MET_CHAR voxel); ITK says
    # only that the header "cannot be read ... No such file or directory"
    need = int(np.prod(label_volume((0, 1)).shape))
    assert f"truncated or corrupt voxel file: {raw} holds 100 bytes, its header {p2 / 'Case04_segmentation.mhd'} needs {need}" in text
    # the header's size agrees with what ITK itself wrote for an intact image; a compressed one fixes no size
    assert promise12.mhd_expected_bytes(p1 / "Case00.mhd") == (p1 / "Case00.raw").stat().st_size > 0
    M.write_itk(tmp_path / "z" / "z.mhd", modality_volume(0), (1.0, 1.0, 1.0), compression=True)
    assert promise12.mhd_expected_bytes(tmp_path / "z" / "z.mhd") is None
    # a header that skips HeaderSize bytes of the voxel file counts them; HeaderSize = -1 fixes no size
    header_text = (p1 / "Case00.mhd").read_text()
    (tmp_path / "h.mhd").write_text(header_text + "HeaderSize = 16\n")
    assert promise12.mhd_expected_bytes(tmp_path / "h.mhd") == 16 + (p1 / "Case00.raw").stat().st_size
    (tmp_path / "h.mhd").write_text(header_text + "HeaderSize = -1\n")
    assert promise12.mhd_expected_bytes(tmp_path / "h.mhd") is None
    assert f"label values outside [0, 1] in {p1 / 'Case00_segmentation.mhd'}: [3]" in text
    assert f"shape mismatch: {p2 / 'Case01_segmentation.mhd'} is (16, 16, 5)" in text
    # a reference without its image, and a case found twice
    (root / "TrainingData_Part3" / "Case05.mhd").unlink()
    with pytest.raises(FileNotFoundError, match="Case05.mhd"):
        promise12.find_cases(root)
    shutil.copy(p1 / "Case00.mhd", root / "TrainingData_Part3" / "Case00.mhd")
    with pytest.raises(ValueError, match="Case00 is in several folders"):
        promise12.find_cases(root, strict=False)


def test_promise12_zenodo_copy_in_one_folder(tmp_path, roots):
    # Zenodo's copy of the challenge data: the 50 training cases in one training_data/ folder beside zipped test sets
    root = tmp_path / "PROMISE12_zenodo"
    flat = root / "training_data"
    flat.mkdir(parents=True)
    for part in sorted(roots["promise"].glob("TrainingData_Part*")):
        for f in part.glob("Case*"):
            shutil.copy(f, flat / f.name)
    for name in ("LICENSE.TXT", "test_data.zip", "livechallenge_test_data.zip"):
        (root / name).write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    cases = promise12.find_cases(root)
    assert [c.id for c in cases] == [f"Case{i:02d}" for i in range(6)]
    assert all(Path(c.label).parent == flat for c in cases)
    report = D.check_folder("promise12", root)
    assert report.ok and report.n_usable == 6


def test_msd_prostate_layout(tmp_path, roots):
    task = roots["prostate"]
    with pytest.raises(common.AmbiguousDataError, match=r"CaseNN.mhd files \(in .*\) and a decathlon Task05_Prostate folder \(.*Task05_Prostate\): give the one to use .*--dataset_dir"):
        promise12.find_cases(roots["base"])  # PROMISE12 and Task05 side by side
    cases = promise12.find_cases(task)
    assert [c.id for c in cases] == ["prostate_00", "prostate_01", "prostate_02", "prostate_04", "prostate_06"]
    assert promise12.find_cases(roots["base"], layout="msd") == cases
    assert all(c.extra["layout"] == "msd" for c in cases)
    d = _load(cases[0].entry())
    assert d["image"].shape == (2, 16, 16, 4)
    assert [float(d["image"][c].min()) for c in range(2)] == [100.0, 200.0]  # T2 then ADC
    t2 = promise12.SelectChannelsd("image", (0,))(d)["image"]
    assert t2.shape == (1, 16, 16, 4) and float(t2.min()) == 100.0
    gland = promise12.label_transform()(d)["label"][0].numpy()
    zones = promise12.label_transform(zones=True)(d)["label"][0].numpy()
    # label_volume of (0, 1, 2): rows 0,3,..,15 -> 0 (6 rows), rows 1,4,.. -> 1 (5), rows 2,5,.. -> 2 (5)
    assert int((gland == 1).sum()) == 10 * 64 and int((gland == 0).sum()) == 6 * 64
    assert [int((zones == v).sum()) for v in range(3)] == [6 * 64, 5 * 64, 5 * 64]
    with pytest.raises(ValueError, match="out of range"):
        promise12.SelectChannelsd("image", (2,))(d)
    assert D.check_folder("promise12", task).ok
    bad = _copy(task, tmp_path / "Task05_Prostate")
    write_nifti(bad / "imagesTr" / "prostate_01.nii.gz", modality_volume(0), (0.6, 0.6, 4.0))
    _, problems = _problems("promise12", bad)
    assert problems == [f"{bad / 'imagesTr' / 'prostate_01.nii.gz'} has 1 channels (shape (16, 16, 4)), expected 2"]
    js = bad / "dataset.json"
    js.write_text(js.read_text().replace('"TZ"', '"central gland"'))
    with pytest.raises(ValueError, match="dataset.json: labels"):
        promise12.find_cases(bad)


# ---------------------------------------------------------------------------------------- Hippocampus


def test_hippocampus_cases_split_and_values(roots):
    cases = msd_hippocampus.find_cases(roots["base"])  # the folder holding Task04 and Task05
    assert [c.id for c in cases] == [f"hippocampus_{i:03d}" for i in (1, 3, 4, 6, 7, 8)]
    assert Path(cases[1].images[0]).name == "hippocampus_003.nii" and Path(cases[1].label).name == "hippocampus_003.nii"
    d = _load(cases[2].entry())
    assert d["image"].shape == (1, 12, 14, 10) and float(d["image"].min()) == 104
    lab = d["label"][0].numpy()
    assert [int((lab == v).sum()) for v in range(3)] == [4 * 140, 4 * 140, 4 * 140]
    assert D.check_folder("msd_hippocampus", roots["hippo"]).ok
    ids = [f"hippocampus_{i:03d}" for i in range(260)]
    split = msd_hippocampus.make_split(ids, seed=2)
    assert {k: len(v) for k, v in split.items()} == {"training": 185, "validation": 25, "test": 50}
    assert split == msd_hippocampus.make_split(ids, seed=2)
    dl = msd_hippocampus.datalist(roots["hippo"], seed=0)
    assert sorted(e["case"] for k in dl for e in dl[k]) == [c.id for c in cases]
    assert [len(dl[k]) for k in ("training", "validation", "test")] == [4, 1, 1]


def test_hippocampus_bad_layouts(tmp_path, roots):
    task = _copy(roots["hippo"], tmp_path / "Task04_Hippocampus")
    (task / "labelsTr" / "hippocampus_004.nii.gz").unlink()
    (task / "imagesTr" / "hippocampus_007.nii.gz").unlink()  # still listed in dataset.json
    write_nifti(task / "labelsTr" / "hippocampus_006.nii.gz", label_volume((0, 1, 2, 3), (12, 14, 10)), (1.0, 1.0, 1.0))
    with pytest.raises(FileNotFoundError, match="labelsTr/hippocampus_004.nii.gz"):
        msd_hippocampus.find_cases(task)
    report, problems = _problems("msd_hippocampus", task)
    assert report.n_cases == 6 and report.n_usable == 3
    assert set(problems) == {
        f"missing file: {task / 'labelsTr' / 'hippocampus_004.nii.gz'}",
        f"missing file: {task / 'imagesTr' / 'hippocampus_007.nii.gz'}",
        f"label values outside [0, 1, 2] in {task / 'labelsTr' / 'hippocampus_006.nii.gz'}: [3]",
    }
    js = task / "dataset.json"
    js.write_text(js.read_text().replace('"labels": {', '"labels_v1": {'))
    doc = json.loads(js.read_text())
    doc["labels"] = {"background": 0, "Anterior": 1, "Posterior": 2}  # nnU-Net v2 spelling is accepted
    js.write_text(json.dumps(doc))
    assert len(msd_hippocampus.find_cases(task, strict=False)) == 6
    doc["labels"] = {"background": 0, "Anterior": 1}
    js.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="dataset.json: labels"):
        msd_hippocampus.find_cases(task, strict=False)
    other = _copy(roots["prostate"], tmp_path / "other" / "Task05_Prostate")
    with pytest.raises(FileNotFoundError, match="decathlon Hippocampus folder"):
        msd_hippocampus.find_cases(other.parent)


# ---------------------------------------------------------------------------------------- Left atrium


def test_left_atrium_nrrd(roots):
    top = roots["la_nrrd"]
    cases = left_atrium.find_cases(top)
    assert [c.id for c in cases] == sorted(M.LA_IDS[:5], key=common.natural_key)  # Testing Set is not read
    assert all(c.extra["layout"] == "nrrd" for c in cases)
    assert Path(cases[0].images[0]).parent.parent.name == "Training Set"
    d = left_atrium.LoadLeftAtriumd()(cases[0].entry())
    assert d["image"].shape == (1, 16, 14, 8) and float(d["image"].min()) == 100
    assert np.allclose(np.abs(np.diag(d["label"].affine.numpy()))[:3], left_atrium.SPACING)
    assert int((d["label"] == 255).sum()) == 6 * 14 * 8
    lab = left_atrium.label_transform()(d)["label"]
    assert sorted(torch.unique(lab).tolist()) == [0, 1] and int(lab.sum()) == 6 * 14 * 8
    assert D.check_folder("left_atrium", top).ok


def test_left_atrium_h5_lists_and_split(roots):
    data = roots["la_h5"]
    cases = left_atrium.find_cases(data)
    assert [c.id for c in cases] == sorted(M.LA_IDS, key=common.natural_key)
    assert all(c.images[0] == c.label and c.label.endswith("mri_norm2.h5") for c in cases)
    k = M.LA_IDS.index(cases[3].id)
    d = left_atrium.LoadLeftAtriumd()(cases[3].entry())
    assert d["image"].shape == (1, 16, 14, 8) and float(d["image"].min()) == 100 + k
    assert sorted(torch.unique(d["label"]).tolist()) == [0, 1] and int(d["label"].sum()) == 6 * 14 * 8
    label = LoadImage(reader=left_atrium.H5Reader("label"), image_only=True)(cases[3].label)
    assert torch.equal(label, d["label"][0])
    assert D.check_folder("left_atrium", data.parent).ok
    lists = left_atrium.case_lists(cases)
    assert sorted(lists["test"]) == sorted(M.LA_IDS[-2:]) and len(lists["training"]) == 6 and "validation" not in lists
    dl = left_atrium.datalist(data, seed=0)
    assert sorted(e["case"] for e in dl["test"]) == sorted(M.LA_IDS[-2:])  # test.list
    assert len(dl["validation"]) == 1 and len(dl["training"]) == 5  # 5% of the 6 train.list ids, at least one
    assert dl == left_atrium.datalist(data, seed=0)
    vals = {left_atrium.datalist(data, seed=s)["validation"][0]["case"] for s in range(6)}
    assert len(vals) > 1 and not vals & set(M.LA_IDS[-2:])


def test_left_atrium_published_split():
    split = left_atrium.make_split(left_atrium.KNOWN_IDS, seed=5)
    assert {k: len(v) for k, v in split.items()} == {"training": 76, "validation": 4, "test": 20}
    assert sorted(split["test"]) == sorted(left_atrium.PUBLISHED_TEST_IDS)
    # UA-MT's test.list starts with ULHW... and ends with ZQPM...; UZUZ... sorts among them but is a training case
    assert "ULHWPWKKLTE921LQLH1P" in split["test"] and "ZQPMJ4XEC5A4BISD45P1" in split["test"]
    assert "UZUZZT2W9IUSHL6ASOX3" in split["training"] and set(split["validation"]) == set(left_atrium.MEEP_VALIDATION_IDS)
    assert len(set(left_atrium.KNOWN_IDS)) == 100 and set(left_atrium.PUBLISHED_TEST_IDS) <= set(left_atrium.KNOWN_IDS)
    assert split == left_atrium.make_split(left_atrium.KNOWN_IDS, seed=0)
    seeded = left_atrium.make_split(left_atrium.KNOWN_IDS, seed=0, published=False)
    assert {k: len(v) for k, v in seeded.items()} == {"training": 76, "validation": 4, "test": 20}
    assert seeded != split
    small = left_atrium.make_split([f"P{i:02d}" for i in range(10)], seed=0)
    assert {k: len(v) for k, v in small.items()} == {"training": 7, "validation": 1, "test": 2}
    lists = {"training": ["P0", "P1", "P2"], "test": ["P3"], "validation": ["P2"]}
    assert left_atrium.make_split(["P0", "P1", "P2", "P3"], lists=lists) == {"training": ["P0", "P1"], "validation": ["P2"], "test": ["P3"]}
    with pytest.raises(ValueError, match="test list names ids with no case"):
        left_atrium.make_split(["P0", "P1"], lists={"test": ["P9"]})


def test_left_atrium_bad_layouts(tmp_path, roots):
    data = _copy(roots["la_h5"], tmp_path / "data")
    cases_dir = data / "2018LA_Seg_Training Set"
    a, b, c = sorted(M.LA_IDS)[:3]
    M.write_h5(cases_dir / a / "mri_norm2.h5", np.zeros((16, 14, 8)), None)
    M.write_h5(cases_dir / b / "mri_norm2.h5", np.zeros((16, 14, 8)), np.full((16, 14, 8), 2))
    (cases_dir / c / "mri_norm2.h5").write_bytes(b"not an HDF5 file")
    with open(data / "test.list", "a") as f:
        f.write("NOSUCHCASE0000000000\n")
    with pytest.raises(FileNotFoundError, match="NOSUCHCASE0000000000/mri_norm2.h5"):
        left_atrium.find_cases(data)
    report, problems = _problems("left_atrium", data)
    assert report.n_cases == 9 and report.n_usable == 5
    text = "\n".join(problems)
    assert f"{cases_dir / a / 'mri_norm2.h5'} lacks the dataset(s) ['label'] (has ['image'])" in text
    assert f"label values outside [0, 1] in {cases_dir / b / 'mri_norm2.h5'} ('label'): [2]" in text
    assert "unreadable or corrupt file: " + str(cases_dir / c / "mri_norm2.h5") in text
    assert "missing file: " + str(cases_dir / "NOSUCHCASE0000000000" / "mri_norm2.h5") in text
    with open(data / "train.list", "a") as f:
        f.write(M.LA_IDS[-1] + "\r\n")  # a test id, Windows line end
    with pytest.raises(ValueError, match=f"{M.LA_IDS[-1]} is in both .*train.list and .*test.list|{M.LA_IDS[-1]} is in both .*test.list and .*train.list"):
        left_atrium.find_cases(data, strict=False)
    top = _copy(roots["la_nrrd"], tmp_path / "nrrd")
    train = top / "Training Set"
    a, b, c = sorted(M.LA_IDS[:5])[:3]
    (train / a / "laendo.nrrd").unlink()
    M.write_itk(train / b / "laendo.nrrd", label_volume((0, 255, 128), (16, 14, 8)), (0.625,) * 3)
    M.write_itk(train / c / "lgemri.nrrd", modality_volume(0, (16, 14, 9)), (0.625,) * 3)
    with pytest.raises(FileNotFoundError, match=f"{a}/laendo.nrrd"):
        left_atrium.find_cases(top)
    report, problems = _problems("left_atrium", top)
    assert report.n_usable == 2
    text = "\n".join(problems)
    assert "missing file: " + str(train / a / "laendo.nrrd") in text
    assert f"label values outside [0, 255] in {train / b / 'laendo.nrrd'}: [128]" in text
    assert f"shape mismatch: {train / c / 'laendo.nrrd'} is (16, 14, 8) but {train / c / 'lgemri.nrrd'} is (16, 14, 9)" in text


def test_left_atrium_mixed_folder_prefers_h5(tmp_path, roots):
    top = _copy(roots["la_nrrd"], tmp_path / "both")
    for cid in M.LA_IDS[:5]:
        M.write_h5(top / "Training Set" / cid / "mri_norm2.h5", np.zeros((4, 4, 4)), np.zeros((4, 4, 4)))
    assert {c.extra["layout"] for c in left_atrium.find_cases(top)} == {"h5"}
    assert {c.extra["layout"] for c in left_atrium.find_cases(top, layout="nrrd")} == {"nrrd"}


# ------------------------------------------------------------------------------------------------- WMH


def test_wmh_cases_and_values(roots):
    cases = wmh.find_cases(roots["wmh"])
    expected = ["GE3T_100", "GE3T_101", "GE3T_102", "Singapore_50", "Singapore_51", "Singapore_52", "Utrecht_0", "Utrecht_2", "Utrecht_4"]
    assert [c.id for c in cases] == expected
    assert [Path(p).name for p in cases[4].images] == ["FLAIR.nii", "T1.nii"]
    assert all(Path(c.images[0]).parent.name == "pre" for c in cases)
    # the 2022 release: GE3T under Amsterdam/, test/ and additional_annotations/ not read
    assert [c.id for c in wmh.find_cases(roots["wmh22"])] == expected
    d = _load(cases[0].entry())
    assert d["image"].shape == (2, 16, 16, 4)
    assert [float(d["image"][c].min()) for c in range(2)] == [100.0, 200.0]  # FLAIR then T1
    out = wmh.IgnoreMaskd("label")(d)
    lab, mask = out["label"], out["mask"]
    # label_volume of (0, 1, 2): 5 rows of 2 ("other pathology"), 5 rows of 1, 6 rows of 0
    assert mask.dtype == torch.bool and mask.shape == lab.shape
    assert int((~mask).sum()) == 5 * 64 and int((lab == 1).sum()) == 5 * 64
    assert int((lab == 2).sum()) == 0 and int((lab[~mask] != 0).sum()) == 0
    assert D.check_folder("wmh", roots["wmh22"]).ok


def test_wmh_split_stratified():
    ids = [f"{s}_{i}" for s, base in (("Utrecht", 0), ("Singapore", 50), ("GE3T", 100)) for i in range(base, base + 20)]
    split = wmh.make_split(ids, seed=0)
    assert {k: len(v) for k, v in split.items()} == {"training": 42, "validation": 3, "test": 15}
    for k, n in (("training", 14), ("validation", 1), ("test", 5)):
        for s in ("Utrecht", "Singapore", "GE3T"):
            assert sum(1 for i in split[k] if i.startswith(s + "_")) == n, (k, s)
    assert split == wmh.make_split(list(reversed(ids)), seed=0)
    assert split != wmh.make_split(ids, seed=1)
    assert {k: len(v) for k, v in wmh.make_split(ids, stratify=False).items()} == {"training": 42, "validation": 3, "test": 15}
    with pytest.raises(ValueError, match="duplicate"):
        wmh.make_split(["Utrecht_0", "Utrecht_0"])


def test_wmh_bad_layouts(tmp_path, roots):
    root = _copy(roots["wmh"], tmp_path / "wmh")
    u = root / "training" / "Utrecht"
    (u / "0" / "pre" / "T1.nii.gz").unlink()
    write_nifti(u / "2" / "wmh.nii.gz", label_volume((0, 1, 3)), (0.96, 0.96, 3.0))
    write_nifti(u / "4" / "pre" / "T1.nii.gz", modality_volume(1, (16, 16, 5)), (0.96, 0.96, 3.0))
    gz = root / "training" / "GE3T" / "100" / "wmh.nii.gz"
    gz.write_bytes(gzip.compress(gz.read_bytes()[:0]) + b"\x1f\x8b broken")
    with pytest.raises(FileNotFoundError, match="Utrecht/0/pre/T1.nii.gz"):
        wmh.find_cases(root)
    report, problems = _problems("wmh", root)
    assert report.n_cases == 9 and report.n_usable == 5
    text = "\n".join(problems)
    assert "missing file: " + str(u / "0" / "pre" / "T1.nii.gz") in text
    assert f"label values outside [0, 1, 2] in {u / '2' / 'wmh.nii.gz'}: [3]" in text
    assert f"shape mismatch: {u / '4' / 'pre' / 'T1.nii.gz'} is (16, 16, 5)" in text
    assert "unreadable or corrupt file: " + str(gz) in text
    with pytest.raises(FileNotFoundError, match="no WMH subject folder"):
        wmh.find_cases(tmp_path / "wmh" / "training" / "GE3T" / "100" / "pre")


def test_datalists_and_split_files(tmp_path, roots):
    for name, root, n in (("flare21", roots["flare"], 4), ("promise12", roots["promise"], 6), ("wmh", roots["wmh"], 9)):
        dl = D.datalist(name, root, seed=3)
        assert sum(len(v) for v in dl.values()) == n
        assert dl == D.datalist(name, root, seed=3)
        path = D.write_split(name, root, tmp_path / f"{name}.json", seed=3)
        assert D.datalist(name, root, split=path) == dl
    entry = D.datalist("wmh", roots["wmh"])["training"][0]
    assert [Path(p).name for p in entry["image"]][1] in ("T1.nii.gz", "T1.nii") and entry["scanner"] in wmh.SCANNERS
    assert D.write_split("promise12", None, tmp_path / "p.json").is_file()  # the 50 known PROMISE12 ids
