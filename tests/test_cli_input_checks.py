"""Command-line input checked before anything runs: `calibmonai demo` refuses a bad method spec or a non-integer
flag before training anything, `export-bundle --overwrite` replaces only an empty folder or a previous export,
export-bundle takes infer's settings flags, and every sub-command's --help prints its usage."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import calibmonai.data
import calibmonai.demo as demo
from calibmonai.bundle_export import export_bundle
from calibmonai.cli import main

BUNDLE = "mni_tissue_seg2d"
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


class TrainedTooEarly(AssertionError):
    pass


@pytest.fixture
def no_work(monkeypatch):
    """Preparing data or running a workflow fails the test: the checks must come first."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append((args, kwargs))
        raise TrainedTooEarly(f"work started before the input was checked: {args}")

    monkeypatch.setattr(calibmonai.data, "prepare_mni_tissue", refuse)
    monkeypatch.setattr(demo, "run_workflow", refuse)
    return calls


# ---- 1. demo: every method spec checked before training ----


@pytest.mark.parametrize(
    "methods, message",
    [
        ("ce,mbls:margn=5", r"--methods 'mbls:margn=5': 'margn' is not a parameter of method 'mbls'.*Did you mean 'margin'\?.*margin, alpha, penalty"),
        ("ce,mlbs", r"--methods 'mlbs': unknown method 'mlbs'\. Did you mean 'mbls'.*Methods: ce, ce_dice"),
        ("ce,mbls:margin=-1", r"--methods 'mbls:margin=-1': .*margin and alpha must be >= 0"),
        ("ce,mbls:margin=abc", r"--methods 'mbls:margin=abc': method 'mbls' does not accept the loss arguments"),
        ("ce,focal:gama=2", r"--methods 'focal:gama=2': .*unexpected keyword argument 'gama'.*Its parameters: gamma"),
        ("ce,meep_ce_kl:lamda=0.5", r"'lamda' is not a parameter of method 'meep_ce_kl'.*Did you mean 'lam'\?"),
        ("ce,mbls:margin", r"loss arguments are written name:key=value"),
        ("ce,mbls,ce", r"--methods names 'ce' more than once"),
    ],
)
def test_demo_checks_every_method_before_training(tmp_path, no_work, methods, message):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        demo.run_demo(out=str(out), data=str(tmp_path / "d"), runs=str(tmp_path / "r"), methods=methods, epochs=1, subjects=4, profile="none")
    assert no_work == [] and not out.exists()


def test_demo_valid_methods_pass_the_check(tmp_path, no_work):
    """Good specs (parameters of the loss, a dataset fragment, a profile's methods) reach the data preparation."""
    with pytest.raises(TrainedTooEarly):
        demo.run_demo(out=str(tmp_path / "o"), data=str(tmp_path / "d"), runs=str(tmp_path / "r"),
                      methods="ce,mbls:margin=5:alpha=0.2,mbls:penalty=l2,meep_ce_kl_la:lam=0.5,nacl:alpha=0.2", epochs=1)  # fmt: skip
    assert demo.check_method_spec("mbls:margin=5", BUNDLE, ["profiles/paper.yaml"]) == ("mbls", {"loss_kwargs::margin": 5.0})
    for spec in demo.PROFILE_METHODS["paper"]:
        demo.check_method_spec(spec, BUNDLE, ["profiles/paper.yaml"])


def test_cli_demo_refuses_a_misspelt_parameter_before_writing(tmp_path):
    out, data = tmp_path / "out", tmp_path / "data"
    r = subprocess.run([sys.executable, "-m", "calibmonai.cli", "demo", "--methods", "ce,mbls:margn=5", "--epochs", "1", "--profile", "none", "--subjects", "3",
                        "--out", str(out), "--data", str(data), "--runs", str(tmp_path / "runs")],
                       capture_output=True, text=True, env=ENV, timeout=600)  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert "--methods 'mbls:margn=5'" in r.stderr and "Did you mean 'margin'?" in r.stderr and "Traceback" not in r.stderr
    assert "training" not in r.stdout and not out.exists() and not data.exists() and not (tmp_path / "runs").exists()


# ---- 2. demo / prepare: numeric flags checked up front ----


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs", "abc"], "--epochs must be a positive integer, got 'abc'."),
        (["--epochs", "0"], "--epochs must be a positive integer, got 0."),
        (["--epochs", "2.5"], "--epochs must be a positive integer, got 2.5."),
        (["--profile", "none", "--subjects", "abc"], "--subjects must be an integer >= 3 (training, validation and test subjects), got 'abc'."),
        (["--profile", "none", "--subjects", "2"], "--subjects must be an integer >= 3"),
        (["--subjects", "6"], "--subjects sets the cohort of the task without a profile; profile 'paper' has its own: add --profile none."),
        (["--profile", "none", "--full", "true"], "--full true runs a profile's whole schedule: name the profile (--profile paper)."),
        (["--full", "maybe"], "--full expects a boolean (true/false), got 'maybe'."),
        (["--seed", "-1"], "--seed must be an integer in [0, 2**32 - 1], got -1."),
        (["--seed", "one"], "--seed must be an integer in [0, 2**32 - 1], got 'one'."),
        (["--profile", "papr"], "--profile 'papr' is not a profile of bundle 'mni_tissue_seg2d'; profiles: paper, or none (the 24-subject task)."),
        (["--methods", "5"], "--methods must be comma-separated method names"),
    ],
)
def test_cli_demo_checks_flag_types(tmp_path, no_work, capsys, flags, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as code:
        main(["demo", "--out", str(out), "--data", str(tmp_path / "d"), "--runs", str(tmp_path / "r"), *flags])
    assert code.value.code == 2
    assert message in capsys.readouterr().err
    assert no_work == [] and not out.exists()


@pytest.mark.parametrize("flags, message", [(["--subjects", "abc"], "--subjects must be an integer >= 3"), (["--seed", "x"], "--seed must be an integer")])
def test_cli_prepare_checks_flag_types(tmp_path, no_work, capsys, flags, message):
    with pytest.raises(SystemExit) as code:
        main(["prepare", "--out", str(tmp_path / "d"), *flags])
    assert code.value.code == 2 and message in capsys.readouterr().err and no_work == []


# ---- 3. export-bundle --overwrite: an empty folder or a previous export only ----


def _export(out: Path, **kwargs) -> Path:
    return export_bundle(BUNDLE, "ce", str(out), runs_dir=str(out.parent / "no_runs"), untrained=True, **kwargs)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_overwrite_keeps_a_folder_with_other_files(tmp_path, capsys):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "models").mkdir()
    (out / "models" / "best.ckpt").write_text("not from an export")
    before = _tree(out)
    with pytest.raises(FileExistsError, match=r"holds 2 file\(s\) an export does not write: models/best.ckpt, notes.txt\. .*nothing was written"):
        _export(out, overwrite=True)
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no temporary folder left
    with pytest.raises(SystemExit) as code:  # the command line says the same, exit status 2
        main(["export-bundle", "--method", "ce", "--out", str(out), "--runs_dir", str(tmp_path / "no_runs"), "--untrained", "true", "--overwrite", "true"])
    assert code.value.code == 2 and "notes.txt" in capsys.readouterr().err and _tree(out) == before


def test_export_overwrite_replaces_a_previous_export(tmp_path):
    out = _export(tmp_path / "exp")
    # what running the export adds to itself: a fitted calibrator, the TorchScript weights
    (out / "models" / "calibrator_ts.pt").write_bytes(b"fitted later")
    (out / "models" / "model.ts").write_bytes(b"ckpt_export")
    again = _export(out, overwrite=True, image_size=[64, 64])
    assert again == out and json.loads((out / "configs" / "train.json").read_text())["image_size"] == [64, 64]
    assert not (out / "models" / "calibrator_ts.pt").exists() and not (out / "models" / "model.ts").exists()
    # results of running the export (runs/, eval/) or a file of the user's are not part of it: refused, kept
    for extra, listed in (("runs/mni_tissue/ce/models/model.pt", "runs/"), ("eval/summary.md", "eval/"), ("docs/my_notes.md", "docs/my_notes.md")):
        (out / extra).parent.mkdir(parents=True, exist_ok=True)
        (out / extra).write_text("keep me")
        with pytest.raises(FileExistsError, match=f"holds 1 file\\(s\\) an export does not write: {listed}\\. "):
            _export(out, overwrite=True)
        assert (out / extra).read_text() == "keep me"
        top = out / extra.split("/")[0]
        shutil.rmtree(top) if top.name != "docs" else os.remove(out / extra)


def test_export_overwrite_refuses_a_folder_that_is_no_export(tmp_path):
    # only names an export writes, but no export's metadata (e.g. a model-zoo bundle): not replaced
    out = tmp_path / "zoo"
    (out / "configs").mkdir(parents=True)
    (out / "configs" / "metadata.json").write_text(json.dumps({"name": "someone's bundle"}))
    (out / "LICENSE").write_text("theirs")
    with pytest.raises(FileExistsError, match="is not one .*not written by `calibmonai export-bundle`"):
        _export(out, overwrite=True)
    assert (out / "LICENSE").read_text() == "theirs"
    with pytest.raises(FileExistsError, match="configs/evaluate.yaml, configs/inference.yaml"):  # the repository bundle itself
        _export(Path(calibmonai.data.__file__).resolve().parents[2] / "bundles" / BUNDLE, overwrite=True)
    (tmp_path / "empty").mkdir()
    assert (_export(tmp_path / "empty", overwrite=True) / "configs" / "inference.json").is_file()
    with pytest.raises(FileExistsError, match="exists and is not empty; pass --overwrite true"):
        _export(out)


# ---- 4. export-bundle takes the settings flags of infer ----


def test_export_takes_infer_settings(tmp_path):
    out = _export(tmp_path / "exp", inference_spacing=[1.0, 1.0, 1.0], output_ext=".nii", **{"network_def#channels": [8, 16, 32, 64]})
    configs = {n: json.loads((out / "configs" / f"{n}.json").read_text()) for n in ("train", "evaluate", "inference")}
    assert configs["inference"]["inference_spacing"] == [1.0, 1.0, 1.0] and configs["inference"]["output_ext"] == ".nii"
    assert "inference_spacing" not in configs["train"] and "output_ext" not in configs["evaluate"]  # only where the key is read
    assert all(c["network_def"]["channels"] == [8, 16, 32, 64] for c in configs.values())
    # the training data stay out of the inference config, which reads the scans of --input_dir
    out2 = _export(tmp_path / "exp2", dataset_dir=str(tmp_path / "data"))
    assert json.loads((out2 / "configs" / "train.json").read_text())["dataset_dir"] == str(tmp_path / "data")
    assert json.loads((out2 / "configs" / "inference.json").read_text())["dataset_dir"] == "@input_dir"


def test_cli_export_takes_inference_spacing(tmp_path):
    out = tmp_path / "exp"
    main(["export-bundle", "--method", "ce", "--out", str(out), "--runs_dir", str(tmp_path / "no_runs"), "--untrained", "true",
          "--inference_spacing", "[1.5, 1.5, 1.5]"])  # fmt: skip
    assert json.loads((out / "configs" / "inference.json").read_text())["inference_spacing"] == [1.5, 1.5, 1.5]


@pytest.mark.parametrize(
    "key, message",
    [
        ("calibrator", "--calibrator does not apply to `calibmonai export-bundle`: the export ships every calibrator"),
        ("input_dir", "--input_dir does not apply to `calibmonai export-bundle`: the scans, the output folder"),
        ("output", "--output does not apply"),
        ("save_probs", "--save_probs does not apply"),
        ("run_dir", "--run_dir does not apply to `calibmonai export-bundle`: export-bundle sets it"),
        ("inferece_spacing", "unknown flag --inferece_spacing for `calibmonai export-bundle`"),
    ],
)
def test_export_refuses_what_cannot_apply_saying_why(tmp_path, key, message):
    out = tmp_path / "exp"
    with pytest.raises(ValueError) as info:
        _export(out, **{key: "x"})
    assert message in str(info.value) and not out.exists()


# ---- every sub-command's --help prints its usage ----


@pytest.mark.parametrize(
    "argv, usage",
    [
        (["export-bundle", "--help"], "calibmonai export-bundle"),
        (["export-bundle", "--out", "x", "-h"], "calibmonai export-bundle"),
        (["infer", "--help"], "calibmonai infer"),
        (["infer", "scans", "out", "--help"], "calibmonai infer"),
        (["check-data", "--help"], "calibmonai check-data"),
        (["demo", "--help"], "calibmonai demo"),
        (["prepare", "--help"], "calibmonai prepare"),
        (["study", "run", "--help"], "calibmonai study run"),
    ],
)
def test_every_command_prints_its_usage(tmp_path, capsys, monkeypatch, argv, usage):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as code:
        main(argv)
    printed = capsys.readouterr()
    text = printed.out + printed.err  # python-fire writes its usage to stderr
    assert code.value.code in (0, None), text
    assert f"NAME\n    {usage} - " in text and "FLAGS" in text and "error" not in text
    assert list(tmp_path.iterdir()) == []  # nothing ran


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated zip"], ids=["empty", "truncated"])
def test_cli_names_a_damaged_checkpoint_not_torch_s_inner_error(tmp_path, capsys, content):
    # calibmonai's message wraps torch's error; the command line used to print only the innermost cause (torch's
    # "PytorchStreamReader failed ...", or an empty line for an empty file)
    import nibabel as nib
    import numpy as np

    scans = tmp_path / "scans"
    scans.mkdir()
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 24, 6)).astype(np.float32), np.eye(4)), str(scans / "a.nii.gz"))
    ckpt = tmp_path / "runs" / "mni_tissue" / "ce" / "models" / "model.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(content)
    with pytest.raises(SystemExit) as exc:
        main(["infer", "--input", str(scans), "--output", str(tmp_path / "out"), "--runs_dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert f"calibmonai: error: the checkpoint {ckpt} cannot be read: it is empty, truncated or corrupt" in err, err


def test_error_message_picks_calibmonai_s_message_along_the_chain(tmp_path):
    from calibmonai.cli import error_message
    from calibmonai.prediction import load_checkpoint

    bad = tmp_path / "model.pt"
    bad.write_bytes(b"\x80\x02 not a checkpoint")
    try:
        try:
            load_checkpoint(torch.nn.Linear(2, 2), str(bad), "cpu")
        except ValueError as inner:  # as MONAI's config parser wraps an expression's error
            raise RuntimeError("Failed to evaluate ConfigExpression") from inner
    except RuntimeError as outer:
        message = error_message(outer)
    assert message.startswith(f"the checkpoint {bad} cannot be read") and "Failed to evaluate" not in message
    root = ValueError("")  # no calibmonai frame anywhere: the innermost cause, its type when it has no message
    wrapper = RuntimeError("wrapper")
    wrapper.__cause__ = root
    assert error_message(wrapper) == "ValueError (no message) from RuntimeError: wrapper"
    assert error_message(KeyError("plain")) == "'plain'"
