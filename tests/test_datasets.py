"""Dataset readers (calibmonai.datasets) on look-alike copies of the real downloads (tests/lookalike.py)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import load_decathlon_datalist
from monai.transforms import EnsureChannelFirstd, LoadImaged

sys.path.insert(0, os.path.dirname(__file__))
import lookalike as L  # noqa: E402

import calibmonai.datasets as D  # noqa: E402
from calibmonai.datasets import acdc, brats, busi, common, mrbrains18  # noqa: E402


def _names(paths):
    return [Path(p).name for p in paths]


def _load(entry):
    d = LoadImaged(("image", "label"), image_only=True)(entry)
    return EnsureChannelFirstd(("image", "label"))(d)


# ---------------------------------------------------------------------------------------------- common


def test_junk_and_natural_order():
    for junk in ("._patient001_frame01.nii.gz", ".DS_Store", "desktop.ini", "Thumbs.db", "__MACOSX", "~$notes.docx"):
        assert common.is_junk(junk), junk
    for real in ("patient001_frame01.nii.gz", "benign (12).png", "070", "Info.cfg"):
        assert not common.is_junk(real), real
    assert sorted(["benign (10)", "benign (2)", "benign (1)"], key=common.natural_key) == [
        "benign (1)",
        "benign (2)",
        "benign (10)",
    ]
    assert sorted(["148", "070", "14", "7", "1"], key=common.natural_key) == ["1", "7", "14", "070", "148"]


def test_split_counts_by_hand():
    assert common.split_counts(100, (70, 10, 20)) == (70, 10, 20)
    assert common.split_counts(335, (235, 35, 65)) == (235, 35, 65)
    assert common.split_counts(647, (445, 65, 137)) == (445, 65, 137)
    # 484 MSD cases, fractions of 235/35/65: 484*35/335 = 50.57 -> 51, 484*65/335 = 93.91 -> 94
    assert common.split_counts(484, (235, 35, 65)) == (339, 51, 94)
    # 10 patients at 70/10/20: 1 and 2; 3 patients: at least one each; 2 patients: round(0.2)=0, round(0.4)=0
    assert common.split_counts(10, (70, 10, 20)) == (7, 1, 2)
    assert common.split_counts(3, (70, 10, 20)) == (1, 1, 1)
    assert common.split_counts(2, (70, 10, 20)) == (2, 0, 0)
    with pytest.raises(ValueError):
        common.split_counts(-1, (70, 10, 20))


def test_seeded_split_deterministic_and_order_free():
    ids = [f"s{i}" for i in range(50)]
    a = common.seeded_split(ids, (70, 10, 20), seed=3)
    b = common.seeded_split(list(reversed(ids)), (70, 10, 20), seed=3)
    c = common.seeded_split(ids, (70, 10, 20), seed=4)
    assert a == b
    assert a != c
    assert sorted(sum(a.values(), []), key=common.natural_key) == ids
    with pytest.raises(ValueError, match="duplicate"):
        common.seeded_split(["a", "a", "b"], (70, 10, 20))


def test_registry_and_aliases():
    assert D.get_dataset("BraTS2019") is brats
    assert D.get_dataset("mrbrains") is mrbrains18
    assert D.get_dataset("ACDC") is acdc
    with pytest.raises(ValueError, match="unknown dataset"):
        D.get_dataset("nope")
    for name in ("acdc", "mrbrains18", "brats19", "busi"):
        m = D.get_dataset(name)
        assert m.NAME == name
        assert m.CLASS_NAMES[0] == "background"
        for attr in ("LABEL_VALUES", "MODALITIES", "find_cases", "check_case", "make_split", "datalist"):
            assert hasattr(m, attr), (name, attr)


@pytest.mark.parametrize("name", ["acdc", "mrbrains18", "brats19", "busi"])
def test_empty_and_missing_folder(tmp_path, name):
    empty = tmp_path / "empty folder (1)"
    empty.mkdir()
    L.write_junk(empty)
    report = D.check_folder(name, empty)
    assert not report.ok and report.n_usable == 0 and "no " in report.error and str(empty) in report.error
    text = D.format_report(report)
    assert "ERROR" in text and str(empty) in text and "0 usable" in text
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.find_cases(name, tmp_path / "absent")


# ------------------------------------------------------------------------------------------------ ACDC


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory):
    return L.write_acdc(tmp_path_factory.mktemp("acdc") / "my data (ACDC)")


def test_acdc_cases(acdc_root):
    cases = acdc.find_cases(acdc_root)
    assert [c.id for c in cases] == [
        "patient001_frame01", "patient001_frame11",
        "patient002_frame01", "patient002_frame12",
        "patient003_frame01", "patient003_frame13",
    ]  # fmt: skip
    assert [c.extra["phase"] for c in cases] == ["ED", "ES"] * 3
    assert [c.extra["group"] for c in cases[::2]] == ["DCM", "HCM", "MINF"]
    assert cases[3].extra["frame"] == 12 and cases[3].extra["nbframe"] == 15
    assert _names(cases[2].images) == ["patient002_frame01.nii"]  # the .nii variant
    assert Path(cases[3].label).name == "patient002_frame12_gt.nii"
    assert all("_4d" not in p for c in cases for p in c.paths())
    # the same cases whether given ACDC/, database/ or training/
    for sub in ("database", "database/training"):
        assert [c.id for c in acdc.find_cases(acdc_root / sub)] == [c.id for c in cases]
    report = D.check_folder("acdc", acdc_root)
    assert report.ok and report.n_cases == 6 and report.n_usable == 6
    assert "6 usable cases of 6" in D.format_report(report)


def test_acdc_info_cfg(tmp_path):
    p = tmp_path / "Info.cfg"
    p.write_text("ED: 1\nES: 12\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n")
    assert acdc.read_info(p) == {"ED": 1, "ES": 12, "Group": "DCM", "Height": 184.0, "Weight": 95.0, "NbFrame": 30}
    p.write_text("ES: 12\n")
    with pytest.raises(ValueError, match="Info.cfg: no integer ED"):
        acdc.read_info(p)


def test_acdc_datalist_and_labels(acdc_root):
    dl = acdc.datalist(acdc_root)
    parts = {k: sorted({e["subject"] for e in dl[k]}) for k in common.SPLIT_KEYS}
    assert parts == acdc.make_split(["patient001", "patient002", "patient003"])
    assert sum(len(v) for v in parts.values()) == 3 and all(len(v) == 1 for v in parts.values())
    assert all(len(dl[k]) == 2 for k in common.SPLIT_KEYS)  # ED and ES of one patient, never split apart
    # testing/ listed apart, with its gt
    assert [e["case"] for e in dl["challenge_test"]] == ["patient101_frame01", "patient101_frame11"]
    assert all(e["label"].endswith("_gt.nii.gz") for e in dl["challenge_test"])
    d = _load(dl["training"][0])
    assert d["image"].shape == (1, *L.SHAPE) and d["label"].shape == (1, *L.SHAPE)
    assert torch.equal(d["label"][0, :, 0, 0], torch.tensor([0, 1, 2, 3] * 4, dtype=d["label"].dtype))


def test_acdc_testing_without_gt(tmp_path):
    root = L.write_acdc(tmp_path, n_training=1, n_testing=2, nested=False, testing_gt=False)
    tests = acdc.find_cases(root, subsets=("testing",))
    assert [c.subject for c in tests] == ["patient101", "patient101", "patient102", "patient102"]
    assert all(c.label is None for c in tests)
    assert "label" not in acdc.datalist(root)["challenge_test"][0]


def test_acdc_known_ids_split_and_file(tmp_path):
    split = acdc.make_split(acdc.KNOWN_IDS, seed=0)
    assert {k: len(v) for k, v in split.items()} == {"training": 70, "validation": 10, "test": 20}
    assert sorted(sum(split.values(), []), key=common.natural_key) == list(acdc.KNOWN_IDS)
    assert acdc.make_split(acdc.KNOWN_IDS, seed=0) == split and acdc.make_split(acdc.KNOWN_IDS, seed=1) != split
    path = D.write_split("acdc", None, tmp_path / "split.json", seed=0)
    doc = json.loads(path.read_text())
    assert (
        doc["dataset"] == "acdc"
        and doc["seed"] == 0
        and doc["counts"] == {"training": 70, "validation": 10, "test": 20}
    )
    assert {k: doc[k] for k in common.SPLIT_KEYS} == split


def test_acdc_split_file_roundtrip(acdc_root, tmp_path):
    path = D.write_split("acdc", acdc_root, tmp_path / "split.json", seed=5)
    assert acdc.datalist(acdc_root, split=path) == acdc.datalist(acdc_root, seed=5)
    # a split naming patients absent from the folder
    full = D.write_split("acdc", None, tmp_path / "full.json")
    with pytest.raises(FileNotFoundError, match="not in the data folder"):
        acdc.datalist(acdc_root, split=full)
    # MONAI reads the datalist as written
    dl = acdc.datalist(acdc_root)
    (tmp_path / "dl.json").write_text(json.dumps(dl))
    assert load_decathlon_datalist(str(tmp_path / "dl.json"), data_list_key="training") == dl["training"]


def test_acdc_missing_label_and_info(tmp_path):
    root = L.write_acdc(tmp_path, n_training=2, n_testing=0)
    gt = next(root.rglob("patient001_frame11_gt.nii.gz"))
    gt.unlink()
    with pytest.raises(FileNotFoundError, match="patient001_frame11_gt.nii.gz"):
        acdc.find_cases(root)
    report = D.check_folder("acdc", root)
    assert report.n_cases == 4 and report.n_usable == 3
    assert report.problems["patient001_frame11"] == [f"missing file: {gt}"]
    assert f"patient001_frame11: missing file: {gt}" in D.format_report(report)
    L.write_nifti(gt, L.label_volume((0, 1, 2, 3)))
    info = next(root.rglob("patient002/Info.cfg"))
    info.unlink()
    with pytest.raises(FileNotFoundError, match="patient002/Info.cfg"):
        acdc.find_cases(root)
    report = D.check_folder("acdc", root)
    assert report.problems["patient002_frame01"] == [f"missing file: {info}"]


# ------------------------------------------------------------------------------------------- MRBrainS18


@pytest.fixture(scope="module")
def mrb_root(tmp_path_factory):
    return L.write_mrbrains18(tmp_path_factory.mktemp("mrb") / "MRBrainS 2018")


def test_mrbrains_cases_and_channels(mrb_root):
    cases = mrbrains18.find_cases(mrb_root)
    assert [c.id for c in cases] == ["1", "4", "070"]
    assert _names(cases[0].images) == ["reg_T1.nii.gz", "reg_IR.nii.gz", "FLAIR.nii.gz"]
    assert (
        _names(cases[1].images) == ["reg_T1.nii", "reg_IR.nii", "FLAIR.nii"] and Path(cases[1].label).name == "segm.nii"
    )
    assert all(Path(c.label).parent.name == c.id and Path(c.images[0]).parent.name == "pre" for c in cases)
    assert [c.id for c in mrbrains18.find_cases(mrb_root / "training")] == ["1", "4", "070"]
    assert D.check_folder("mrbrains18", mrb_root).ok
    entry = mrbrains18.datalist(mrb_root, fold=0)["test"][0]
    d = mrbrains18.label_transform()(_load(entry))
    assert d["image"].shape == (3, *L.SHAPE)
    assert [float(d["image"][c].min()) for c in range(3)] == [100.0, 200.0, 300.0]  # reg_T1, reg_IR, FLAIR
    # raw row i holds label i (0..10): background, GM, GM, WM, WM, CSF, CSF, bg (cerebellum), bg (stem), bg, bg
    rows = d["label"][0, :11, 0, 0].tolist()
    assert rows == [0, 2, 2, 3, 3, 1, 1, 0, 0, 0, 0]


def test_mrbrains_label_map_documented():
    assert mrbrains18.CLASS_NAMES == ("background", "CSF", "GM", "WM")
    gm = [k for k, v in mrbrains18.LABEL_MAP.items() if v == 2]
    wm = [k for k, v in mrbrains18.LABEL_MAP.items() if v == 3]
    csf = [k for k, v in mrbrains18.LABEL_MAP.items() if v == 1]
    assert (gm, wm, csf) == ([1, 2], [3, 4], [5, 6])
    assert set(mrbrains18.LABEL_MAP) == set(range(11))


def test_mrbrains_leave_one_out():
    ids = mrbrains18.KNOWN_IDS
    tests = []
    for k in range(7):
        s = mrbrains18.make_split(ids, seed=0, fold=k)
        assert {p: len(v) for p, v in s.items()} == {"training": 5, "validation": 1, "test": 1}
        assert sorted(sum(s.values(), []), key=common.natural_key) == list(ids)
        assert s == mrbrains18.make_split(list(reversed(ids)), seed=0, fold=k)
        tests.append(s["test"][0])
    assert tests == ["1", "4", "5", "7", "14", "070", "148"]
    with pytest.raises(ValueError, match="fold"):
        mrbrains18.make_split(ids, fold=7)


def test_mrbrains_write_split_fold(tmp_path):
    doc = json.loads(D.write_split("mrbrains18", None, tmp_path / "f3.json", seed=0, fold=3).read_text())
    assert doc["fold"] == 3 and doc["test"] == ["7"] and doc["counts"] == {"training": 5, "validation": 1, "test": 1}


def test_mrbrains_bad_layouts(tmp_path):
    root = L.write_mrbrains18(tmp_path, ids=("1", "5", "7", "14"))
    ir = root / "training" / "14" / "pre" / "reg_IR.nii.gz"
    L.write_nifti(ir, L.modality_volume(1), (1.0, 1.0, 1.0))  # same shape, another grid
    flair = root / "training" / "5" / "pre" / "FLAIR.nii.gz"
    L.write_nifti(flair, L.modality_volume(2, (16, 16, 5)), (0.958, 0.958, 3.0))  # another shape
    segm = root / "training" / "7" / "segm.nii.gz"
    L.write_nifti(segm, L.label_volume((0, 3, 11)), (0.958, 0.958, 3.0))  # 11 is not a label
    t1 = root / "training" / "1" / "pre" / "reg_T1.nii.gz"
    t1.unlink()
    with pytest.raises(FileNotFoundError, match=r"training/1/pre/reg_T1\.nii\.gz"):
        mrbrains18.find_cases(root)
    report = D.check_folder("mrbrains18", root)
    assert report.n_cases == 4 and report.n_usable == 0
    assert report.problems["1"] == [f"missing file: {t1}"]
    assert report.problems["14"] == [f"affine mismatch: {ir} and {ir.parent / 'reg_T1.nii.gz'} are not on the same grid"]
    assert report.problems["5"] == [
        f"shape mismatch: {flair} is (16, 16, 5) but {flair.parent / 'reg_T1.nii.gz'} is (16, 16, 4)"
    ]
    assert report.problems["7"] == [f"label values outside {list(range(11))} in {segm}: [11]"]


# ----------------------------------------------------------------------------------------------- BraTS


@pytest.fixture(scope="module")
def brats_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("brats")
    return L.write_brats2019(base / "BraTS 2019 (download)"), L.write_msd_brats(base / "msd")


def test_brats_cases(brats_roots):
    root, _ = brats_roots
    cases = brats.find_cases(root)
    assert [c.id for c in cases] == ["BraTS19_2013_10_1", "BraTS19_CBICA_AAB_1", "BraTS19_2013_0_1"]
    assert [c.extra["grade"] for c in cases] == ["HGG", "HGG", "LGG"]
    assert _names(cases[0].images) == [f"BraTS19_2013_10_1_{s}.nii.gz" for s in ("flair", "t1", "t1ce", "t2")]
    assert _names(cases[2].images)[2] == "BraTS19_2013_0_1_t1ce.nii"
    assert D.check_folder("brats19", root).ok


def test_brats_msd_cases(brats_roots):
    _, msd = brats_roots
    cases = brats.find_cases(msd.parent)
    assert [c.id for c in cases] == ["BRATS_001", "BRATS_002", "BRATS_003"]  # no ._ twins, no imagesTs
    assert all(len(c.images) == 1 and c.extra["layout"] == "msd" for c in cases)
    assert D.check_folder("brats19", msd).ok


def test_brats_both_layouts_same_channels_and_labels(brats_roots):
    root, msd = brats_roots
    e1 = brats.datalist(root)["training"][0]
    e2 = brats.datalist(msd)["training"][0]
    assert isinstance(e1["image"], list) and isinstance(e2["image"], str)
    tf = brats.BratsLabelsd("label")
    d1, d2 = tf(_load(e1)), tf(_load(e2))
    for d in (d1, d2):
        assert d["image"].shape == (4, *L.SHAPE)
        assert [float(d["image"][c].min()) for c in range(4)] == [100.0, 200.0, 300.0, 400.0]
    # BraTS rows 0,1,2,4 -> 0,1,2,3 ; MSD rows 0,1(edema),2(non-enh),3(enh) -> 0,2,1,3
    assert d1["label"][0, :4, 0, 0].tolist() == [0, 1, 2, 3]
    assert d2["label"][0, :4, 0, 0].tolist() == [0, 2, 1, 3]
    r = brats.BratsRegionsd("label")(d1)["label"]
    assert r.shape == (3, *L.SHAPE)
    # rows 0..3 hold classes 0 (bg), 1 (NCR), 2 (ED), 3 (ET); TC = {1,3}, WT = {1,2,3}, ET = {3}
    assert r[:, :4, 0, 0].tolist() == [[0, 1, 0, 1], [0, 1, 1, 1], [0, 0, 0, 1]]
    assert np.array_equal(
        brats.regions(np.array([0, 1, 2, 3])), np.array([[0, 1, 0, 1], [0, 1, 1, 1], [0, 0, 0, 1]], np.float32)
    )


def test_brats_split_counts():
    ids = [f"BraTS19_{i:03d}" for i in range(335)]
    s = brats.make_split(ids, seed=0)
    assert {k: len(v) for k, v in s.items()} == {"training": 235, "validation": 35, "test": 65}
    assert brats.make_split(ids, seed=0) == s
    s = brats.make_split([f"BRATS_{i:03d}" for i in range(1, 485)], seed=0)
    assert {k: len(v) for k, v in s.items()} == {"training": 339, "validation": 51, "test": 94}
    with pytest.raises(ValueError, match="not known in advance"):
        D.write_split("brats19", None, "unused.json")


def test_brats_bad_layouts(tmp_path):
    root = L.write_brats2019(tmp_path, hgg=("BraTS19_A_1", "BraTS19_B_1", "BraTS19_C_1"), lgg=())
    case_a = root / "MICCAI_BraTS_2019_Data_Training" / "HGG" / "BraTS19_A_1"
    t1ce = case_a / "BraTS19_A_1_t1ce.nii.gz"
    t1ce.unlink()
    with pytest.raises(FileNotFoundError, match="BraTS19_A_1_t1ce.nii.gz"):
        brats.find_cases(root)
    seg_b = root / "MICCAI_BraTS_2019_Data_Training" / "HGG" / "BraTS19_B_1" / "BraTS19_B_1_seg.nii.gz"
    seg_b.write_bytes(seg_b.read_bytes()[:60])  # a truncated .nii.gz (an interrupted download)
    seg_c = root / "MICCAI_BraTS_2019_Data_Training" / "HGG" / "BraTS19_C_1" / "BraTS19_C_1_seg.nii.gz"
    L.write_nifti(seg_c, L.label_volume((0, 1, 2, 3)), (1.0, 1.0, 1.0))  # 3 is not a BraTS 2019 label
    report = D.check_folder("brats19", root)
    assert report.n_cases == 3 and report.n_usable == 0
    assert report.problems["BraTS19_A_1"] == [f"missing file: {t1ce}"]
    assert len(report.problems["BraTS19_B_1"]) == 1
    assert report.problems["BraTS19_B_1"][0].startswith(f"unreadable or corrupt file: {seg_b} (")
    assert report.problems["BraTS19_C_1"] == [f"label values outside [0, 1, 2, 4] in {seg_c}: [3]"]


def test_brats_msd_bad_layouts(tmp_path):
    msd = L.write_msd_brats(tmp_path, n=2)
    label = msd / "labelsTr" / "BRATS_002.nii.gz"
    label.unlink()
    with pytest.raises(FileNotFoundError, match="labelsTr/BRATS_002.nii.gz"):
        brats.find_cases(msd)
    image = msd / "imagesTr" / "BRATS_001.nii.gz"
    L.write_nifti(image, np.stack([L.modality_volume(c) for c in range(3)], axis=-1), (1.0, 1.0, 1.0))
    report = D.check_folder("brats19", msd)
    assert report.problems["BRATS_001"] == [f"{image} has 3 channels (shape (16, 16, 4, 3)), expected 4"]
    assert report.problems["BRATS_002"] == [f"missing file: {label}"]
    other = L.write_msd_brats(tmp_path / "other", n=1, modality=("T1w", "t1gd", "T2w", "FLAIR"))
    with pytest.raises(ValueError, match="dataset.json: modalities"):
        brats.find_cases(other)


# ------------------------------------------------------------------------------------------------ BUSI


@pytest.fixture(scope="module")
def busi_root(tmp_path_factory):
    return L.write_busi(tmp_path_factory.mktemp("busi"))


def test_busi_cases(busi_root):
    cases = busi.find_cases(busi_root)
    assert [c.id for c in cases] == ["benign (1)", "benign (2)", "benign (3)", "malignant (1)", "malignant (2)"]
    assert _names(cases[1].extra["masks"]) == ["benign (2)_mask.png", "benign (2)_mask_1.png", "benign (2)_mask_2.png"]
    assert Path(cases[1].label).name == "benign (2)_mask.png"
    assert [c.id for c in busi.find_cases(busi_root / "Dataset_BUSI_with_GT")] == [c.id for c in cases]
    report = D.check_folder("busi", busi_root.parent)
    assert report.ok and report.n_cases == 5


def test_busi_load_grey_and_union(busi_root, tmp_path):
    entry = next(e for part in busi.datalist(busi_root).values() for e in part if e["case"] == "benign (2)")
    d = busi.LoadBUSId()(entry)
    expected_grey = L.busi_image(2)[..., 0].astype(np.float32)
    expected_mask = (
        L.busi_mask(slice(2, 6), slice(3, 8))
        | L.busi_mask(slice(10, 12), slice(15, 20))
        | L.busi_mask(slice(14, 16), slice(1, 3))
    ) > 0
    # MONAI's 2D convention: (channel, width, height)
    assert d["image"].shape == (1, 24, 20) and d["label"].shape == (1, 24, 20)
    assert np.array_equal(d["image"][0].numpy(), expected_grey.T)
    assert np.array_equal(d["label"][0].numpy(), expected_mask.T.astype(np.uint8))
    assert "masks" not in d and "masks" in entry
    rgb_mask = next(e for part in busi.datalist(busi_root).values() for e in part if e["case"] == "malignant (1)")
    m = busi.LoadBUSId()(rgb_mask)["label"]
    assert int(m.sum()) == 4 * 5 and set(np.unique(m.numpy())) == {0, 1}
    # some released masks are RGBA (an opaque alpha channel): the same 0/1 mask
    from PIL import Image

    rgba = np.concatenate([L.busi_mask(slice(2, 6), slice(3, 8), rgb=True), np.full((20, 24, 1), 255, np.uint8)], -1)
    rgba_path = tmp_path / "malignant (9)_mask.png"
    Image.fromarray(rgba, mode="RGBA").save(rgba_path)
    assert Image.open(rgba_path).mode == "RGBA"
    rgba_entry = {**rgb_mask, "label": str(rgba_path), "masks": [str(rgba_path)]}
    assert np.array_equal(busi.LoadBUSId()(rgba_entry)["label"].numpy(), m.numpy())
    from monai.transforms import Compose

    out = Compose(busi.preprocessing(256))(entry)
    assert out["image"].shape == (1, 256, 256) and out["label"].shape == (1, 256, 256)
    assert float(out["image"].max()) == 1.0 and set(np.unique(out["label"].numpy())) == {0, 1}


def test_busi_distances_are_in_pixels_of_the_original_image(busi_root):
    """The resize keeps the image's extent (MONAI's Resized scales the affine): the evaluation's spacing is
    (width / 256, height / 256) original pixels, so a 4-pixel shift of a 24-pixel-wide image's mask measures 4 * 24/256."""
    from monai.transforms import Compose

    from calibmonai.datasets.pipelines import load_transforms
    from calibmonai.evaluation import _spacing
    from calibmonai.metrics import SegmentationMetrics

    entry = next(e for part in busi.datalist(busi_root).values() for e in part if e["case"] == "benign (2)")
    d = Compose(load_transforms("busi", [256, 256]))(entry)
    spacing = _spacing(d["image"])
    assert spacing == pytest.approx([24 / 256, 20 / 256])  # the look-alike's images: 24 wide, 20 high
    lab = torch.as_tensor(d["label"]).long()[None]
    shifted = torch.roll(lab, 4, dims=2)  # 4 resized pixels along the width
    assert SegmentationMetrics(2)(shifted, lab, spacing)[0]["hd95_mean"] == pytest.approx(4 * 24 / 256, rel=1e-5)


def test_busi_known_ids_split():
    assert len(busi.KNOWN_IDS) == 647 and busi.KNOWN_IDS[0] == "benign (1)" and busi.KNOWN_IDS[-1] == "malignant (210)"
    s = busi.make_split(busi.KNOWN_IDS, seed=0)
    assert {k: len(v) for k, v in s.items()} == {"training": 445, "validation": 65, "test": 137}
    assert not set(s["training"]) & set(s["test"]) and not set(s["validation"]) & set(s["test"])
    assert s == busi.make_split(list(reversed(busi.KNOWN_IDS)), seed=0)


def test_busi_bad_layouts(tmp_path):
    parent = L.write_busi(tmp_path, n_benign=3, n_malignant=1, nested=False)
    benign = parent / "Dataset_BUSI_with_GT" / "benign"
    (benign / "benign (1)_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"benign \(1\)_mask\.png"):
        busi.find_cases(parent)
    two_levels = np.full((20, 24), 128, np.uint8)
    two_levels[:, :4] = 255
    L._png(benign / "benign (2)_mask_1.png", two_levels)  # two foreground values: ambiguous
    L._png(benign / "benign (3)_mask.png", np.zeros((10, 24), np.uint8))  # another size
    report = D.check_folder("busi", parent)
    assert report.n_cases == 4 and report.n_usable == 1
    assert report.problems["benign (1)"] == [f"missing file: {benign / 'benign (1)_mask.png'}"]
    assert report.problems["benign (2)"] == [
        f"mask values other than 0 and one foreground value in {benign / 'benign (2)_mask_1.png'}: [128, 255]"
    ]
    assert report.problems["benign (3)"] == [
        f"shape mismatch: {benign / 'benign (3)_mask.png'} is (24, 10) (width, height) but {benign / 'benign (3).png'} is (24, 20)"
    ]
    (benign / "benign (2).png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(10))  # corrupt image
    assert (
        D.check_folder("busi", parent)
        .problems["benign (2)"][0]
        .startswith(f"unreadable or corrupt file: {benign / 'benign (2).png'}")
    )


def test_acdc_split_of_case_ids_is_patient_level(acdc_root):
    ids = [f"patient{p:03d}_frame{f:02d}" for p in range(1, 101) for f in (1, 12)]
    s = acdc.make_split(ids, seed=2)
    by_patient = acdc.make_split(acdc.KNOWN_IDS, seed=2)
    assert {k: len(v) for k, v in s.items()} == {"training": 140, "validation": 20, "test": 40}
    assert {k: sorted({acdc.patient_of(i) for i in v}) for k, v in s.items()} == by_patient
    # a split listing case ids gives the same datalist as one listing their patients
    cases = [c.id for c in acdc.find_cases(acdc_root)]
    assert acdc.datalist(acdc_root, split=acdc.make_split(cases, seed=2)) == acdc.datalist(acdc_root, seed=2)


def test_brats_training_preferred_over_validation_and_flat(tmp_path):
    root = L.write_brats2019(tmp_path / "downloads", hgg=("BraTS19_X_1",), lgg=())
    # the validation release: flat case folders with no seg, beside the training folder (sorts before it here)
    val = tmp_path / "downloads" / "A_MICCAI_BraTS_2019_Data_Validation" / "BraTS19_V_1"
    for c, suffix in enumerate(("flair", "t1", "t1ce", "t2")):
        L.write_nifti(val / f"BraTS19_V_1_{suffix}.nii.gz", L.modality_volume(c))
    assert [c.id for c in brats.find_cases(root)] == ["BraTS19_X_1"]
    # a flat folder of case folders (BraTS 2020/2021 style) is read too
    flat = tmp_path / "flat"
    shutil.copytree(root / "MICCAI_BraTS_2019_Data_Training" / "HGG", flat)
    cases = brats.find_cases(flat)
    assert [c.id for c in cases] == ["BraTS19_X_1"] and "grade" not in cases[0].extra


def test_busi_batches_collate(busi_root):
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose

    ids = [c.id for c in busi.find_cases(busi_root)]
    data = busi.datalist(busi_root, split={"training": ids, "validation": [], "test": []})
    batch = next(iter(DataLoader(Dataset(data["training"], Compose(busi.preprocessing(32))), batch_size=5)))
    assert batch["image"].shape == (5, 1, 32, 32) and batch["label"].shape == (5, 1, 32, 32)
    assert batch["case"] == ["benign (1)", "benign (2)", "benign (3)", "malignant (1)", "malignant (2)"]


def test_check_nifti_case_names_each_problem(tmp_path):
    """Hand-made cases: a clean one passes; NaN/Inf voxels, another grid, label values out of range and a truncated
    file are each reported with the file named."""
    import nibabel as nib

    image = np.zeros((6, 5, 4), np.float32)
    label = np.zeros((6, 5, 4), np.uint8)
    label[1:3, 1:3, 1:3] = 2

    def case(name, img=image, lab=label, lab_affine=np.eye(4)):
        nib.save(nib.Nifti1Image(img, np.eye(4)), str(tmp_path / f"{name}_img.nii.gz"))
        nib.save(nib.Nifti1Image(lab, lab_affine), str(tmp_path / f"{name}_lab.nii.gz"))
        return common.Case(name, name, (str(tmp_path / f"{name}_img.nii.gz"),), str(tmp_path / f"{name}_lab.nii.gz"))

    assert common.check_nifti_case(case("ok"), range(3)) == []
    nan = image.copy()
    nan[0, 0, :3] = [np.nan, np.inf, -np.inf]
    assert common.check_nifti_case(case("nan", img=nan), range(3)) == [f"3 non-finite voxel value(s) (NaN or Inf) in {tmp_path / 'nan_img.nii.gz'}"]
    (problem,) = common.check_nifti_case(case("grid", lab=label[:5]), range(3))
    assert problem.startswith(f"shape mismatch: {tmp_path / 'grid_lab.nii.gz'} is (5, 5, 4)")
    shifted = np.eye(4)
    shifted[0, 3] = 1.0
    assert common.check_nifti_case(case("affine", lab_affine=shifted), range(3)) == [
        f"affine mismatch: {tmp_path / 'affine_lab.nii.gz'} and {tmp_path / 'affine_img.nii.gz'} are not on the same grid"
    ]
    assert common.check_nifti_case(case("values"), range(2)) == [f"label values outside [0, 1] in {tmp_path / 'values_lab.nii.gz'}: [2]"]
    c = case("trunc")
    raw = Path(c.label).read_bytes()
    Path(c.label).write_bytes(raw[: len(raw) // 2])
    (problem,) = common.check_nifti_case(c, range(3))
    assert problem.startswith(f"unreadable or corrupt file: {c.label}")


def test_two_datasets_under_one_parent_are_named_not_chosen_silently(tmp_path):
    """A parent of two releases (BraTS 2018 beside 2019) or two copies of a dataset: the reader names both and asks
    for one, never trains silently on the first in alphabetical order."""
    parent = tmp_path / "BraTS"
    L.write_brats2019(parent, hgg=("BraTS19_X_1",), lgg=())
    L.write_brats2019(tmp_path / "r18", hgg=("Brats18_2013_10_1",), lgg=())
    shutil.move(str(tmp_path / "r18" / "MICCAI_BraTS_2019_Data_Training"), str(parent / "MICCAI_BraTS_2018_Data_Training"))
    with pytest.raises(common.AmbiguousDataError, match="2 folders in .*MICCAI_BraTS_2018_Data_Training.*MICCAI_BraTS_2019_Data_Training.*--dataset_dir"):
        brats.find_cases(parent)
    # either release given directly is read
    assert [c.id for c in brats.find_cases(parent / "MICCAI_BraTS_2019_Data_Training")] == ["BraTS19_X_1"]
    # the decathlon's Task01 beside a BraTS release: both are labelled BraTS data
    L.write_msd_brats(tmp_path / "both", n=2, n_test=0)
    L.write_brats2019(tmp_path / "both", hgg=("BraTS19_X_1",), lgg=())
    with pytest.raises(common.AmbiguousDataError, match="Task01_BrainTumour"):
        brats.find_cases(tmp_path / "both")
    # two copies of ACDC and of BUSI under one parent
    for k in (1, 2):
        L.write_acdc(tmp_path / "acdc" / f"copy{k}", n_training=1, n_testing=0)
        L.write_busi(tmp_path / "busi" / f"copy{k}", n_benign=1, n_malignant=1, n_normal=0, nested=False)
    for module, root in ((acdc, tmp_path / "acdc"), (busi, tmp_path / "busi")):
        with pytest.raises(common.AmbiguousDataError, match="copy1.*copy2"):
            module.find_cases(root)
    # ACDC's training/ and testing/ siblings are one dataset: training is read, no error
    assert acdc.find_cases(tmp_path / "acdc" / "copy1")
    # check-data reports it as the folder's error
    report = D.check_folder("brats19", parent)
    assert "MICCAI_BraTS_2018_Data_Training" in report.error and not report.cases
