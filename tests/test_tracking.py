"""Experiment tracking of the bundle: ``python -m monai.bundle run training ... --tracking mlflow`` (MONAI's built-in
MLflow settings, a local SQLite store) and the ``tensorboard`` config switch.

MLflow (3.13+) refuses the plain-folder ``file:`` store, so the local store is an SQLite file (MONAI's default,
``<output_dir>/mlruns.db``; here given with ``--tracking_uri``), with the artifacts in ``mlruns/`` beside it.
"""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from calibmonai.bundle_tools import config_files
from calibmonai.data import prepare_mni_tissue

BUNDLE = "mni_tissue_seg2d"
REPO = Path(__file__).resolve().parent.parent
TINY = {"slices_per_volume": 2, "batch_size": 4, "volume_repeats": 1, "network_def#channels": [4, 8, 16, 32], "epochs": 1}


def _parser(**overrides):
    parser = ConfigParser()
    parser.read_config(config_files(BUNDLE, "ce"))
    for k, v in overrides.items():
        parser[k] = v
    return parser


def _tensorboard_items(parser, handlers_id):
    return [i for i, h in enumerate(parser[handlers_id]) if str(h.get("_target_", "")).endswith("tensorboard_stats_handler")]


@pytest.mark.parametrize("switch", [None, "false", "true"])
def test_tensorboard_is_a_config_switch(switch, tmp_path):
    from calibmonai.handlers import DisabledHandler

    if switch == "true":
        pytest.importorskip("tensorboard")  # the [tensorboard] extra
    overrides = {"runs_dir": str(tmp_path)} if switch is None else {"runs_dir": str(tmp_path), "tensorboard": switch}
    parser = _parser(**overrides)
    run_dir = parser.get_parsed_content("run_dir")
    made = []
    for hid in ("train#handlers", "validate#handlers"):
        items = _tensorboard_items(parser, hid)
        assert len(items) == 1, hid  # one TensorBoard writer per engine
        made.append(parser.get_parsed_content(f"{hid}#{items[0]}"))
    if switch == "true":
        from monai.handlers import TensorBoardStatsHandler

        assert all(isinstance(h, TensorBoardStatsHandler) for h in made)
        assert {h._writer.log_dir for h in made} == {os.path.join(run_dir, "tensorboard")}
        for h in made:
            h.close()
    else:  # off by default: no writer, no folder
        assert all(isinstance(h, DisabledHandler) for h in made)
        assert not os.path.exists(os.path.join(run_dir, "tensorboard"))


def _numpy_mean_dice(pred, label, num_classes):
    """Mean over the foreground classes present of ``2 |P & G| / (|P| + |G|)`` (MONAI's MeanDice without background)."""
    scores = [2.0 * np.sum((pred == c) & (label == c)) / (np.sum(pred == c) + np.sum(label == c)) for c in range(1, num_classes) if np.any(label == c)]
    return float(np.mean(scores))


@pytest.mark.slow
def test_mlflow_tracking_and_tensorboard(tmp_path):
    mlflow = pytest.importorskip("mlflow")  # the [mlflow] extra
    pytest.importorskip("tensorboard")  # the [tensorboard] extra
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cohort = tmp_path / "data"
    prepare_mni_tissue(cohort, num_subjects=4, split=(2, 1, 1), seed=3, progress=False)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    overrides = {**TINY, "dataset_dir": str(cohort), "runs_dir": str(tmp_path / "runs")}
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", repr(config_files(BUNDLE, "ce"))]
    for k, v in {**overrides, "tracking_uri": uri, "experiment_name": "calibmonai_test", "run_name": "ce_tiny", "tensorboard": "true"}.items():
        args += [f"--{k}", repr(v) if isinstance(v, list) else str(v)]
    args += ["--tracking", "mlflow"]
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]

    # MLflow: one finished run with the training loss, the validation metrics and the executed config
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name("calibmonai_test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "ce_tiny" and run.info.status == "FINISHED"
    assert {"train_loss", "val_mean_dice", "val_ece", "val_cece"} <= set(run.data.metrics)
    assert run.data.params["max_epochs"] == "1"
    (dice,) = client.get_metric_history(run.info.run_id, "val_mean_dice")
    assert dice.step == 1
    (config,) = [a.path for a in client.list_artifacts(run.info.run_id) if a.path.endswith(".json")]
    local = client.download_artifacts(run.info.run_id, config, str(tmp_path / "artifacts"))
    assert json.load(open(local))["method"] == "ce"
    assert os.path.isdir(tmp_path / "mlruns")  # artifacts beside the store, not in the working directory

    # TensorBoard: the same numbers as MLflow, in <run_dir>/tensorboard
    run_dir = tmp_path / "runs" / "mni_tissue" / "ce"
    assert glob.glob(str(run_dir / "tensorboard" / "events.out.tfevents.*"))
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train_loss", "val_mean_dice", "val_ece", "val_cece"} <= set(scalars)
    for tag in ("val_mean_dice", "val_ece", "val_cece"):
        assert events.Scalars(tag)[-1].value == pytest.approx(run.data.metrics[tag], rel=1e-6), tag
    first_loss = client.get_metric_history(run.info.run_id, "train_loss")[0]
    assert events.Scalars("train_loss")[0].value == pytest.approx(first_loss.value, rel=1e-6)

    # the tracked Dice is that of the saved checkpoint, recomputed here with numpy
    parser = _parser(**overrides)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(run_dir / "models" / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    (item,) = parser.get_parsed_content("validate#datalist")
    d = parser.get_parsed_content("validate#preprocessing")(item)
    with torch.no_grad():
        logits = parser.get_parsed_content("validate#inferer")(d["image"].unsqueeze(0).float(), net)
    pred = logits.argmax(1)[0].numpy()
    label = np.asarray(d["label"][0]).astype(int)
    assert dice.value == pytest.approx(_numpy_mean_dice(pred, label, 4), abs=1e-5)
