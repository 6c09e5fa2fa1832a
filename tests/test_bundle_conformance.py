"""The bundles under MONAI's own tooling (issue 10): workflow properties, schema, bundle_root, booleans, exports,
TorchScript with the inference pipeline embedded, and data safety."""

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from calibmonai.bundle_export import export_bundle
from calibmonai.bundle_tools import as_bool, config_files, run_workflow
from calibmonai.calibration import TemperatureScaling
from calibmonai.data import prepare_mni_tissue

REPO = Path(__file__).resolve().parent.parent
BUNDLE = "mni_tissue_seg2d"
CONFIGS = REPO / "bundles" / BUNDLE / "configs"
SMALL = {"slices_per_volume": 2, "batch_size": 4, "volume_repeats": 1, "epochs": 1}
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

# required properties of MONAI's meta_schema_20240725.json (encoded here: nothing is downloaded at test time)
SCHEMA_20240725 = {
    "type": "object",
    "required": ["schema", "version", "changelog", "monai_version", "pytorch_version", "numpy_version",
                 "required_packages_version", "task", "description", "authors", "copyright", "network_data_format"],
    "properties": {
        "schema": {"type": "string", "pattern": "meta_schema_20240725\\.json$"},
        "version": {"type": "string"},
        "changelog": {"type": "object"},
        "required_packages_version": {"type": "object"},
        "network_data_format": {
            "type": "object",
            "required": ["inputs", "outputs"],
            "properties": {
                "inputs": {"type": "object", "additionalProperties": {"$ref": "#/$defs/tensor"}},
                "outputs": {"type": "object", "additionalProperties": {"$ref": "#/$defs/tensor"}},
            },
        },
    },
    "$defs": {
        "tensor": {
            "type": "object",
            "required": ["type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data", "channel_def"],
        }
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("conformance")
    data = root / "data"
    prepare_mni_tissue(data, num_subjects=4, split=(2, 1, 1), seed=7, progress=False)
    runs = root / "runs"
    run_workflow("training", config_files(BUNDLE, "ce"), dataset_dir=str(data), runs_dir=str(runs), **SMALL)
    run_dir = runs / "mni_tissue" / "ce"
    ts = TemperatureScaling(4)
    with torch.no_grad():
        ts.log_t.fill_(float(np.log(1.7)))
    ts.save(run_dir / "models" / "calibrator_ts.pt")
    vol = nib.load(str(next((data / "images").iterdir()))).get_fdata().astype(np.float32)[10:70, 20:80, 30:44]
    scans = root / "scans"
    scans.mkdir()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-60, -80, -20]
    nib.save(nib.Nifti1Image(vol, affine), str(scans / "case one.nii.gz"))
    return {"root": root, "data": data, "runs": runs, "run_dir": run_dir, "scans": scans}


def _workflow(files, workflow_type, **override):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=[str(f) for f in files], workflow_type=workflow_type, logging_file=False,
                        meta_file=str(CONFIGS / "metadata.json"), **override)  # fmt: skip
    wf.initialize()
    return wf


def test_check_properties_train_and_infer(trained):
    wf = _workflow(config_files(BUNDLE, "mbls"), "train", dataset_dir=str(trained["data"]), runs_dir=str(trained["runs"]))
    assert wf.check_properties() == []
    wf = _workflow(config_files(BUNDLE, "ce", workflow="inference.yaml"), "infer", runs_dir=str(trained["runs"]), input_dir=str(trained["scans"]))
    assert wf.check_properties() == []
    # the stand-alone inference config holds the pipeline MONAI Deploy reads
    from monai.bundle import ConfigParser

    inference = ConfigParser.load_config_file(str(CONFIGS / "inference.yaml"))
    for key in ("bundle_root", "network_def", "preprocessing", "inferer", "postprocessing", "dataset", "evaluator", "initialize", "run", "finalize"):
        assert key in inference, key


def test_each_workflow_file_runs_what_it_is_for():
    from monai.bundle import ConfigParser

    train = ConfigParser.load_config_files([str(CONFIGS / "train.yaml"), str(REPO / "bundles/methods/ce.yaml")])
    assert train["run"] == "@training"
    evaluate = ConfigParser.load_config_files([str(CONFIGS / "train.yaml"), str(REPO / "bundles/methods/ce.yaml"), str(CONFIGS / "evaluate.yaml")])
    assert evaluate["run"] == "@evaluate"
    for name in ("ts", "lts", "platt", "isotonic"):
        cal = ConfigParser.load_config_files([str(CONFIGS / "train.yaml"), str(REPO / f"bundles/calibrate/{name}.yaml")])
        assert cal["run"] == "@calibrate", name
    inference = ConfigParser.load_config_file(str(CONFIGS / "inference.yaml"))
    assert inference["run"] == ["$@evaluator.run()"] and "trainer" not in json.dumps(inference)


def test_metadata_matches_schema_20240725(trained, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    jsonschema.validate(meta, SCHEMA_20240725)
    out = export_bundle(BUNDLE, "ce", str(tmp_path / "exp"), runs_dir=str(trained["runs"]))
    exported = json.loads((out / "configs" / "metadata.json").read_text())
    jsonschema.validate(exported, SCHEMA_20240725)
    entry = exported["changelog"][exported["version"]]
    assert "ce" in entry and "mni_tissue" in entry and "hyper-parameters" in entry
    broken = dict(meta)
    broken.pop("required_packages_version")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA_20240725)


def test_booleans_parse_or_name_the_flag():
    for v in (True, "true", "True", "yes", "1", 1, "on"):
        assert as_bool(v, "x") is True
    for v in (False, "false", "FALSE", "no", "0", 0, "off", None):
        assert as_bool(v, "x") is False
    with pytest.raises(ValueError, match="--overwrite expects a boolean .*'maybe'"):
        as_bool("maybe", "overwrite")


def _zoo_json_format(path: Path) -> bool:
    """model-zoo's pre-commit hook ``pretty-format-json --indent=4 --no-sort-keys``: 4 spaces, keys in their order."""
    text = path.read_text()
    return text == json.dumps(json.loads(text), indent=4) + "\n"


def test_export_metrics_leave_out_undefined_values(tmp_path):
    from calibmonai.bundle_export import _run_eval_metrics

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"w")
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    (eval_dir / "summary.csv").write_text("metric,value\ndsc_mean,0.9\nhd95_mean,nan\nece,0.04\n")
    metrics, note = _run_eval_metrics(eval_dir, ckpt)
    assert metrics == {"mean_dice": 0.9, "ece": 0.04} and "nan" not in json.dumps(metrics).lower()  # JSON has no NaN
    (eval_dir / "summary.csv").write_text("a,b\n1,2\n")
    metrics, note = _run_eval_metrics(eval_dir, ckpt)
    assert metrics == {} and "is not an evaluation summary" in note


def test_json_files_have_the_model_zoo_format():
    files = sorted((REPO / "bundles").glob("*/configs/*.json"))
    assert len(files) >= 15  # metadata.json of 10 bundles and the shipped split files
    assert [str(f.relative_to(REPO)) for f in files if not _zoo_json_format(f)] == []


def test_export_lists_its_weights_with_their_hash_and_the_run_s_test_metrics(trained, tmp_path):
    """large_files.yml as model-zoo's CI and MONAI read it (the shipped file's sha256, checked without network);
    eval_metrics from the run's own evaluation of the exported weights, none from an older evaluation or none."""
    import csv

    import yaml
    from monai.apps.utils import HashCheckError
    from monai.bundle import download_large_files

    runs = tmp_path / "runs"
    shutil.copytree(trained["runs"], runs)
    run_dir = runs / "mni_tissue" / "ce"
    out = export_bundle(BUNDLE, "ce", str(tmp_path / "not_evaluated"), runs_dir=str(runs))
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert meta["eval_metrics"] == {}  # not the repository bundle's numbers: they are another run's
    assert "the run was not evaluated" in (out / "docs" / "README.md").read_text()
    entries = {e["path"]: e for e in yaml.safe_load((out / "large_files.yml").read_text())["large_files"]}
    assert set(entries) == {"models/model.pt", "models/calibrator_ts.pt"}
    for path, e in entries.items():
        assert e["hash_type"] == "sha256" and e["hash_val"] == hashlib.sha256((out / path).read_bytes()).hexdigest()
    download_large_files(bundle_path=str(out))  # the files exist with their hash: nothing to download, no error
    assert [f.name for f in sorted((out / "configs").glob("*.json")) if not _zoo_json_format(f)] == []
    (out / "models" / "calibrator_ts.pt").write_bytes(b"damaged")
    with pytest.raises(HashCheckError):
        download_large_files(bundle_path=str(out))

    run_workflow("evaluate", config_files(BUNDLE, "ce", "evaluate.yaml"), dataset_dir=str(trained["data"]), runs_dir=str(runs), **SMALL)
    with open(run_dir / "eval" / "summary.csv", newline="") as f:
        summary = {r["metric"]: float(r["value"]) for r in csv.DictReader(f)}
    out = export_bundle(BUNDLE, "ce", str(tmp_path / "evaluated"), runs_dir=str(runs))
    metrics = json.loads((out / "configs" / "metadata.json").read_text())["eval_metrics"]
    assert set(metrics) == {"mean_dice", "mean_hd95", "ece", "cece", "brier", "nll"}
    assert metrics["mean_dice"] == pytest.approx(summary["dsc_mean"], abs=1e-6) and 0 < metrics["mean_dice"] <= 1
    assert metrics["ece"] == pytest.approx(summary["ece"], abs=1e-6) and metrics["nll"] == pytest.approx(summary["nll"], abs=1e-6)
    assert f"mean_dice {metrics['mean_dice']:g}" in (out / "docs" / "README.md").read_text()

    ckpt = run_dir / "models" / "model.pt"
    later = (run_dir / "eval" / "summary.csv").stat().st_mtime + 10
    os.utime(ckpt, (later, later))  # weights newer than their evaluation: it measured earlier ones
    out = export_bundle(BUNDLE, "ce", str(tmp_path / "stale"), runs_dir=str(runs))
    assert json.loads((out / "configs" / "metadata.json").read_text())["eval_metrics"] == {}
    assert "older than the exported weights" in (out / "docs" / "README.md").read_text()


def test_export_runs_from_its_bundle_root_elsewhere(trained, tmp_path):
    """Inference from the export with --bundle_root from another folder: the shipped weights, no training, no data
    folder created; --overwrite false and --save_probs false are false; a bad boolean is an error naming the flag."""
    out = export_bundle(BUNDLE, "ce", str(tmp_path / "ce_bundle"), runs_dir=str(trained["runs"]))
    assert (out / "models" / "model.pt").is_file() and (out / "models" / "calibrator_ts.pt").is_file()
    assert (out / "large_files.yml").is_file() and (out / "docs" / "data_license.txt").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pred = tmp_path / "pred"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(out / "configs" / "inference.json"),
           "--bundle_root", str(out), "--input_dir", str(trained["scans"]), "--output_dir", str(pred),
           "--save_probs", "false", "--calibrator", "ts"]  # fmt: skip
    r = subprocess.run(cmd, cwd=elsewhere, capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    seg = pred / "case one_seg.nii.gz"
    assert seg.is_file() and not (pred / "case one_prob.nii.gz").exists()
    assert nib.load(str(seg)).shape == (60, 60, 14)
    assert list(elsewhere.iterdir()) == [] and not (out / "data").exists() and not (out / "runs").exists()
    seg.write_bytes(b"sentinel")
    r = subprocess.run([*cmd, "--overwrite", "false"], cwd=elsewhere, capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert seg.read_bytes() == b"sentinel"
    r = subprocess.run([*cmd, "--overwrite", "perhaps"], cwd=elsewhere, capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode != 0 and "--overwrite expects a boolean" in r.stderr and "'perhaps'" in r.stderr
    assert seg.read_bytes() == b"sentinel"
    # MONAI's workflow checks pass on the export too
    from monai.bundle import ConfigWorkflow

    for name, kind in (("inference.json", "infer"), ("train.json", "train")):
        wf = ConfigWorkflow(config_file=str(out / "configs" / name), workflow_type=kind, logging_file=False, bundle_root=str(out),
                            input_dir=str(trained["scans"]), dataset_dir=str(trained["data"]))  # fmt: skip
        wf.initialize()
        assert wf.check_properties() == [], name


def test_export_validates_before_writing(trained, tmp_path):
    target = tmp_path / "x"
    with pytest.raises(FileNotFoundError, match="no trained weights .*--untrained"):
        export_bundle(BUNDLE, "mbls", str(target), runs_dir=str(trained["runs"]))
    with pytest.raises(ValueError, match="loss_kwargs"):
        export_bundle(BUNDLE, "ce", str(target), runs_dir=str(trained["runs"]), loss_kwargs="{'margin': ")
    with pytest.raises(ValueError, match="do not fit method"):
        export_bundle(BUNDLE, "ce", str(target), runs_dir=str(trained["runs"]), loss_kwargs={"bogus": 1})
    assert not target.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".x-")]
    r = subprocess.run([sys.executable, "-m", "calibmonai.cli", "export-bundle", "--method", "ce", "--out", str(target),
                        "--runs_dir", str(trained["runs"]), "--colour", "red"], capture_output=True, text=True, env=ENV, timeout=300)  # fmt: skip
    assert r.returncode == 2 and "unknown flag --colour" in r.stderr and not target.exists()
    out = export_bundle(BUNDLE, "mbls", str(target), runs_dir=str(trained["runs"]), untrained=True)  # that folder has no mbls run
    assert not (out / "models" / "model.pt").exists()
    assert "untrained" in json.loads((out / "configs" / "metadata.json").read_text())["changelog"]["0.2.0"]


def test_export_of_a_run_with_non_default_hyper_parameters(trained, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(trained["run_dir"], runs / "mni_tissue" / "mbls_alpha0.2_margin5.0")
    out = export_bundle(BUNDLE, "mbls", str(tmp_path / "m5"), runs_dir=str(runs), loss_kwargs="{'margin': 5.0, 'alpha': 0.2}")
    train = json.loads((out / "configs" / "train.json").read_text())
    assert train["loss_kwargs"] == {"margin": 5.0, "alpha": 0.2} and train["method_tag"] == "mbls_alpha0.2_margin5.0"
    assert "margin" in json.loads((out / "configs" / "metadata.json").read_text())["changelog"]["0.2.0"]
    readme = (out / "docs" / "README.md").read_text()
    assert f'pip install "{REPO}"' in readme and "pip install calibmonai\n" not in readme


@pytest.mark.parametrize("bundle", sorted(p.parent.parent.name for p in (REPO / "bundles").glob("*/configs/inference.yaml")))
def test_every_bundle_s_network_exports_to_torchscript(bundle, tmp_path):
    """model-zoo's verify_torchscript: ``ckpt_export`` of the inference config's ``network_def`` (here with freshly
    initialised weights) gives a TorchScript module with the same output on the metadata's input shape."""
    from monai.bundle import ConfigParser, ckpt_export
    from monai.data import load_net_with_metadata

    configs = REPO / "bundles" / bundle / "configs"
    parser = ConfigParser()
    parser.read_config(str(configs / "inference.yaml"))
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def").eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    ckpt_export(net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(tmp_path / "model.pt"),
                meta_file=str(configs / "metadata.json"), config_file=str(configs / "inference.yaml"), key_in_ckpt="")  # fmt: skip
    scripted, meta, _ = load_net_with_metadata(str(tmp_path / "model.ts"))
    image = json.loads((configs / "metadata.json").read_text())["network_data_format"]["inputs"]["image"]
    assert meta["name"] == json.loads((configs / "metadata.json").read_text())["name"]
    x = torch.randn(1, image["num_channels"], *image["spatial_shape"])
    with torch.no_grad():
        want, got = net(x), scripted(x)
    assert got.shape == want.shape and got.shape[1] == parser["num_classes"]
    assert torch.allclose(got, want, atol=1e-5)


def test_torchscript_export_carries_the_inference_pipeline(trained, tmp_path):
    """ckpt_export with the stand-alone inference config; a MONAI-style consumer rebuilds the pipeline from the
    embedded config and reproduces `run inference`'s label map."""
    from monai.bundle import ConfigParser, ckpt_export
    from monai.data import load_net_with_metadata

    ckpt = trained["run_dir"] / "models" / "model.pt"
    ts_file = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts_file), ckpt_file=str(ckpt), meta_file=str(CONFIGS / "metadata.json"),
                config_file=str(CONFIGS / "inference.yaml"), key_in_ckpt="")  # fmt: skip
    net, meta, extra = load_net_with_metadata(str(ts_file), more_extra_files=["inference.json"])
    embedded = json.loads(extra["inference.json"])
    for key in ("preprocessing", "inferer", "postprocessing"):
        assert key in embedded, key
    assert meta["version"] == "0.2.0"
    out_ref, out_ts = tmp_path / "ref", tmp_path / "ts"
    run_workflow("run", config_files(BUNDLE, "ce", workflow="inference.yaml"), runs_dir=str(trained["runs"]),
                 input_dir=str(trained["scans"]), output_dir=str(out_ref))  # fmt: skip
    parser = ConfigParser(embedded)
    parser["input_dir"] = str(trained["scans"])
    parser["output_dir"] = str(out_ts)
    pre, inferer, post = (parser.get_parsed_content(k) for k in ("preprocessing", "inferer", "postprocessing"))
    data = pre({"image": str(trained["scans"] / "case one.nii.gz")})
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None].float(), net.eval())[0]
    post(data)
    a = nib.load(str(out_ref / "case one_seg.nii.gz")).get_fdata()
    b = nib.load(str(out_ts / "case one_seg.nii.gz")).get_fdata()
    assert a.shape == (60, 60, 14)
    np.testing.assert_array_equal(a, b)


def test_verify_net_in_out_on_the_inference_config():
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"), config_file=str(CONFIGS / "inference.yaml"), device="cpu")


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_user_data_is_never_written_into(trained, tmp_path):
    """A folder of a user's own files given as dataset_dir is left byte-for-byte untouched by every run id, and a
    mistyped --dataset_dir creates nothing; only the embedded task's own default folder is prepared automatically."""
    user = tmp_path / "my_scans"
    user.mkdir()
    (user / "notes.txt").write_text("my data")
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(user / "scan.nii.gz"))
    before = _digest(user)
    for run_id, extra in (("training", ()), ("evaluate", ("evaluate.yaml",)), ("calibrate", ("calibrate/ts.yaml",)), ("evaluate_posthoc", ("evaluate.yaml",))):
        with pytest.raises(Exception) as info:
            run_workflow(run_id, config_files(BUNDLE, "ce", *extra), dataset_dir=str(user), runs_dir=str(trained["runs"]), **SMALL)
        messages = []
        e = info.value
        while e is not None:
            messages.append(str(e))
            e = e.__cause__
        assert "no datalist.json" in "\n".join(messages), run_id
        assert _digest(user) == before, run_id
    typo = tmp_path / "dta" / "mni_tisue"
    with pytest.raises(Exception):
        run_workflow("training", config_files(BUNDLE, "ce"), dataset_dir=str(typo), runs_dir=str(tmp_path / "runs"), **SMALL)
    assert not typo.exists() and not typo.parent.exists()
    # the default folder (bundle_root/data/mni_tissue) would be prepared: resolved, not string-compared
    from calibmonai.data import load_datalist

    with pytest.raises(FileNotFoundError):
        load_datalist(tmp_path / "other", "training", prepare_if_default=tmp_path / "default")
    assert not (tmp_path / "other").exists()


def test_training_logs_the_loss_every_epoch(trained, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="calibmonai")
    run_workflow("training", config_files(BUNDLE, "ce"), dataset_dir=str(trained["data"]), runs_dir=str(tmp_path), **{**SMALL, "epochs": 2})
    lines = [r.getMessage() for r in caplog.records if "mean training loss" in r.getMessage()]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all(np.isfinite(float(line.split("loss ")[1].split()[0])) for line in lines)


def test_a_corrupt_scan_names_the_file_and_the_reader_error(trained, tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "broken.nii.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 20)
    with pytest.raises(Exception):
        run_workflow("run", config_files(BUNDLE, "ce", workflow="inference.yaml"), runs_dir=str(trained["runs"]),
                     input_dir=str(scans), output_dir=str(tmp_path / "out"))  # fmt: skip
    line = [x for x in capsys.readouterr().out.splitlines() if "FAILED broken" in x or "broken: FAILED" in x][0]
    assert "broken.nii.gz" in line and "Compose" not in line and "applying transform" not in line


@pytest.mark.parametrize("bundle", sorted(p.parent.parent.name for p in (REPO / "bundles").glob("*/configs/train.yaml")))
def test_split_file_is_the_bundles_own(bundle, tmp_path, monkeypatch):
    # run from the repository root (bundle_root "."), as every documented command is, and from another folder with
    # --bundle_root: the split file is the one in bundles/<bundle>/configs (the 3D bundles once read ./configs/split.json)
    from calibmonai.bundle_tools import bundle_parser

    files = [str(REPO / "bundles" / bundle / "configs" / "train.yaml")]
    want = REPO / "bundles" / bundle / "configs" / "split.json"
    for cwd, overrides in ((REPO, {}), (tmp_path, {"bundle_root": str(REPO / "bundles" / bundle)})):
        monkeypatch.chdir(cwd)
        parser = bundle_parser(files, **overrides)
        if "split_file" not in parser:
            continue  # the embedded task keeps its split in its prepared data
        assert Path(parser.get_parsed_content("split_file")).resolve() == want.resolve()
