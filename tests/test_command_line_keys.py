"""`python -m monai.bundle run` flags that no config key reads are refused (MONAI would add the key silently)."""

import glob
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import monai
import pytest

from calibmonai.bundle_tools import _as_file_list, _split_command_line, check_command_line_keys

REPO = Path(__file__).resolve().parent.parent
MAIN = os.path.join(os.path.dirname(monai.__file__), "bundle", "__main__.py")  # sys.argv[0] under `python -m monai.bundle`
TRAIN = [str(REPO / "bundles/mni_tissue_seg2d/configs/train.yaml"), str(REPO / "bundles/methods/mbls.yaml")]


def _argv(*flags: str) -> list[str]:
    return [MAIN, "run", "training", "--config_file", str(TRAIN)] + list(flags)


def test_flags_are_parsed_as_fire_reads_them():
    assert _split_command_line(["training", "--a", "1", "--b=x y", "--c", "--d#e", "-2"]) == ({"a": "1", "b": "x y", "c": True, "d#e": "-2"}, ["training"])
    assert _as_file_list("['a.yaml', 'b.yaml']") == ["a.yaml", "b.yaml"] and _as_file_list("a.yaml") == ["a.yaml"]


def test_config_keys_and_run_arguments_pass():
    check_command_line_keys(_argv("--epochs", "1", "--dataset_dir=/x", "--loss_kwargs#margin", "5", "--network_def::channels", "[4, 8]"))
    check_command_line_keys(_argv("--tracking", "mlflow", "--experiment_name", "e", "--logging_file", "l.conf", "--meta_file", "m.json"))


def test_a_mistyped_key_is_refused_with_the_nearest_keys():
    with pytest.raises(ValueError, match=r"unknown flag --data_dir: .*Did you mean --dataset_dir"):
        check_command_line_keys(_argv("--epochs", "1", "--data_dir", "/data"))
    with pytest.raises(ValueError, match=r"--epcohs.*Did you mean --epochs"):
        check_command_line_keys(_argv("--epcohs=1"))
    with pytest.raises(ValueError, match="unknown flag --marginn#x"):
        check_command_line_keys(_argv("--marginn#x", "1"))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs", "one"], re.escape("--epochs expects an integer (the config's default is 30), got 'one'.")),
        (["--epochs", "2.5"], "--epochs expects an integer"),
        (["--lr", "fast"], re.escape("--lr expects a number (the config's default is 0.001), got 'fast'.")),
        (["--slices_per_volume", "0"], "--slices_per_volume must be a positive integer, got 0."),
        (["--batch_size", "0"], "--batch_size must be a positive integer, got 0."),
        (["--batch_size", "6"], "--batch_size 6 is not a multiple of --slices_per_volume 4: .*1 volume\\(s\\) of 4 slices = 4 slices.*--batch_size 4"),
        (["--batch_size", "8", "--slices_per_volume", "3"], "--batch_size 8 is not a multiple of --slices_per_volume 3"),
    ],
)
def test_setting_values_that_cannot_be_their_number_are_refused(flags, message):
    with pytest.raises(ValueError, match=message):
        check_command_line_keys(_argv(*flags))


def test_device_cuda_without_a_gpu_is_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--device cuda:0: no CUDA device is visible to torch .*Leave --device out"):
        check_command_line_keys(_argv("--device", "cuda:0"))
    check_command_line_keys(_argv("--device", "cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_command_line_keys(_argv("--device", "cuda"))


def test_setting_values_that_fit_pass():
    check_command_line_keys(_argv("--epochs", "3", "--lr", "1e-4", "--lr=0.01", "--batch_size", "8", "--slices_per_volume", "2"))
    check_command_line_keys(_argv("--epochs", "$2 * 3", "--batch_size", "@slices_per_volume"))  # MONAI's to evaluate
    check_command_line_keys(_argv("--lr", "1"))  # an integer where the default is a float


def test_a_run_id_that_is_no_workflow_is_refused():
    # `train` is the section of the trainer's components: MONAI would build them and exit 0 without training
    with pytest.raises(ValueError, match=r"'train' is a section of components, not a workflow: .*Did you mean 'training'\?.*Workflows of .*: calibrate, training, run\."):
        check_command_line_keys([MAIN, "run", "train", "--config_file", str(TRAIN)])
    with pytest.raises(ValueError, match=r"'trainng' is not an id of the config\. Did you mean 'training'\?"):
        check_command_line_keys([MAIN, "run", "--run_id", "trainng", "--config_file", str(TRAIN)])
    check_command_line_keys([MAIN, "run", "--config_file", str(TRAIN)])  # no run id: MONAI runs `run` (= @training)
    evaluate = [str(REPO / "bundles/mni_tissue_seg2d/configs/train.yaml"), str(REPO / "bundles/mni_tissue_seg2d/configs/evaluate.yaml")]
    with pytest.raises(ValueError, match=r"'evaluation' is not an id of the config\. Did you mean 'evaluate'"):
        check_command_line_keys([MAIN, "run", "evaluation", "--config_file", str(evaluate)])
    with pytest.raises(ValueError, match=r"'train' is a section of components"):  # the run id after the flags
        check_command_line_keys([MAIN, "run", "--config_file", str(TRAIN), "train"])
    check_command_line_keys([MAIN, "run", "calibrate", "--config_file", str(TRAIN)])
    check_command_line_keys([MAIN, "run", "--config_file", str(TRAIN), "training"])
    check_command_line_keys([MAIN, "run", "device", "--config_file", str(TRAIN)])  # an expression: MONAI's to run
    infer = str(REPO / "bundles/mni_tissue_seg2d/configs/inference.yaml")
    check_command_line_keys([MAIN, "run", "--config_file", infer])  # its workflow is `run`, MONAI's default id
    check_command_line_keys([MAIN, "run", "--run_id=run", "--config_file", infer])


def test_the_run_id_of_an_args_file_comes_after_the_command_lines(tmp_path):
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"config_file": TRAIN, "run_id": "train"}))
    with pytest.raises(ValueError, match=r"'train' is a section of components"):
        check_command_line_keys([MAIN, "run", "--args_file", str(args)])
    check_command_line_keys([MAIN, "run", "training", "--args_file", str(args)])  # MONAI runs the positional id
    check_command_line_keys([MAIN, "run", "--run_id", "training", "--args_file", str(args)])


def test_args_file_overrides_are_checked(tmp_path):
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"config_file": TRAIN, "epoch": 3}))
    with pytest.raises(ValueError, match="--epoch:.*Did you mean --epochs"):
        check_command_line_keys([MAIN, "run", "training", "--args_file", str(args)])
    args.write_text(json.dumps({"config_file": TRAIN, "epochs": 3}))
    check_command_line_keys([MAIN, "run", "training", "--args_file", str(args)])


def test_other_processes_are_left_alone():
    # ConfigWorkflow from Python, calibmonai's own commands (they check their flags), a missing config file (MONAI names it)
    check_command_line_keys(["pytest", "run", "--config_file", str(TRAIN), "--nonsense", "1"])
    check_command_line_keys([MAIN, "verify_metadata", "--config_file", str(TRAIN), "--nonsense", "1"])
    check_command_line_keys([MAIN, "run", "training", "--config_file", "['/no/such.yaml']", "--nonsense", "1"])


def test_every_documented_bundle_command_uses_config_keys():
    """Each `python -m monai.bundle run` line of the README and the bundles' docs and configs whose config files
    exist in this checkout (relative to the repository root) passes the check: the docs name no key nothing reads."""
    checked = 0
    docs = [REPO / "README.md"] + [Path(p) for p in glob.glob(str(REPO / "bundles/*/docs/README.md"))] + [Path(p) for p in glob.glob(str(REPO / "bundles/*/configs/*.yaml"))]
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        for doc in docs:
            for m in re.finditer(r"-m monai\.bundle run ([^\n`]*)", doc.read_text().replace("\\\n", " ")):
                try:
                    tokens = shlex.split(m.group(1))
                except ValueError:
                    continue
                # optional flags written [--calibrator ts]: the flag and its value, without the brackets
                tokens = [t[1:] if t.startswith("[--") else t for t in tokens]
                tokens = [t[:-1] if t.endswith("]") and not t.startswith("[") else t for t in tokens]
                files = _split_command_line(tokens)[0].get("config_file")
                if not files or not all(os.path.isfile(f) for f in _as_file_list(files)):
                    continue  # placeholders (<bundle>, $B, ...)
                check_command_line_keys([MAIN, "run"] + tokens)
                checked += 1
    finally:
        os.chdir(cwd)
    assert checked >= 50, checked


def test_monai_bundle_run_stops_before_training(tmp_path):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(TRAIN), "--bundle_root", str(tmp_path / "b"), "--epcohs", "1"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "unknown flag --epcohs" in r.stderr and "Did you mean --epochs" in r.stderr
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").rglob("*.pt"))  # nothing trained
