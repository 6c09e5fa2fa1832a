"""Inference inputs named as the publishers name them: a BraTS case folder (<id>_flair ... <id>_t2 beside <id>_seg),
the decathlon's 4D files, WMH's and MRBrainS18's <subject>/pre/<modality> folders, an ACDC patient folder, a left
atrium patient folder, nnU-Net's <case>_0000 naming; operating-system junk is never a scan."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from calibmonai.datasets.pipelines import scan_datalist
from calibmonai.inference import ScanError, ScanInferenceEngine, find_scans


def _nii(path: Path, shape=(4, 4, 2)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), str(path))
    return str(path)


def _junk(folder: Path, name: str) -> None:
    (folder / f"._{name}").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)  # AppleDouble, not a NIfTI
    (folder / ".DS_Store").write_bytes(b"junk")


def _names(items):
    return [(i["case"], [Path(f).name for f in i["files"]]) for i in items]


def test_brats_case_folders_in_channel_order(tmp_path):
    cases = {}
    for cid in ("BraTS19_2013_10_1", "BraTS19_TCIA10_103_1"):
        folder = tmp_path / cid
        for mod in ("t2", "seg", "t1ce", "flair", "t1"):  # written in another order than the channels
            ext = ".nii" if cid.startswith("BraTS19_TCIA") else ".nii.gz"
            _nii(folder / f"{cid}_{mod}{ext}")
        _junk(folder, f"{cid}_flair.nii.gz")
        cases[cid] = folder
    items = scan_datalist("brats19", str(cases["BraTS19_2013_10_1"]), 4)
    cid = "BraTS19_2013_10_1"
    assert _names(items) == [(cid, [f"{cid}_flair.nii.gz", f"{cid}_t1.nii.gz", f"{cid}_t1ce.nii.gz", f"{cid}_t2.nii.gz"])]
    assert items[0]["image"] == items[0]["files"]  # a list of four files: MONAI stacks them as channels
    both = sorted(str(p) for folder in cases.values() for p in folder.iterdir())
    assert [c for c, _ in _names(scan_datalist("brats19", both, 4))] == ["BraTS19_2013_10_1", "BraTS19_TCIA10_103_1"]
    assert _names(scan_datalist("brats19", str(tmp_path / "BraTS19_TCIA10_103_1" / "*.nii"), 4))[0][1][1] == "BraTS19_TCIA10_103_1_t1.nii"


def test_decathlon_4d_files_and_their_junk(tmp_path, caplog):
    folder = tmp_path / "imagesTs"
    for cid in ("BRATS_485", "BRATS_486"):
        _nii(folder / f"{cid}.nii.gz", (4, 4, 2, 4))
        _junk(folder, f"{cid}.nii.gz")
    items = scan_datalist("brats19", str(folder), 4)
    assert _names(items) == [("BRATS_485", ["BRATS_485.nii.gz"]), ("BRATS_486", ["BRATS_486.nii.gz"])]
    assert items[0]["image"] == str(folder / "BRATS_485.nii.gz")  # one path: MONAI reads its 4th axis as channels
    engine = ScanInferenceEngine.__new__(ScanInferenceEngine)
    engine.num_modalities, engine.spatial_dims = 4, 3
    engine._check_files(items[0]["files"])
    three = _nii(tmp_path / "other" / "x.nii.gz", (4, 4, 2, 3))
    with pytest.raises(ScanError, match=r"expected 4 modality file\(s\) per scan or one 4D NIfTI file of 4 channels, got 1"):
        engine._check_files([three])
    # beside named files, a file that is neither named nor 4D is left out, with a warning naming it
    mixed = tmp_path / "mixed"
    for mod in ("flair", "t1", "t1ce", "t2"):
        _nii(mixed / f"c1_{mod}.nii.gz")
    _nii(mixed / "notes_scan.nii.gz")
    with caplog.at_level(logging.WARNING, logger="calibmonai.inference"):
        assert [c for c, _ in _names(scan_datalist("brats19", str(mixed), 4))] == ["c1"]
    assert "left out" in caplog.text and "notes_scan.nii.gz" in caplog.text


def test_subject_folders_of_wmh_mrbrains18_and_the_left_atrium(tmp_path, caplog):
    pre = tmp_path / "training" / "Utrecht" / "0" / "pre"
    for mod in ("T1", "3DT1", "FLAIR"):
        _nii(pre / f"{mod}.nii.gz")
    _nii(pre.parent / "wmh.nii.gz")
    assert _names(scan_datalist("wmh", str(pre), 2)) == [("0", ["FLAIR.nii.gz", "T1.nii.gz"])]  # 3DT1 quietly not a scan
    assert _names(scan_datalist("wmh", str(pre.parent), 2)) == []  # only the reference there
    mrb = tmp_path / "MRBrainS18" / "training" / "070" / "pre"
    for mod in ("FLAIR", "reg_IR", "reg_T1", "IR", "T1"):
        _nii(mrb / f"{mod}.nii.gz")
    with caplog.at_level(logging.WARNING, logger="calibmonai.inference"):
        items = scan_datalist("mrbrains18", str(mrb), 3)
    assert _names(items) == [("070", ["reg_T1.nii.gz", "reg_IR.nii.gz", "FLAIR.nii.gz"])]
    assert "IR.nii.gz: not one of the modality files (reg_T1, reg_IR, FLAIR)" in caplog.text
    la = tmp_path / "Training Set" / "0RZDK210BSMWAA6467LU"
    for name in ("lgemri", "laendo", "lawall"):
        la.mkdir(parents=True, exist_ok=True)
        (la / f"{name}.nrrd").write_bytes(b"NRRD0004\n")
    assert _names(scan_datalist("left_atrium", str(la), 1)) == [("0RZDK210BSMWAA6467LU", ["lgemri.nrrd"])]


def test_single_modality_folders_leave_references_out(tmp_path):
    acdc = tmp_path / "patient001"
    for name in ("patient001_4d", "patient001_frame01", "patient001_frame01_gt", "patient001_frame12", "patient001_frame12_gt"):
        _nii(acdc / f"{name}.nii.gz")
    _junk(acdc, "patient001_frame01.nii.gz")
    assert _names(scan_datalist("acdc", str(acdc), 1)) == [("patient001_frame01", ["patient001_frame01.nii.gz"]),
                                                          ("patient001_frame12", ["patient001_frame12.nii.gz"])]  # fmt: skip
    part = tmp_path / "TrainingData_Part1"
    part.mkdir()
    for name in ("Case00.mhd", "Case00_segmentation.mhd", "._Case00.mhd"):
        (part / name).write_text("ObjectType = Image\n")
    assert _names(scan_datalist("promise12", str(part), 1)) == [("Case00", ["Case00.mhd"])]
    # nnU-Net's naming is read by every bundle, and a one-modality bundle's <case>_0000 is <case>
    nn = tmp_path / "nn"
    for k in range(4):
        _nii(nn / f"brain_{k:04d}.nii.gz")
    assert _names(scan_datalist("brats19", str(nn), 4)) == [("brain", [f"brain_{k:04d}.nii.gz" for k in range(4)])]
    assert find_scans(str(nn / "brain_0000.nii.gz"), 1) == [("brain", [str(nn / "brain_0000.nii.gz")])]
    with pytest.raises(FileNotFoundError, match="only files named seg"):
        find_scans([str(acdc / "patient001_frame01_gt.nii.gz")], 4, ("flair", "t1", "t1ce", "t2"), ("seg", "gt"))


def test_a_missing_input_is_named_and_nothing_is_created(tmp_path):
    from types import SimpleNamespace

    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="the input .*nope' does not exist"):
        find_scans(str(missing))
    assert scan_datalist("acdc", str(missing), 1) == []
    engine = ScanInferenceEngine.__new__(ScanInferenceEngine)
    engine.dataset, engine.source, engine.output_dir = SimpleNamespace(data=[]), str(missing) + "/", str(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"the input '.*nope/' does not exist \(give a folder of scans, a glob or a file\)"):
        engine.run()
    engine.source = str(tmp_path / "*.nii.gz")
    with pytest.raises(FileNotFoundError, match="no scan found in"):
        engine.run()
    assert not (tmp_path / "out").exists()


def test_busi_images_through_the_same_input_listing(tmp_path):
    from PIL import Image

    folder = tmp_path / "benign"
    folder.mkdir()
    for name in ("benign (10).png", "benign (2).png", "benign (2)_mask.png", "benign (2)_mask_1.png"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / name)
    _junk(folder, "benign (2).png")
    items = scan_datalist("busi", str(folder), 1)
    assert [i["case"] for i in items] == ["benign (2)", "benign (10)"]  # natural order, masks and junk left out
    assert scan_datalist("busi", str(folder / "*.png"), 1) == items
    assert scan_datalist("busi", str(tmp_path / "nope"), 1) == []


def _scan_names(pairs):
    return [(case, [Path(f).name for f in files]) for case, files in pairs]


def test_a_folder_of_case_folders_says_which_folder_or_glob_to_give(tmp_path):
    """A released test set (ACDC's testing/patientNNN/), a WMH site or subject folder (pre/ and orig/ beside
    wmh.nii.gz): no scan in the folder itself, so the error names where the scans lie and globs that take them all,
    each checked to give whole scans (never a folder of labels only)."""
    testing = tmp_path / "testing"
    for pid in ("patient101", "patient102"):
        _nii(testing / pid / f"{pid}_frame01.nii.gz")
        _nii(testing / pid / f"{pid}_frame01_gt.nii.gz")
        (testing / pid / "Info.cfg").write_text("ED: 1\nES: 10\n")
    (testing / "MANDATORY_CITATION.md").write_text("cite")
    glob_pattern = str(testing / "*" / "*.nii.gz")
    folders = f"{testing / 'patient101'} or {testing / 'patient102'}"
    with pytest.raises(FileNotFoundError, match=re.escape(f"Scans lie in 2 folder(s) below it (e.g. patient101): give {folders}; or every scan as a glob, quoted: '{glob_pattern}'.")):
        find_scans(str(testing), 1, skip_names=("gt", "4d"))
    # the glob it proposes finds both scans
    assert _scan_names(find_scans(glob_pattern, 1, skip_names=("gt", "4d"))) == [("patient101_frame01", ["patient101_frame01.nii.gz"]), ("patient102_frame01", ["patient102_frame01.nii.gz"])]
    # a glob of every file of the case folders leaves out Info.cfg and the citation file (they were taken as scans)
    assert _scan_names(find_scans(str(testing / "*" / "*"), 1, skip_names=("gt", "4d"))) == _scan_names(find_scans(glob_pattern, 1, skip_names=("gt", "4d")))
    # WMH: a site folder of subjects, each with its label, pre/ and orig/ (orig/ also holds 3DT1)
    site = tmp_path / "Utrecht"
    for sid in ("0", "2", "4"):
        _nii(site / sid / "wmh.nii.gz")
        for sub, names in (("pre", ("FLAIR", "T1")), ("orig", ("FLAIR", "T1", "3DT1"))):
            for name in names:
                _nii(site / sid / sub / f"{name}.nii.gz")
    wanted = [str(site / "*" / sub / "*.nii.gz") for sub in ("orig", "pre")]
    with pytest.raises(FileNotFoundError, match=re.escape("Scans lie in 9 folder(s) below it (e.g. 0): every scan as a glob, quoted: " + " or ".join(repr(g) for g in wanted) + ".")):
        find_scans(str(site), 2, ("FLAIR", "T1"), ("wmh",))
    assert [c for c, _ in find_scans(wanted[1], 2, ("FLAIR", "T1"), ("wmh",))] == ["0", "2", "4"]
    # one subject: its pre/ and orig/ folders are named; the glob mixing both is not proposed
    with pytest.raises(FileNotFoundError, match=re.escape(f"only files named wmh (not scans). Scans lie in 2 folder(s) below it (e.g. orig): give {site / '0' / 'orig'} or {site / '0' / 'pre'}.")):
        find_scans(str(site / "0"), 2, ("FLAIR", "T1"), ("wmh",))
    # nothing below either: no hint
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"\(extensions [^)]*\)\.$"):
        find_scans(str(tmp_path / "empty"))
