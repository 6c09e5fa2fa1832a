"""The embedded task, every method fragment of the bundle end to end, the CLI run and the export."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from calibmonai.bundle_export import export_bundle
from calibmonai.bundle_tools import config_files, method_names, run_workflow
from calibmonai.data import load_datalist, prepare_mni_tissue
from calibmonai.losses import METHODS

REPO = Path(__file__).resolve().parent.parent
BUNDLE = "mni_tissue_seg2d"
SMALL = {"slices_per_volume": 2, "batch_size": 4, "network_def#channels": [4, 8, 16, 32], "epochs": 1}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("mni")
    prepare_mni_tissue(root, num_subjects=4, split=(2, 1, 1), seed=3, progress=False)
    return root


def test_prepare_is_deterministic_and_consistent(cohort, tmp_path):
    other = tmp_path / "again"
    prepare_mni_tissue(other, num_subjects=4, split=(2, 1, 1), seed=3, progress=False)
    dl = json.loads((cohort / "datalist.json").read_text())
    assert [len(dl[k]) for k in ("training", "validation", "test")] == [2, 1, 1]
    subjects = {e["subject"] for k in ("training", "validation", "test") for e in dl[k]}
    assert len(subjects) == 4  # a subject is in one split only
    for entry in dl["training"] + dl["test"]:
        img_a, img_b = nib.load(cohort / entry["image"]), nib.load(other / entry["image"])
        np.testing.assert_array_equal(img_a.get_fdata(), img_b.get_fdata())
        lab, ref = nib.load(cohort / entry["label"]), nib.load(cohort / entry["probs"])
        assert img_a.shape == lab.shape == ref.shape[:3] and ref.shape[3] == 4
        np.testing.assert_allclose(img_a.affine, lab.affine)
        np.testing.assert_allclose(img_a.affine, ref.affine)
        np.testing.assert_allclose(np.abs(np.diag(img_a.affine)[:3]), 2.0)
        p = ref.get_fdata()
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
        assert p.min() >= 0
        labels = lab.get_fdata().astype(int)
        np.testing.assert_array_equal(labels, p.argmax(-1))
        assert set(np.unique(labels)) == {0, 1, 2, 3}
        assert (img_a.get_fdata()[labels == 0] == 0).mean() > 0.99  # skull-stripped background
    a = nib.load(cohort / dl["training"][0]["image"]).get_fdata()
    b = nib.load(cohort / dl["training"][1]["image"]).get_fdata()
    assert np.abs(a - b).mean() > 0.01  # subjects differ


def test_prepare_reuses_and_never_overwrites(cohort):
    f = cohort / "datalist.json"
    before = f.stat().st_mtime_ns
    prepare_mni_tissue(cohort, num_subjects=4, split=(2, 1, 1), seed=3, progress=False)
    assert f.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="already holds a prepared task"):
        prepare_mni_tissue(cohort, num_subjects=4, split=(2, 1, 1), seed=4, progress=False)


def test_bad_data_messages(cohort, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_datalist(tmp_path / "nowhere", "training")
    broken = tmp_path / "broken"
    shutil.copytree(cohort, broken)
    os.remove(broken / "images" / "sub-000_T1w.nii.gz")
    with pytest.raises(FileNotFoundError, match="sub-000_T1w"):
        [load_datalist(broken, s) for s in ("training", "validation", "test")]
    with pytest.raises(ValueError, match="available splits"):
        load_datalist(cohort, "train")
    with pytest.raises(ValueError, match="available methods: .*mbls"):
        config_files(BUNDLE, "mbls_typo")


def test_damaged_cases_are_named_before_training(cohort, tmp_path):
    """A datalist's case whose label is on another grid, holds another class or is truncated stops load_datalist
    (so the bundle's training) with the file named; before, the first trained silently and the others failed
    inside the loader's threads."""
    import re
    import subprocess

    import nibabel as nib
    import numpy as np

    from calibmonai.datasets import check_folder

    (entry,) = [e for e in json.loads((cohort / "datalist.json").read_text())["validation"]]
    label_path = entry["label"]
    for kind, pattern in (("grid", "shape mismatch: .*seg.nii.gz is \\(40, "), ("value", "label values outside \\[0, 1, 2, 3\\] in .*seg.nii.gz: \\[7\\]"),
                          ("truncated", "unreadable or corrupt file: .*seg.nii.gz")):  # fmt: skip
        broken = tmp_path / kind
        shutil.copytree(cohort, broken)
        lab = nib.load(str(broken / label_path))
        data = np.asarray(lab.dataobj)
        if kind == "grid":
            nib.save(nib.Nifti1Image(data[:40], lab.affine, lab.header), str(broken / label_path))
        elif kind == "value":
            data = data.copy()
            data[0, 0, 0] = 7
            nib.save(nib.Nifti1Image(data, lab.affine, lab.header), str(broken / label_path))
        else:
            raw = (broken / label_path).read_bytes()
            (broken / label_path).write_bytes(raw[: len(raw) // 2])
        load_datalist(broken, "training")  # the other split is not read
        with pytest.raises(ValueError, match=f"the validation split of .*datalist.json has cases that cannot be used:\\n(.|\\n)*{pattern}"):
            load_datalist(broken, "validation")
        assert load_datalist(broken, "validation", num_classes=None)  # the check switched off
        # `calibmonai check-data --bundle mni_tissue_seg2d` reports the same problem for the whole folder, exit status 1
        report = check_folder("mni_tissue", broken)
        assert not report.ok and report.n_cases == 4 and report.n_usable == 3
        assert re.search(pattern, "\n".join(report.problems[entry["subject"]]))
    assert check_folder("mni_tissue", cohort).ok and check_folder("mni_tissue", cohort).n_cases == 4
    assert "no datalist.json" in str(check_folder("mni_tissue", tmp_path / "none").error)
    assert subprocess.run([sys.executable, "-m", "calibmonai.cli", "check-data", str(cohort), "--bundle", BUNDLE], capture_output=True).returncode == 0


def test_every_method_has_a_fragment():
    """Every registry method has its own fragment; per-dataset fragments (MEEP's lambdas) name registry methods."""
    from monai.bundle import ConfigParser

    from calibmonai.bundle_tools import fragment

    names = method_names(BUNDLE)
    assert set(METHODS) <= set(names)
    for name in names:
        method = ConfigParser.load_config_file(str(fragment("methods", name)))["method"]
        assert method in METHODS, name
        assert name == method or name.startswith(method + "_"), name


def _summary(run_dir):
    return {r["metric"]: float(r["value"]) for r in csv.DictReader(open(run_dir / "eval" / "summary.csv"))}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_trains_and_evaluates(method, cohort, tmp_path):
    overrides = {**SMALL, "dataset_dir": str(cohort), "runs_dir": str(tmp_path)}
    run_workflow("training", config_files(BUNDLE, method), **overrides)
    run_workflow("evaluate", config_files(BUNDLE, method, "evaluate.yaml"), **overrides)
    (run_dir,) = (tmp_path / "mni_tissue").iterdir()
    assert run_dir.name.startswith(method)
    assert (run_dir / "models" / "model.pt").is_file()
    for f in ("per_case.csv", "summary.md", "reliability.png", "slice.png", "reference_reliability.png", "calibration_per_case.csv"):
        assert (run_dir / "eval" / f).stat().st_size > 0, f
    s = _summary(run_dir)
    for key in ("ece", "cece", "brier", "brier_plus", "nll", "ref_mad", "dsc_mean"):
        assert math.isfinite(s[key]), key
    for key in ("ece", "cece", "dsc_mean", "ref_mad"):
        assert 0.0 <= s[key] <= 1.0, key
    assert 0.0 <= s["brier"] <= 2.0 and s["nll"] >= 0.0


def test_runs_do_not_overwrite_each_other(cohort, tmp_path):
    overrides = {**SMALL, "dataset_dir": str(cohort), "runs_dir": str(tmp_path)}
    run_workflow("training", config_files(BUNDLE, "mbls"), **overrides)
    run_workflow("training", config_files(BUNDLE, "mbls"), **{**overrides, "loss_kwargs": {"margin": 5.0, "alpha": 0.1}})
    names = sorted(p.name for p in (tmp_path / "mni_tissue").iterdir())
    assert names == ["mbls_alpha0.1_margin10.0", "mbls_alpha0.1_margin5.0"]


def _messages(exc):
    out = []
    while exc is not None:
        out.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(out)


def test_evaluate_without_checkpoint_is_clear(cohort, tmp_path):
    # MONAI's config parser wraps errors raised inside expressions; our message is the root cause
    with pytest.raises(Exception) as info:
        run_workflow("evaluate", config_files(BUNDLE, "ce", "evaluate.yaml"), dataset_dir=str(cohort), runs_dir=str(tmp_path))
    assert "no trained checkpoint at" in _messages(info.value) and "model.pt" in _messages(info.value)


def test_monai_bundle_cli_from_repo_root(cohort, tmp_path):
    cfg = "['bundles/mni_tissue_seg2d/configs/train.yaml','bundles/methods/meep_ce_kl.yaml']"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", cfg, "--epochs", "1",
           "--slices_per_volume", "2", "--dataset_dir", str(cohort), "--runs_dir", str(tmp_path)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "mni_tissue" / "meep_ce_kl_lam0.3" / "models" / "model.pt").is_file()
    # "run" is an alias of "training"
    r = subprocess.run([*cmd[:4], "run", *cmd[5:]], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


REQUIRED_METADATA = ["version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
                     "task", "description", "authors", "copyright", "network_data_format", "changelog"]  # fmt: skip


def test_export_runs_standalone(cohort, tmp_path):
    # runs_dir with no trained run: the export must not pick up weights from a ./runs the developer trained
    out = export_bundle(BUNDLE, "mbls", str(tmp_path / "exported"), runs_dir=str(tmp_path / "no_runs"), untrained=True)
    for f in ("configs/train.json", "configs/evaluate.json", "configs/inference.json", "configs/metadata.json", "configs/logging.conf", "docs/README.md", "LICENSE"):
        assert (out / f).is_file(), f
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    for key in REQUIRED_METADATA:
        assert key in meta, key
    assert meta["calibmonai_method"] == "mbls" and "calibmonai" in meta["required_packages_version"]
    inputs = meta["network_data_format"]["inputs"]["image"]
    assert inputs["num_channels"] == 1 and meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 4
    train = json.loads((out / "configs" / "train.json").read_text())
    assert train["method"] == "mbls" and "calibmonai.losses.get_loss" in train["loss"]
    with pytest.raises(FileExistsError):
        export_bundle(BUNDLE, "mbls", str(out), runs_dir=str(tmp_path / "no_runs"), untrained=True)
    shutil.copytree(cohort, out / "data" / "mni_tissue")  # the export's default dataset_dir: nothing prepared
    small_net = ["--network_def#channels", "[4, 8, 16, 32]"]  # the exported configs take any key: a tiny network
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.json",
           "--epochs", "1", "--slices_per_volume", "2", "--batch_size", "4", "--volume_repeats", "1", *small_net]  # fmt: skip
    r = subprocess.run(cmd, cwd=out, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # training from the export writes under runs/, never over the shipped models/
    trained = out / "runs" / "mbls_alpha0.1_margin10.0" / "models" / "model.pt"
    assert trained.is_file() and not (out / "models" / "model.pt").exists()
    shutil.copy(trained, out / "models" / "model.pt")
    r = subprocess.run([*cmd[:4], "evaluate", "--config_file", "configs/evaluate.json", *small_net], cwd=out, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "eval" / "summary.md").is_file()


def test_cli_unknown_method_message(tmp_path):
    r = subprocess.run([sys.executable, "-m", "calibmonai.cli", "export-bundle", "--method", "nope", "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "available methods" in r.stderr and "Traceback" not in r.stderr


def test_calibrate_workflows_and_posthoc_table(cohort, tmp_path):
    overrides = {**SMALL, "dataset_dir": str(cohort), "runs_dir": str(tmp_path), "lts_epochs": 2, "lts_max_slices": 16,
                 "calibration_sample_size": 20000}  # fmt: skip
    with pytest.raises(Exception) as info:  # no checkpoint yet
        run_workflow("calibrate", config_files(BUNDLE, "ce", "calibrate/ts.yaml"), **overrides)
    assert "no trained checkpoint" in _messages(info.value)
    run_workflow("training", config_files(BUNDLE, "ce"), **overrides)
    run_dir = tmp_path / "mni_tissue" / "ce"
    for name in ("ts", "platt", "isotonic", "lts"):
        run_workflow("calibrate", config_files(BUNDLE, "ce", f"calibrate/{name}.yaml"), **overrides)
        assert (run_dir / "models" / f"calibrator_{name}.pt").is_file()
        assert json.loads((run_dir / "models" / f"calibrator_{name}.json").read_text())["calibrator"] == name
    assert json.loads((run_dir / "models" / "calibrator_ts.json").read_text())["temperature"] > 0
    run_workflow("evaluate", config_files(BUNDLE, "ce", "evaluate.yaml"), calibrator="ts", **overrides)
    assert (run_dir / "eval_ts" / "summary.csv").is_file()
    run_workflow("evaluate_posthoc", config_files(BUNDLE, "ce", "evaluate.yaml"), **overrides)
    rows = {r["row"]: r for r in csv.DictReader(open(run_dir / "posthoc" / "table3.csv"))}
    assert list(rows) == ["Pre", "TS", "LTS", "Platt", "Isotonic"]
    assert float(rows["TS"]["dsc_mean"]) == pytest.approx(float(rows["Pre"]["dsc_mean"]), abs=1e-9)  # TS keeps the argmax
    for r in rows.values():
        assert 0 <= float(r["ece"]) <= 1 and 0 <= float(r["cece"]) <= 1
    # a calibrator fitted for another number of classes is refused
    from calibmonai.calibration import TemperatureScaling

    TemperatureScaling(3).save(run_dir / "models" / "calibrator_ts.pt")
    with pytest.raises(Exception) as info:
        run_workflow("evaluate", config_files(BUNDLE, "ce", "evaluate.yaml"), calibrator="ts", **overrides)
    assert "fitted for 3 classes, the network has 4" in _messages(info.value)
    # a run evaluated on another checkpoint than model.pt (the paper profile's ckpt_path: model_final.pt): the
    # calibrator fitted on it is accepted by evaluate and evaluate_posthoc, which read the same checkpoint
    import torch

    state = torch.load(run_dir / "models" / "model.pt", weights_only=True)
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, run_dir / "models" / "model_final.pt")
    final = {**overrides, "ckpt_path": str(run_dir / "models" / "model_final.pt")}
    run_workflow("calibrate", config_files(BUNDLE, "ce", "calibrate/ts.yaml"), **final)
    run_workflow("evaluate", config_files(BUNDLE, "ce", "evaluate.yaml"), calibrator="ts", **final)
    run_workflow("evaluate_posthoc", config_files(BUNDLE, "ce", "evaluate.yaml"), posthoc_calibrators=["ts"], **final)
    assert list(csv.DictReader(open(run_dir / "posthoc" / "table3.csv")))[1]["row"] == "TS"
    with pytest.raises(Exception) as info:  # while model.pt is not what it was fitted on, and says so
        run_workflow("evaluate", config_files(BUNDLE, "ce", "evaluate.yaml"), calibrator="ts", **overrides)
    message = _messages(info.value)
    assert "was fitted on other weights than" in message and "(on model_final.pt)" in message
    assert "e.g. --ckpt_path " + str(run_dir / "models" / "model_final.pt") in message
