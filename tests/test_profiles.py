"""The "paper" profile of the MNI tissue bundle: simulated rater labels (spatially correlated boundary shifts, clean
validation/test labels, seeded), the per-validation curves handler, and one tiny training epoch of the profile."""

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from calibmonai.bundle_tools import config_files, run_workflow
from calibmonai.data import prepare_mni_tissue
from calibmonai.data.mni_tissue import load_datalist, rater_labels, smooth_displacement
from calibmonai.handlers.curves import CURVE_COLUMNS, ValidationCurveLogger, read_curves

NOISE = {"shift_mm": 2.0, "smoothness_mm": 16.0}  # at 4 mm spacing: half a voxel, correlation length 4 voxels


@pytest.fixture(scope="module")
def noisy_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    prepare_mni_tissue(root / "data", num_subjects=3, split=(1, 1, 1), spacing=4.0, progress=False, label_noise=NOISE)
    return root


def _load(path):
    return np.asarray(nib.load(str(path)).dataobj).astype(np.int64)


def test_rater_labels_are_boundary_shifts_not_flips(noisy_task):
    (train,) = load_datalist(noisy_task / "data", "training")
    noisy, clean = _load(train["label"]), _load(train["clean_label"])
    assert "rater_labels" in train["label"] and "/labels/" in train["clean_label"]
    changed = noisy != clean
    brain = clean > 0
    rate = changed.sum() / brain.sum()
    assert 0.02 < rate < 0.6, rate  # the rater disagrees, but mostly agrees
    # adjacent to a boundary of the clean labels (a 6-neighbour with another label)
    face = ndi.generate_binary_structure(3, 1)
    band = ndi.grey_dilation(clean, footprint=face) != ndi.grey_erosion(clean, footprint=face)
    assert band[changed].mean() > 0.9
    # spatially correlated: changed voxels come in patches (a changed 6-neighbour)
    cross = face.astype(np.int64)
    cross[1, 1, 1] = 0
    neighbours = ndi.convolve(changed.astype(np.int64), cross, mode="constant")
    assert (neighbours[changed] > 0).mean() > 0.8
    # the same tests separate per-voxel flips at the same rate inside the brain: they fail both
    rng = np.random.default_rng(0)
    flips = brain & (rng.random(clean.shape) < rate)
    assert band[flips].mean() < 0.8
    flip_nb = ndi.convolve(flips.astype(np.int64), cross, mode="constant")
    assert (flip_nb[flips] > 0).mean() < 0.8


def test_validation_and_test_labels_are_clean(noisy_task):
    data = noisy_task / "data"
    for split in ("validation", "test"):
        (item,) = load_datalist(data, split)
        assert "clean_label" not in item and "/labels/" in item["label"]
        ref = np.asarray(nib.load(item["probs"]).dataobj)
        np.testing.assert_array_equal(_load(item["label"]), np.moveaxis(ref, -1, 0).argmax(0))
    (train,) = load_datalist(data, "training")
    ref = np.moveaxis(np.asarray(nib.load(train["probs"]).dataobj), -1, 0)
    np.testing.assert_array_equal(_load(train["clean_label"]), ref.argmax(0))
    stamp = json.loads((data / "prepare.json").read_text())
    assert stamp["label_noise"] == NOISE


def test_rater_labels_seeded_and_settings_guarded(noisy_task):
    (train,) = load_datalist(noisy_task / "data", "training")
    ref = np.moveaxis(np.asarray(nib.load(train["probs"]).dataobj), -1, 0).astype(np.float32)
    a = rater_labels(ref, 1.0, 4.0, np.random.default_rng([0, 1]))
    b = rater_labels(ref, 1.0, 4.0, np.random.default_rng([0, 1]))
    c = rater_labels(ref, 1.0, 4.0, np.random.default_rng([0, 2]))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    np.testing.assert_array_equal(rater_labels(ref, 0.0, 4.0, np.random.default_rng(0)), ref.argmax(0))  # no shift
    field = smooth_displacement((20, 24, 22), 1.5, 3.0, np.random.default_rng(3))
    assert field.shape == (3, 20, 24, 22)
    np.testing.assert_allclose(field.reshape(3, -1).std(1), 1.5, rtol=1e-4)
    # neighbouring displacements are strongly correlated (a smooth field), white noise's are not
    assert np.corrcoef(field[0, :-1].ravel(), field[0, 1:].ravel())[0, 1] > 0.8
    with pytest.raises(ValueError, match="already holds a prepared task"):
        prepare_mni_tissue(noisy_task / "data", num_subjects=3, split=(1, 1, 1), spacing=4.0, progress=False,
                           label_noise={"shift_mm": 2.0})  # fmt: skip
    with pytest.raises(ValueError, match="shift_mm"):
        prepare_mni_tissue(noisy_task / "other", num_subjects=3, split=(1, 1, 1), label_noise={"shift": 2.0})


class _State:
    def __init__(self, epoch, output, batch, metrics):
        self.epoch, self.iteration, self.output, self.batch, self.metrics = epoch, 1, output, batch, metrics


class _Engine:
    def __init__(self, state):
        self.state = state


def test_curve_logger_numbers(tmp_path):
    # one 2x2x1 case, 2 classes: labels [1, 1, 0, 1]; p(class 1) = [0.9, 0.6, 0.3, 0.2]
    p1 = torch.tensor([0.9, 0.6, 0.3, 0.2]).reshape(2, 2, 1)
    prob = torch.stack([1 - p1, p1])
    label = torch.tensor([1, 1, 0, 1]).reshape(1, 2, 2, 1)
    ref = tmp_path / "ref.nii.gz"
    q1 = np.array([0.8, 0.55, 0.0, 0.6], dtype=np.float32).reshape(2, 2, 1)
    nib.save(nib.Nifti1Image(np.stack([1 - q1, q1], -1), np.eye(4)), str(ref))
    logger = ValidationCurveLogger(str(tmp_path / "run"), num_bins=10)
    state = _State(3, [{"prob": prob, "label": label}], [{"probs": str(ref)}], {"val_mean_dice": 0.75})
    engine = _Engine(state)
    logger._reset(engine)
    logger._accumulate(engine)
    logger._write(engine)
    state.epoch = 6
    logger._reset(engine)
    logger._accumulate(engine)
    logger._write(engine)
    rows = read_curves(str(tmp_path / "run" / "curves.csv"))
    assert [r["epoch"] for r in rows] == [3, 6]
    r = rows[0]
    # foreground voxels (label 1): p_y = 0.9, 0.6, 0.2; confidences 0.9, 0.6, 0.8 (argmax 1, 1, 0)
    assert r["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.6) + math.log(0.2)) / 3, rel=1e-4)
    assert r["mean_confidence"] == pytest.approx((0.9 + 0.6 + 0.8) / 3, rel=1e-5)
    # top-label ECE, bins of 0.1: {0.9: correct}, {0.6: correct}, {0.8: wrong} -> (0.1 + 0.4 + 0.8) / 3
    assert r["ece"] == pytest.approx((0.1 + 0.4 + 0.8) / 3, rel=1e-4)
    assert r["dsc"] == 0.75
    # reference ECE on brain voxels (reference background < 0.5: voxels 0, 1, 3), every class probability binned
    p = np.array([0.1, 0.9, 0.4, 0.6, 0.8, 0.2])
    q = np.array([0.2, 0.8, 0.45, 0.55, 0.4, 0.6])
    bins = np.minimum((p * 10).astype(int), 9)
    expected = sum(abs(q[bins == b].sum() - p[bins == b].sum()) for b in set(bins)) / p.size
    assert r["ref_ece"] == pytest.approx(expected, rel=1e-5)
    assert r["ref_mad"] == pytest.approx(np.mean([0.1, 0.05, 0.4]), rel=1e-5)
    with open(tmp_path / "run" / "curves.csv") as f:
        assert next(csv.reader(f)) == list(CURVE_COLUMNS)


@pytest.mark.slow
def test_paper_profile_trains_and_writes_curves(noisy_task):
    files = config_files("mni_tissue_seg2d", "ce", "profiles/paper.yaml")
    data = str(noisy_task / "data")
    runs = str(noisy_task / "runs")
    run_workflow(
        "training", files, dataset_dir=data, default_dataset_dir=data, runs_dir=runs, epochs=2, val_interval=1,
        volume_repeats=1, image_size=[32, 32], **{"network_def::channels": [4, 8, 16, 32]},
    )  # fmt: skip
    run_dir = noisy_task / "runs" / "mni_tissue_paper" / "ce"
    rows = read_curves(str(run_dir / "curves.csv"))
    assert [r["epoch"] for r in rows] == [1, 2]  # one row per validation
    for r in rows:
        assert 0 <= r["dsc"] <= 1 and 0 <= r["ece"] <= 1 and r["nll"] > 0 and 0 <= r["ref_ece"] <= 1
    assert (run_dir / "models" / "model.pt").is_file() and (run_dir / "models" / "model_final.pt").is_file()


def test_paper_profile_settings():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files("mni_tissue_seg2d", "ce", "profiles/paper.yaml"))
    kw = parser.get_parsed_content("prepare_kwargs")
    assert kw["label_noise"]["shift_mm"] > 0 and sum(kw["split"]) == kw["num_subjects"]
    assert parser.get_parsed_content("train::slice_sampling::2::prob") == 0.0  # no flips
    assert parser.get_parsed_content("dataset_name") == "mni_tissue_paper"
    assert "mni_tissue_paper" in parser.get_parsed_content("default_dataset_dir")
    # the schedule the candidate search found (regime "long") and the last epoch's weights evaluated
    assert (parser.get_parsed_content("epochs"), parser.get_parsed_content("val_interval")) == (600, 20)
    from calibmonai.regime import CANDIDATES

    assert CANDIDATES["long"] == {"epochs": 600, "val_interval": 20}
    assert parser.get_parsed_content("ckpt_path").endswith("models/model_final.pt")
    assert parser.get_parsed_content("validate::handlers::2::final_filename") == "model_final.pt"


def test_demo_profile_methods_and_settings():
    from calibmonai.demo import PROFILE_METHODS, _method_spec, _profile_settings

    assert _method_spec("ce") == ("ce", {})
    assert _method_spec("mbls:margin=5:alpha=0.2") == ("mbls", {"loss_kwargs::margin": 5.0, "loss_kwargs::alpha": 0.2})
    with pytest.raises(ValueError, match="name:key=value"):
        _method_spec("mbls:margin")
    assert [_method_spec(m)[1].get("loss_kwargs::margin") for m in PROFILE_METHODS["paper"] if m.startswith("mbls")] == [5.0, 8.0, 10.0]
    settings = _profile_settings("mni_tissue_seg2d", "paper")
    assert settings["epochs"] > 30 and settings["prepare_kwargs"]["label_noise"]["shift_mm"] > 0


def _rows(nll, dsc, ece):
    return [{"epoch": 10 * (i + 1), "nll": n, "dsc": d, "ece": e} for i, (n, d, e) in enumerate(zip(nll, dsc, ece))]


def test_overfit_signature_hand_computed():
    from calibmonai.regime import overfit_signature

    # NLL 0.50 -> 0.40 (epoch 20) -> 0.46: a 15% rise after its minimum, DSC 0.80 -> 0.805 holds, ECE 0.02 -> 0.05
    s = overfit_signature(_rows([0.5, 0.4, 0.46], [0.7, 0.80, 0.805], [0.1, 0.02, 0.05]))
    assert s["min_nll_epoch"] == 20 and s["last_epoch"] == 30
    assert s["nll_rise"] == pytest.approx(0.15)
    assert (s["dsc_at_min"], s["dsc_last"], s["ece_at_min"], s["ece_last"], s["best_ece"]) == (0.80, 0.805, 0.02, 0.05, 0.02)
    assert math.isnan(s["ref_ece_last"]) and s["signature"]
    # each condition alone breaks it: NLL plateau (+1%), DSC falling by 0.05, ECE improving
    assert not overfit_signature(_rows([0.5, 0.4, 0.404], [0.7, 0.8, 0.8], [0.1, 0.02, 0.05]))["signature"]
    assert not overfit_signature(_rows([0.5, 0.4, 0.46], [0.7, 0.8, 0.75], [0.1, 0.02, 0.05]))["signature"]
    assert not overfit_signature(_rows([0.5, 0.4, 0.46], [0.7, 0.8, 0.8], [0.1, 0.02, 0.01]))["signature"]
    # the minimum at the last validation: no rise
    assert overfit_signature(_rows([0.5, 0.4], [0.7, 0.8], [0.1, 0.02]))["nll_rise"] == 0.0
    with pytest.raises(ValueError, match="at least one row"):
        overfit_signature([])
    with pytest.raises(ValueError, match="'ece'"):
        overfit_signature([{"epoch": 1, "nll": 0.5, "dsc": 0.7}])


def test_signature_table_and_unknown_candidate():
    from calibmonai.regime import overfit_signature, run_candidates, signature_table

    table = signature_table({"long": overfit_signature(_rows([0.5, 0.4, 0.46], [0.7, 0.8, 0.805], [0.1, 0.02, 0.05]))})
    assert "| long | 20 of 30 | 0.400 → 0.460 (+15.0%) | 0.800 → 0.805 | 0.020 → 0.050 (0.020) |" in table and table.rstrip().endswith("| yes |")
    with pytest.raises(ValueError, match="unknown candidate"):
        run_candidates("longer_still")


@pytest.mark.slow
def test_run_candidates_writes_curves_table_and_figure(noisy_task, monkeypatch):
    from calibmonai import regime

    tiny = {"epochs": 3, "val_interval": 1, "volume_repeats": 1, "image_size": [32, 32], "network_def::channels": [4, 8, 16, 32]}
    monkeypatch.setitem(regime.CANDIDATES, "tiny", tiny)
    out = noisy_task / "regime"
    data = str(noisy_task / "data")
    sig = regime.run_candidates("tiny", out=str(out), data=data, runs=str(noisy_task / "regime_runs"))
    rows = read_curves(str(out / "tiny_curves.csv"))
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert sig["tiny"] == {**regime.overfit_signature(rows), "minutes": sig["tiny"]["minutes"]}
    assert (out / "candidates.png").stat().st_size > 1000
    assert "| tiny | " in (out / "candidates.md").read_text()


@pytest.mark.slow
def test_a_profile_run_is_calibrated_used_and_exported_with_its_evaluated_weights(noisy_task, tmp_path):
    """The demo's runs (profile paper) through the README's follow-on commands: calibrate, `calibmonai infer
    --profile paper`, `export-bundle --profile paper`; the weights used are the last epoch's (model_final.pt, the
    ones the profile evaluates), never the best-DSC model.pt, and the calibrator fitted on them goes with them."""
    import hashlib
    import shutil

    from calibmonai.bundle_export import export_bundle
    from calibmonai.calibration.base import load_calibrator
    from calibmonai.cli import CLI

    data, runs = str(noisy_task / "data"), str(tmp_path / "runs")
    net = {"network_def#channels": [4, 8, 16, 32], "image_size": [32, 32]}
    train = dict(dataset_dir=data, default_dataset_dir=data, runs_dir=runs, epochs=2, val_interval=1, volume_repeats=1, **net)
    run_workflow("training", config_files("mni_tissue_seg2d", "ce", "profiles/paper.yaml"), **train)
    run_workflow("calibrate", config_files("mni_tissue_seg2d", "ce", "profiles/paper.yaml", "calibrate/ts.yaml"), calibration_sample_size=2000, **train)
    models = tmp_path / "runs" / "mni_tissue_paper" / "ce" / "models"
    digest = {f: hashlib.sha256((models / f).read_bytes()).hexdigest() for f in ("model.pt", "model_final.pt")}
    assert digest["model.pt"] != digest["model_final.pt"]
    assert load_calibrator(models / "calibrator_ts.pt").fitted_on == {"checkpoint": "model_final.pt", "sha256": digest["model_final.pt"]}
    scans = tmp_path / "scans"
    scans.mkdir()
    image = sorted((noisy_task / "data" / "images").glob("*.nii.gz"))[0]
    shutil.copy(image, scans / image.name)
    CLI().infer(str(scans), str(tmp_path / "out"), method="ce", runs_dir=runs, profile="paper", calibrator="ts", **net)
    assert len(list((tmp_path / "out").glob("*_seg.nii.gz"))) == 1
    with pytest.raises(ValueError, match=r"'paperr' is not a profile of bundle 'mni_tissue_seg2d'; profiles: paper"):
        CLI().infer(str(scans), str(tmp_path / "out_x"), method="ce", runs_dir=runs, profile="paperr", **net)
    # the export of the profile's run ships model_final.pt as its model.pt, with the calibrator fitted on it
    export = export_bundle("mni_tissue_seg2d", "ce", str(tmp_path / "export"), runs_dir=runs, profile="paper", **net)
    assert hashlib.sha256((export / "models" / "model.pt").read_bytes()).hexdigest() == digest["model_final.pt"]
    assert (export / "models" / "calibrator_ts.pt").is_file()
    assert json.loads((export / "configs" / "train.json").read_text())["epochs"] == 600  # the profile's settings travel
    CLI().infer(str(scans), str(tmp_path / "out_export"), bundle=str(export), calibrator="ts")
    assert len(list((tmp_path / "out_export").glob("*_conf.nii.gz"))) == 1
    # exported without the profile: model.pt (best DSC) goes, the calibrator fitted on other weights stays behind
    plain = export_bundle("mni_tissue_seg2d", "ce", str(tmp_path / "plain"), runs_dir=runs, dataset_name="mni_tissue_paper", **net)
    assert hashlib.sha256((plain / "models" / "model.pt").read_bytes()).hexdigest() == digest["model.pt"]
    assert not (plain / "models" / "calibrator_ts.pt").exists() and not (plain / "models" / "calibrator_ts.json").exists()
