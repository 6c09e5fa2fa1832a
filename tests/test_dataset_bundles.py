"""The MbLS dataset bundles (``bundles/<dataset>_seg2d``) end to end on look-alike downloads (tests/lookalike.py,
tests/lookalike_more.py): configs against the readers, the split files and their regeneration, one epoch of
training, evaluation, export and inference on each, a broken folder stopping before training, and the cache that
spares the raw volumes to a second method. The look-alikes are written once and each bundle is trained once per
module."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from calibmonai.bundle_export import export_bundle
from calibmonai.bundle_tools import config_files, method_names, run_workflow
from calibmonai.datasets import bundle_dataset, get_dataset
from calibmonai.datasets import pipelines as P
from calibmonai.losses import METHODS

sys.path.insert(0, os.path.dirname(__file__))
import lookalike as L  # noqa: E402
import lookalike_more as LM  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SMALL = {"slices_per_volume": 2, "batch_size": 4, "network_def#channels": [4, 8, 16, 32], "epochs": 1, "volume_repeats": 1,
         "image_size": [32, 32]}  # fmt: skip
#: bundle -> (registry name, look-alike writer, bundle-specific overrides of the tiny runs)
BUNDLES = {
    "acdc_seg2d": ("acdc", L.write_acdc, {}),
    "mrbrains18_seg2d": ("mrbrains18", L.write_mrbrains18, {}),
    "brats19_seg2d": ("brats19", L.write_brats2019, {}),
    "busi_seg2d": ("busi", L.write_busi, {"slices_per_volume": 1}),
    # the look-alike's 0.8 x 0.8 x 2.5 mm grid kept (2 x 2 x 5 mm would merge its one-voxel label rows); 4 -> 6 slices
    "flare21_seg2d": ("flare21", LM.write_flare, {"preprocess": {"spacing": [0.8, 0.8, 2.5], "window": [-125.0, 275.0], "num_slices": 6}}),
    "promise12_seg2d": ("promise12", LM.write_promise12, {}),
    "hippocampus_seg2d": ("msd_hippocampus", LM.write_hippocampus, {}),
}
#: bundles whose split file ships with the bundle (the dataset's subject ids are known in advance)
SHIPPED_SPLITS = ("acdc_seg2d", "mrbrains18_seg2d", "busi_seg2d", "promise12_seg2d")
#: ConfigWorkflow's required properties that MONAI checks by id (kept in every bundle)
KEYS = ["bundle_root", "dataset_dir", "runs_dir", "dataset_name", "method", "loss_kwargs", "backbone", "method_tag",
        "run_dir", "ckpt_dir", "ckpt_path", "num_classes", "class_names", "spatial_dims", "in_channels", "image_size",
        "patch_size", "network_def", "network", "train", "validate", "val_interval", "initialize", "run", "finalize",
        "calibrate", "split_file", "split_seed", "cache_dir", "preprocess", "eval_regions", "write_split"]  # fmt: skip


def _messages(exc: BaseException | None) -> str:
    out = []
    while exc is not None:
        out.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(out)


def _read_config(files):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    return parser


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def lookalikes(tmp_path_factory):
    """bundle -> the folder a researcher would give (each look-alike written once)."""
    root = tmp_path_factory.mktemp("downloads")
    return {b: Path(writer(root / b)) for b, (_, writer, _) in BUNDLES.items()}


class Runs:
    """Trains (1 epoch, tiny UNet, ``ce``) and evaluates each bundle once, on a split written from its look-alike."""

    def __init__(self, root: Path, data: dict[str, Path]) -> None:
        self.root, self.data, self.done = root, data, {}

    def overrides(self, bundle: str) -> dict:
        return {**SMALL, **BUNDLES[bundle][2], "dataset_dir": str(self.data[bundle]), "runs_dir": str(self.root / "runs"),
                "cache_dir": str(self.root / "cache" / bundle), "split_file": str(self.root / f"{bundle}_split.json")}  # fmt: skip

    def get(self, bundle: str) -> dict:
        if bundle not in self.done:
            ov = self.overrides(bundle)
            run_workflow("write_split", config_files(bundle, "ce"), **{**ov, "split_from_data": True})
            run_workflow("training", config_files(bundle, "ce"), **ov)
            run_workflow("evaluate", config_files(bundle, "ce", "evaluate.yaml"), **ov)
            self.done[bundle] = {"overrides": ov, "run_dir": self._run_dir(bundle, ov)}
        return self.done[bundle]

    def _run_dir(self, bundle: str, ov: dict) -> Path:
        parser = _read_config(config_files(bundle, "ce"))
        for k, v in ov.items():
            parser[k] = v
        return Path(parser.get_parsed_content("run_dir"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, lookalikes):
    return Runs(tmp_path_factory.mktemp("runs"), lookalikes)


# --------------------------------------------------------------------------------- configs (no data)


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_configs_match_the_reader(bundle):
    name = BUNDLES[bundle][0]
    module = get_dataset(name)
    root = REPO / "bundles" / bundle
    for f in ("configs/train.yaml", "configs/evaluate.yaml", "configs/inference.yaml", "configs/metadata.json",
              "configs/logging.conf", "docs/README.md", "docs/data_license.txt", "LICENSE", "models/.gitkeep"):  # fmt: skip
        assert (root / f).is_file(), f
    assert bundle_dataset(bundle) == name == module.NAME
    train = _read_config(config_files(bundle, "mbls"))
    for key in KEYS:
        assert key in train, key
    assert train["dataset_name"] == name and train["method"] == "mbls" and train["spatial_dims"] == 2
    assert tuple(train["class_names"]) == tuple(module.CLASS_NAMES) and train["num_classes"] == len(module.CLASS_NAMES)
    assert train["in_channels"] == len(module.MODALITIES)
    assert list(train["image_size"]) == list(P.PROTOCOLS[name].image_size)
    assert train.get_parsed_content("method_tag") == "mbls_alpha0.1_margin10.0"
    infer = _read_config(config_files(bundle, "ce", workflow="inference.yaml"))
    for key in ("dataset_name", "num_classes", "class_names", "in_channels", "image_size", "preprocess", "network_def", "spatial_dims"):
        assert infer[key] == train[key], key
    assert infer["num_modalities"] == train["in_channels"]
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert meta["schema"].endswith("meta_schema_20240725.json")
    for key in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
                "task", "description", "authors", "copyright", "network_data_format", "data_source", "data_license"):  # fmt: skip
        assert key in meta, key
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == train["in_channels"]
    assert fmt["inputs"]["image"]["spatial_shape"] == list(train["image_size"])
    assert list(fmt["outputs"]["pred"]["channel_def"].values()) == list(module.CLASS_NAMES)
    readme = (root / "docs" / "README.md").read_text()
    for word in ("## Data", "Licence", "## Split", "## Classes", "MbLS", "write_split", "check-data"):
        assert word in readme, word
    assert all(c in readme for c in module.CLASS_NAMES[1:])


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_every_method_and_backbone_composes(bundle):
    # one place per method and backbone: the shared fragments compose on every bundle, none is copied into it
    assert not list((REPO / "bundles" / bundle).glob("**/methods")) and not list((REPO / "bundles" / bundle).glob("**/backbones"))
    for method in method_names(bundle):
        files = config_files(bundle, method)
        assert files[1] == str(REPO / "bundles" / "methods" / f"{method}.yaml")
        assert _read_config(files)["method"] in METHODS  # a fragment may be a method with other settings (meep_*_la)
    parser = _read_config(config_files(bundle, "ce", backbone="attention_unet"))
    assert parser["backbone"] == "attention_unet" and parser["network_def"]["_target_"] == "AttentionUnet"


@pytest.mark.parametrize("bundle", SHIPPED_SPLITS)
def test_shipped_split_is_regenerated_identically(bundle, tmp_path):
    name = BUNDLES[bundle][0]
    module = get_dataset(name)
    shipped = REPO / "bundles" / bundle / "configs" / "split.json"
    out = tmp_path / "split.json"
    run_workflow("write_split", config_files(bundle, "ce"), split_file=str(out))  # the known ids: no data needed
    assert out.read_bytes() == shipped.read_bytes()
    doc = json.loads(shipped.read_text())
    assert doc["dataset"] == name and doc["seed"] == 0 and doc["n_subjects"] == len(module.KNOWN_IDS)
    if "folds" in doc:  # MRBrainS18: leave-one-subject-out, fold k tests the k-th subject
        assert [f["test"] for f in doc["folds"]] == [[s] for s in module.KNOWN_IDS]
        for k, fold in enumerate(doc["folds"]):
            assert sorted(fold["training"] + fold["validation"] + fold["test"]) == sorted(module.KNOWN_IDS)
            assert (len(fold["training"]), len(fold["validation"])) == (5, 1)
            assert P.load_bundle_split(shipped, fold=k) == module.make_split(module.KNOWN_IDS, seed=0, fold=k)
    else:
        assert tuple(doc["counts"][k] for k in ("training", "validation", "test")) == module.SPLIT_COUNTS
        assert sorted(doc["training"] + doc["validation"] + doc["test"]) == sorted(module.KNOWN_IDS)
        assert P.load_bundle_split(shipped) == module.make_split(module.KNOWN_IDS, seed=0)
    if bundle == "mrbrains18_seg2d":  # --fold k picks the fold and its own run folder
        parser = _read_config(config_files(bundle, "ce"))
        parser["fold"] = 3
        assert parser.get_parsed_content("split_kwargs") == {"fold": 3}
        assert Path(parser.get_parsed_content("run_dir")).parts[-2:] == ("fold3", "ce")
        assert P.load_bundle_split(shipped, fold=3)["test"] == [module.KNOWN_IDS[3]] == ["7"]
        with pytest.raises(ValueError, match="give the fold"):
            P.load_bundle_split(shipped)
    other = tmp_path / "seed1.json"
    run_workflow("write_split", config_files(bundle, "ce"), split_file=str(other), split_seed=1)
    assert other.read_bytes() != shipped.read_bytes()


def test_split_of_a_folder_is_reproducible_and_used(lookalikes, tmp_path):
    # BraTS (ids not known in advance): the split is written from the folder, identically, and the datalist without a
    # split file uses that same seeded split
    bundle, data = "brats19_seg2d", lookalikes["brats19_seg2d"]
    assert not (REPO / "bundles" / bundle / "configs" / "split.json").exists()
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for f in (a, b):
        run_workflow("write_split", config_files(bundle, "ce"), split_file=str(f), dataset_dir=str(data))
    assert a.read_bytes() == b.read_bytes()
    split = json.loads(a.read_text())
    ids = ["BraTS19_2013_0_1", "BraTS19_2013_10_1", "BraTS19_CBICA_AAB_1"]
    assert split["n_subjects"] == 3 and sorted(split["training"] + split["validation"] + split["test"]) == sorted(ids)
    for part in ("training", "validation", "test"):
        with_file = P.bundle_datalist("brats19", data, part, split_file=a)
        without = P.bundle_datalist("brats19", data, part, split_file=tmp_path / "absent.json")
        assert [e["case"] for e in with_file] == [e["case"] for e in without] == split[part]
    with pytest.raises(ValueError, match="give the data folder"):
        P.write_bundle_split("brats19", tmp_path / "c.json")


# ---------------------------------------------------------------------------------------- end to end


def _summary(path: Path) -> dict[str, float]:
    return {r["metric"]: float(r["value"]) for r in csv.DictReader(open(path))}


@pytest.mark.slow
@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_train_and_evaluate(bundle, runs):
    name = BUNDLES[bundle][0]
    info = runs.get(bundle)
    run_dir = info["run_dir"]
    assert run_dir.name == "ce" and (run_dir / "models" / "model.pt").is_file()
    if bundle == "mrbrains18_seg2d":
        assert run_dir.parent.name == "fold0"
    s = _summary(run_dir / "eval" / "summary.csv")
    columns = list(get_dataset(name).CLASS_NAMES[1:]) if bundle != "brats19_seg2d" else ["ET", "TC", "WT"]
    for c in columns:
        assert f"dsc_{c}" in s and f"hd95_{c}" in s, c
    for key in ("dsc_mean", "ece", "cece", "brier", "nll"):
        assert math.isfinite(s[key]), key
    for key in ("dsc_mean", "ece", "cece"):
        assert 0.0 <= s[key] <= 1.0, key
    # one row per test case of the split, named by the case
    split = json.loads(Path(info["overrides"]["split_file"]).read_text())
    test_subjects = (split["folds"][0] if "folds" in split else split)["test"]
    cases = [r["case"] for r in csv.DictReader(open(run_dir / "eval" / "per_case.csv"))]
    expected = [e["case"] for e in P.bundle_datalist(name, info["overrides"]["dataset_dir"], "test", split_file=info["overrides"]["split_file"], fold=0)]
    assert cases == expected and {c.split("_frame")[0] for c in cases} == set(test_subjects)
    # preprocessing cached once per volume (training and validation), with the checked files' stamps
    cache = Path(info["overrides"]["cache_dir"])
    n_volumes = len(split["folds"][0]["training"] + split["folds"][0]["validation"]) if "folds" in split else None
    cached = list(cache.glob("*.pt"))
    assert (cache / "checked_cases.json").is_file() and len(cached) >= (n_volumes or 2)


@pytest.mark.slow
@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_monai_workflow_properties(bundle, runs):
    # MONAI's own acceptance: the train and infer workflows have every property MONAI requires
    from monai.bundle import ConfigWorkflow

    ov = runs.get(bundle)["overrides"]
    for kind, workflow in (("train", "train.yaml"), ("infer", "inference.yaml")):
        wf = ConfigWorkflow(config_file=config_files(bundle, "ce", workflow=workflow), workflow_type=kind, logging_file=False,
                            meta_file=str(REPO / "bundles" / bundle / "configs" / "metadata.json"), input_dir=ov["dataset_dir"], **ov)  # fmt: skip
        wf.initialize()
        assert wf.check_properties() == [], (bundle, kind)


@pytest.mark.slow
@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_export_and_inference(bundle, runs, tmp_path, capsys):
    name = BUNDLES[bundle][0]
    info = runs.get(bundle)
    small = {k: v for k, v in info["overrides"].items() if k in ("image_size", "network_def#channels", "preprocess")}
    with pytest.raises(ValueError, match="trained with another network"):  # the run's small UNet is not the default
        export_bundle(bundle, "ce", str(tmp_path / "export"), runs_dir=info["overrides"]["runs_dir"])
    assert not (tmp_path / "export").exists()
    out = export_bundle(bundle, "ce", str(tmp_path / "export"), runs_dir=info["overrides"]["runs_dir"], **small)
    for f in ("configs/train.json", "configs/evaluate.json", "configs/inference.json", "configs/metadata.json", "models/model.pt",
              "docs/README.md", "docs/data_license.txt", "LICENSE"):  # fmt: skip
        assert (out / f).is_file(), f
    # one look-alike scan, as a user would give it: the files of one case (several modalities: <case>_0000, _0001, ...)
    module = get_dataset(name)
    case = module.find_cases(info["overrides"]["dataset_dir"])[0]
    scans = tmp_path / "scans"
    scans.mkdir()
    for k, src in enumerate(case.images):
        src = Path(src)
        if len(case.images) > 1:
            ext = "".join(src.suffixes[-2:]) if src.name.endswith(".nii.gz") else src.suffix
            shutil.copy(src, scans / f"{case.id}_{k:04d}{ext}")
        else:
            shutil.copy(src, scans / src.name)
            if src.suffix == ".mhd":
                shutil.copy(src.with_suffix(".raw"), scans / src.with_suffix(".raw").name)
    pred = tmp_path / "pred"
    # the export carries the run's settings: no overrides needed
    run_workflow("inference", [str(out / "configs" / "inference.json")], bundle_root=str(out), input_dir=str(scans), output_dir=str(pred))
    stem = case.id if len(case.images) > 1 else P.scan_datalist(name, str(scans))[0]["case"]
    from calibmonai.inference import case_name

    seg = pred / f"{case_name(stem)}_seg.nii.gz"
    assert seg.is_file(), sorted(p.name for p in pred.iterdir())
    from monai.transforms import LoadImage

    scan = LoadImage(image_only=True, ensure_channel_first=True)(case.images[0]) if P.protocol(name).volumes else None
    shape = tuple(scan.shape[1:4]) if scan is not None else tuple(get_dataset("busi").read_image(case.images[0]).shape[1:])
    seg_data = np.asarray(nib.load(str(seg)).dataobj)
    assert seg_data.shape[: len(shape)] == shape  # back in the scan's own grid
    assert set(np.unique(seg_data)) <= set(range(len(module.CLASS_NAMES)))
    conf = np.asarray(nib.load(str(pred / f"{case_name(stem)}_conf.nii.gz")).dataobj)
    assert conf.min() >= 1.0 / len(module.CLASS_NAMES) - 1e-4 and conf.max() <= 1.0 + 1e-6
    # the preview of the outputs finds the scan as the bundle's inference named it, and draws it under the maps
    from calibmonai.preview import bundle_scans, preview_folder

    found, class_names = bundle_scans([str(out / "configs" / "inference.json")], bundle_root=str(out), input_dir=str(scans))
    assert list(found) == [case_name(stem)] and class_names == list(module.CLASS_NAMES)
    assert preview_folder(pred, found, class_names) == [pred / f"{case_name(stem)}_preview.png"]
    assert "maps only" not in capsys.readouterr().out


@pytest.mark.slow
def test_second_method_reads_the_cache_not_the_files(runs, monkeypatch):
    info = runs.get("acdc_seg2d")
    cache = Path(info["overrides"]["cache_dir"])
    before = sorted(p.name for p in cache.glob("*.pt"))
    reads = []
    real_load = nib.load
    monkeypatch.setattr(nib, "load", lambda *a, **k: reads.append(a[0]) or real_load(*a, **k))
    run_workflow("training", config_files("acdc_seg2d", "mbls"), **info["overrides"])
    assert reads == []  # neither the checks (file stamps unchanged) nor the loader touched a NIfTI file
    assert sorted(p.name for p in cache.glob("*.pt")) == before
    assert (Path(info["overrides"]["runs_dir"]) / "acdc" / "mbls_alpha0.1_margin10.0" / "models" / "model.pt").is_file()
    # another preprocessing setting is another cache entry, never a stale volume
    run_workflow("training", config_files("acdc_seg2d", "ce"), **{**info["overrides"], "image_size": [16, 16], "runs_dir": str(cache.parent / "runs16")})
    assert len(list(cache.glob("*.pt"))) == 2 * len(before) and reads


# ------------------------------------------------------------------------------------ broken folders


@pytest.mark.slow
def test_broken_folder_stops_before_training(lookalikes, tmp_path):
    bundle = "acdc_seg2d"
    broken = tmp_path / "ACDC"
    shutil.copytree(lookalikes[bundle], broken)
    training = broken / "database" / "training"
    frame = training / "patient003" / "patient003_frame01.nii.gz"
    frame.write_bytes(frame.read_bytes()[:60])  # truncated download
    (training / "patient001" / "patient001_frame01_gt.nii.gz").unlink()
    split = tmp_path / "split.json"
    ov = {**SMALL, "dataset_dir": str(broken), "runs_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"), "split_file": str(split)}
    run_workflow("write_split", config_files(bundle, "ce"), **{**ov, "split_from_data": True})
    t0 = time.time()
    with pytest.raises(Exception) as info:
        run_workflow("training", config_files(bundle, "ce"), **ov)
    text = _messages(info.value)
    assert f"unreadable or corrupt file: {frame}" in text
    assert f"missing file: {training / 'patient001' / 'patient001_frame01_gt.nii.gz'}" in text
    assert "2 case(s) of the split cannot be used" in text and "usable cases of" in text
    assert time.time() - t0 < 60 and not (tmp_path / "runs").exists()  # stopped before any training
    for folder, words in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "empty", "is empty")):
        if words == "is empty":
            folder.mkdir()
            (folder / ".DS_Store").write_bytes(b"junk")
        with pytest.raises(Exception) as info:
            run_workflow("training", config_files(bundle, "ce"), **{**ov, "dataset_dir": str(folder)})
        assert f"data folder {folder} {words}" in _messages(info.value)
    assert not (tmp_path / "nowhere").exists()  # nothing created or downloaded


def test_partial_download_against_the_shipped_split_says_how_to_fix(lookalikes, tmp_path):
    shipped = REPO / "bundles/acdc_seg2d/configs/split.json"
    with pytest.raises(FileNotFoundError, match=r"not in the data folder.*--split_from_data true.*write_split.*--split_from_data true"):
        P.bundle_datalist("acdc", lookalikes["acdc_seg2d"], "training", split_file=shipped)
    # --split_from_data true: every workflow uses the seeded split of the subjects found, the shipped file untouched
    data, before = lookalikes["acdc_seg2d"], shipped.read_bytes()
    module = get_dataset("acdc")
    expected = module.make_split(sorted({c.subject for c in module.find_cases(data)}), seed=0)
    parser = _read_config(config_files("acdc_seg2d", "ce", "evaluate.yaml"))
    for k, v in {"dataset_dir": str(data), "cache_dir": str(tmp_path / "cache"), "split_from_data": "true"}.items():
        parser[k] = v
    training = parser.get_parsed_content("train#datalist")
    validation = parser.get_parsed_content("validate#datalist")
    test = parser.get_parsed_content("evaluate_datalist")
    for part, entries in (("training", training), ("validation", validation), ("test", test)):
        assert sorted({e["subject"] for e in entries}) == sorted(expected[part]) and entries, part
    assert shipped.read_bytes() == before


def test_checks_are_not_repeated_for_unchanged_files(lookalikes, tmp_path, monkeypatch):
    module = get_dataset("msd_hippocampus")
    cases = module.find_cases(lookalikes["hippocampus_seg2d"])
    calls = []
    real = module.check_case
    monkeypatch.setattr(module, "check_case", lambda c: calls.append(c.id) or real(c))
    P._CHECKED.clear()
    assert not P.check_cases(module, cases, "x", tmp_path).problems and len(calls) == len(cases)
    P._CHECKED.clear()  # a new process: the stamps on disk are enough
    assert not P.check_cases(module, cases, "x", tmp_path).problems and len(calls) == len(cases)
    image = Path(cases[0].images[0])
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))  # a replaced file
    P.check_cases(module, cases, "x", tmp_path)
    assert calls[len(cases):] == [cases[0].id]


# ----------------------------------------------------------------------------- dataset-specific parts


def test_brats_training_slices_hold_tumour():
    # BraTS: background-only slices never reach training (crops centred on tumour voxels only)
    label = torch.zeros(1, 8, 8, 6)
    label[0, 2:4, 2:4, 4] = 3.0
    image = torch.rand(4, 8, 8, 6)
    sampling = P.slice_sampling("brats19", [8, 8], slices_per_volume=20)
    from monai.transforms import Compose

    compose = Compose(sampling)
    compose.set_random_state(seed=0)
    out = compose({"image": image, "label": label})
    assert len(out) == 20 and all(float(o["label"].sum()) == 12.0 for o in out)  # slice 4, every time
    acdc = Compose(P.slice_sampling("acdc", [8, 8], slices_per_volume=40))
    acdc.set_random_state(seed=0)
    assert any(float(o["label"].sum()) == 0.0 for o in acdc({"image": image[:1], "label": label}))  # others: both kinds


def test_flare_slices_centred_on_the_organs():
    label = torch.zeros(1, 4, 4, 50)
    label[0, 1, 1, 20:31] = 1  # organs on slices 20..30: centre 25
    image = torch.arange(50.0).expand(1, 4, 4, 50).clone()
    out = P.LabelCentredSlicesd(["image", "label"], num_slices=30)({"image": image, "label": label})
    assert out["image"].shape == (1, 4, 4, 30) and out["image"][0, 0, 0].tolist() == list(range(10, 40))
    assert float(out["label"].sum()) == 11
    near_end = label.roll(18, dims=-1)  # organs on 38..48: the crop stays inside the volume (20..49)
    out = P.LabelCentredSlicesd(["image", "label"], num_slices=30)({"image": image, "label": near_end})
    assert out["image"][0, 0, 0].tolist() == list(range(20, 50))
    short = P.LabelCentredSlicesd(["image", "label"], num_slices=30)({"image": image[..., :10], "label": label[..., :10]})
    assert short["image"].shape[-1] == 30 and float(short["image"].sum()) == float(image[..., :10].sum())  # zero-padded
    assert P.LabelCentredSlicesd(["image"], num_slices=30)({"image": image})["image"].shape[-1] == 50  # inference: all


def test_preprocessing_normalises_to_unit_range_and_maps_labels(lookalikes):
    from monai.transforms import Compose

    for bundle in ("mrbrains18_seg2d", "brats19_seg2d", "promise12_seg2d"):
        name = BUNDLES[bundle][0]
        entry = P.bundle_datalist(name, lookalikes[bundle], "training", split_file=None, check=False)[0]
        d = Compose(P.load_transforms(name, [32, 32]))(entry)
        image, label = d["image"], d["label"]
        assert image.shape[0] == len(get_dataset(name).MODALITIES) and tuple(image.shape[1:3]) == (32, 32)
        for c in range(image.shape[0]):  # every channel scaled to [0, 1] on its own
            assert float(image[c].min()) == pytest.approx(0.0) and float(image[c].max()) == pytest.approx(1.0)
        assert set(torch.unique(label).tolist()) <= set(range(len(get_dataset(name).CLASS_NAMES)))
    # MRBrainS18 raw rows 0..10 -> background/CSF/GM/WM by the reader's map (rows of 16 voxels x 4 slices each)
    entry = P.bundle_datalist("mrbrains18", lookalikes["mrbrains18_seg2d"], "test", check=False)[0]
    label = Compose(P.load_transforms("mrbrains18", [16, 16]))(entry)["label"]
    counts = {v: int((label == v).sum()) for v in range(4)}
    raw = [v % 11 for v in range(16)]  # label_volume: row i holds value i % 11
    expected = {v: sum(64 for r in raw if get_dataset("mrbrains18").LABEL_MAP[r] == v) for v in range(4)}
    assert counts == expected
    with pytest.raises(ValueError, match="unknown preprocess option"):
        P.load_transforms("acdc", [32, 32], window=[0, 1])


def test_decathlon_layouts_give_the_same_network_input(tmp_path):
    from monai.transforms import Compose

    # MSD Task01: 4D volumes, labels 1 edema / 2 non-enhancing / 3 enhancing -> the BraTS convention
    task01 = L.write_msd_brats(tmp_path / "msd", n=3)
    entry = P.bundle_datalist("brats19", task01, "test", split_file=None)[0]
    d = Compose(P.load_transforms("brats19", [16, 16]))(entry)
    assert d["image"].shape == (4, 16, 16, 4)
    rows = d["label"][0, :, 0, 0].tolist()  # label_volume((0, 1, 2, 3)): row i holds i % 4 before mapping
    assert rows[:4] == [0.0, 2.0, 1.0, 3.0]
    # MSD Task05: T2 of the (T2, ADC) volumes, PZ and TZ merged into the gland
    task05 = LM.write_msd_prostate(tmp_path / "prostate")
    entry = P.bundle_datalist("promise12", task05, "training", split_file=None)[0]
    d = Compose(P.load_transforms("promise12", [16, 16], spacing=[0.6, 0.6, 0.0]))(entry)  # the look-alike's own grid
    assert d["image"].shape == (1, 16, 16, 4) and set(torch.unique(d["label"]).tolist()) == {0.0, 1.0}
    assert float(d["label"].mean()) == 10 / 16  # label_volume((0, 1, 2)): rows i % 3 in {1, 2} are gland, 10 of 16
    steps = P.load_transforms("promise12", [16, 16])
    upto = next(i for i, t in enumerate(steps) if type(t).__name__ == "SelectChannelsd")
    raw = Compose(steps[: upto + 1])(entry)["image"]
    assert raw.shape[0] == 1 and float(raw.min()) == 100.0  # channel 0 (T2: modality_volume(0)), not ADC (200)


def test_busi_masks_with_one_foreground_value_are_accepted(tmp_path):
    busi = get_dataset("busi")
    parent = L.write_busi(tmp_path, n_benign=3, n_malignant=1, nested=False)
    benign = parent / "Dataset_BUSI_with_GT" / "benign"
    mask = np.zeros((20, 24), np.uint8)
    mask[2:6, 3:8] = 1
    L._png(benign / "benign (1)_mask.png", mask)  # 0/1
    rgb = np.zeros((20, 24, 3), np.uint8)
    rgb[2:6, 3:8] = (200, 30, 30)
    L._png(benign / "benign (2)_mask.png", rgb)  # one colour
    two = mask * 255
    two[10:12, 10:12] = 128
    L._png(benign / "benign (3)_mask.png", two)  # two foreground values
    report = P.check_cases(busi, busi.find_cases(parent), parent)
    assert list(report.problems) == ["benign (3)"]
    assert report.problems["benign (3)"] == [f"mask values other than 0 and one foreground value in {benign / 'benign (3)_mask.png'}: [128, 255]"]
    for stem in ("benign (1)", "benign (2)"):
        m = busi.read_mask(str(benign / f"{stem}_mask.png"))
        assert int(m.sum()) == 20 and set(torch.unique(m).tolist()) == {0, 1}


def test_bundle_dataset_names_the_reader():
    assert {b: bundle_dataset(b) for b in BUNDLES} == {b: n for b, (n, _, _) in BUNDLES.items()}
    assert bundle_dataset("mni_tissue_seg2d") == "mni_tissue"  # the embedded task, checked from its datalist.json
    with pytest.raises(FileNotFoundError):
        bundle_dataset("no_such_bundle")
