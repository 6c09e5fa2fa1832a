"""Dataset-loader behaviours pinned by hand-computable expectations on tiny look-alike folders.

Each test pins one behaviour that a mutation audit found no other test fixing: the NIfTI suffix preference,
FLARE's ``_0000`` image suffix, ACDC's ED == ES patients, MRBrainS18's validation count and per-fold seed,
WMH's scanner-stratified dealing order and the left atrium heart crop margin.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from lookalike import label_volume, modality_volume, write_nifti  # noqa: E402

from calibmonai.datasets import acdc, common, flare, left_atrium, mrbrains18, wmh  # noqa: E402

# ---------------------------------------------------------------------------------------------- common


def test_find_nifti_prefers_nii_gz_over_nii(tmp_path):
    # both x.nii and x.nii.gz: the compressed file (first in NIFTI_SUFFIXES) is the one found
    write_nifti(tmp_path / "x.nii", modality_volume(0))
    write_nifti(tmp_path / "x.nii.gz", modality_volume(1))
    assert common.NIFTI_SUFFIXES == (".nii.gz", ".nii")
    assert common.find_nifti(tmp_path, "x") == tmp_path / "x.nii.gz"
    assert common.expect_nifti(tmp_path, "x") == str(tmp_path / "x.nii.gz")
    # with the .nii alone it is found too
    (tmp_path / "x.nii.gz").unlink()
    assert common.find_nifti(tmp_path, "x") == tmp_path / "x.nii"


# ----------------------------------------------------------------------------------------------- FLARE


def test_flare_image_without_channel_suffix_is_not_an_image(tmp_path):
    top = tmp_path / "FLARE21"
    write_nifti(top / "TrainingImg" / "train_000_0000.nii.gz", modality_volume(0))
    # a stray file without the _0000 channel suffix (sorts before the real image: '.' < '_')
    write_nifti(top / "TrainingImg" / "train_000.nii.gz", modality_volume(1))
    write_nifti(top / "TrainingMask" / "train_000.nii.gz", label_volume((0, 1, 2, 3, 4)))
    cases = flare.find_cases(top)
    assert [c.id for c in cases] == ["train_000"]
    assert Path(cases[0].images[0]).name == "train_000_0000.nii.gz"
    assert Path(cases[0].images[0]).parent.name == "TrainingImg"
    assert Path(cases[0].label).parent.name == "TrainingMask"
    assert Path(cases[0].label).name == "train_000.nii.gz"


# ------------------------------------------------------------------------------------------------ ACDC


def test_acdc_ed_equal_es_gives_one_case(tmp_path):
    folder = tmp_path / "training" / "patient001"
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text("ED: 1\nES: 1\nGroup: NOR\nHeight: 170.0\nNbFrame: 20\nWeight: 70.0\n")
    write_nifti(folder / "patient001_frame01.nii.gz", modality_volume(0))
    write_nifti(folder / "patient001_frame01_gt.nii.gz", label_volume((0, 1, 2, 3)))
    cases = acdc.find_cases(tmp_path)
    assert [c.id for c in cases] == ["patient001_frame01"]
    assert cases[0].extra["phase"] == "ED" and cases[0].extra["frame"] == 1
    assert cases[0].subject == "patient001"


# ------------------------------------------------------------------------------------------ MRBrainS18


def test_mrbrains_validation_count_for_few_subjects():
    # 3 subjects: fold 0 tests "1", one of the two others validates, one trains
    s = mrbrains18.make_split(["1", "4", "5"], fold=0)
    assert {k: len(v) for k, v in s.items()} == {"training": 1, "validation": 1, "test": 1}
    assert s["test"] == ["1"]
    assert sorted(s["training"] + s["validation"]) == ["4", "5"]
    # 2 subjects: nothing left to validate, the other trains
    assert mrbrains18.make_split(["1", "4"], fold=0) == {"training": ["4"], "validation": [], "test": ["1"]}
    assert mrbrains18.make_split(["1", "4"], fold=1) == {"training": ["1"], "validation": [], "test": ["4"]}


def test_mrbrains_validation_drawn_with_seed_plus_fold():
    ids = mrbrains18.KNOWN_IDS
    # fold k shuffles the six other subjects with random.Random(seed + k)
    assert mrbrains18.make_split(ids, seed=0, fold=0)["validation"] == ["070"]
    assert mrbrains18.make_split(ids, seed=0, fold=1)["validation"] == ["7"]
    assert mrbrains18.make_split(ids, seed=0, fold=1) == {
        "training": ["1", "5", "14", "070", "148"],
        "validation": ["7"],
        "test": ["4"],
    }
    # fold 0 and fold 1 draw different validation subjects
    assert (
        mrbrains18.make_split(ids, seed=0, fold=1)["validation"]
        != mrbrains18.make_split(ids, seed=0, fold=0)["validation"]
    )
    # the same as the common helper with seed + fold
    rest = [i for i in ids if i != "4"]
    order = list(rest)
    random.Random(0 + 1).shuffle(order)
    assert mrbrains18.make_split(ids, seed=0, fold=1)["validation"] == [order[0]]


# ------------------------------------------------------------------------------------------------- WMH


def test_wmh_stratified_test_dealt_first():
    ids = [f"Utrecht_{i}" for i in range(10)] + [f"GE3T_{i}" for i in range(10)] + ["Singapore_0", "Singapore_1"]
    # 22 subjects at 42/3/15: validation round(22*3/60)=1, test round(22*15/60)=6 (5.5 -> 6), training 15
    assert common.split_counts(22, wmh.SPLIT_COUNTS) == (15, 1, 6)
    for seed in range(4):
        split = wmh.make_split(ids, seed=seed)
        assert {k: len(v) for k, v in split.items()} == {"training": 15, "validation": 1, "test": 6}
        # dealt GE3T, Singapore, Utrecht in turn, test first: the first 6 are 2 per scanner, both Singapore
        for s in ("GE3T", "Singapore", "Utrecht"):
            assert sum(1 for i in split["test"] if i.startswith(s + "_")) == 2, (seed, s)
        assert {"Singapore_0", "Singapore_1"} <= set(split["test"])
        # the 7th dealt (Singapore is used up) is a GE3T subject
        assert split["validation"][0].startswith("GE3T_"), seed
        assert not any(i.startswith("Singapore_") for i in split["training"])
    assert wmh.make_split(ids, seed=0)["test"] == ["GE3T_7", "GE3T_8", "Singapore_0", "Singapore_1", "Utrecht_4", "Utrecht_5"]
    assert wmh.make_split(ids, seed=0)["validation"] == ["GE3T_1"]


# ---------------------------------------------------------------------------------------- Left atrium


def test_heart_crop_margin():
    image = torch.arange(60 * 60 * 40, dtype=torch.float32).reshape(1, 60, 60, 40)
    label = torch.zeros(1, 60, 60, 40)
    label[0, 30, 30, 20] = 1
    # foreground box [30, 31) x [30, 31) x [20, 21), plus margin (20, 20, 10) on each side:
    # [10, 51) x [10, 51) x [10, 31) -> 41 x 41 x 21 voxels
    out = left_atrium.HeartCropd()({"image": image, "label": label, "layout": "nrrd"})
    assert tuple(out["image"].shape) == (1, 41, 41, 21)
    assert tuple(out["label"].shape) == (1, 41, 41, 21)
    assert float(out["image"][0, 0, 0, 0]) == float(image[0, 10, 10, 10])
    assert float(out["label"].sum()) == 1 and float(out["label"][0, 20, 20, 10]) == 1
    # the h5 layout is cropped already: passed through unchanged
    same = left_atrium.HeartCropd()({"image": image, "label": label, "layout": "h5"})
    assert tuple(same["image"].shape) == (1, 60, 60, 40)
