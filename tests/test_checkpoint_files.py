"""Checkpoint and calibrator files as users meet them: corrupt or truncated checkpoints named with the fix, a
relative checkpoint path read from elsewhere, and a calibrator fitted before the run was trained again."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from calibmonai.calibration import TemperatureScaling, calibrate_run, calibrator_path, load_calibrator, run_calibrator
from calibmonai.calibration.base import file_sha256
from calibmonai.prediction import check_checkpoint, load_checkpoint


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Conv2d(1, 3, 1)


@pytest.mark.parametrize("kind", ["zero", "truncated", "text", "pickle"])
def test_a_damaged_checkpoint_is_named_with_the_fix(tmp_path, kind):
    path = tmp_path / "model.pt"
    torch.save({"model": _net().state_dict()}, path)
    good = path.read_bytes()
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    else:  # more than tensors: never unpickled (weights_only)
        torch.save({"model": _net().state_dict(), "code": object()}, path)
    for load in (lambda: load_checkpoint(_net(), str(path), "cpu"), lambda: check_checkpoint(_net(), str(path))):
        with pytest.raises(ValueError, match=r"the checkpoint .*model\.pt cannot be read: it is empty, truncated or corrupt") as info:
            load()
        assert "weights_only=False" not in str(info.value)  # torch's advice to run the file's code is not relayed


def test_a_missing_relative_checkpoint_says_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"models/model.pt \(a path relative to {tmp_path}: from another folder, pass --bundle_root"):
        load_checkpoint(_net(), os.path.join("models", "model.pt"), "cpu")
    with pytest.raises(FileNotFoundError) as info:
        load_checkpoint(_net(), str(tmp_path / "models" / "model.pt"), "cpu")
    assert "--bundle_root" not in str(info.value)  # an absolute path: the hint does not apply


@pytest.mark.filterwarnings("ignore:temperature scaling")  # random logits: T on its bound, fine here
def test_a_calibrator_fitted_before_the_run_was_trained_again_is_refused(tmp_path):
    run = tmp_path / "run"
    ckpt = run / "models" / "model.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"model": _net(0).state_dict()}, ckpt)
    g = torch.Generator().manual_seed(0)
    items = [{"image": torch.randn(1, 8, 8, generator=g), "label": torch.randint(0, 3, (1, 8, 8), generator=g)} for _ in range(3)]
    summary = calibrate_run("ts", _net(), str(ckpt), items, lambda d: d, lambda x, n: n(x), 3, str(run), sample_size=500)
    assert summary["fitted_on"] == {"checkpoint": "model.pt", "sha256": file_sha256(ckpt)}
    cal = run_calibrator("ts", str(run), 3)
    assert cal.fitted_on["sha256"] == file_sha256(ckpt)
    other = tmp_path / "old.pt"
    shutil.copy(ckpt, other)  # e.g. an exported bundle's copy of the weights
    torch.save({"model": _net(1).state_dict()}, ckpt)  # trained again: other weights
    with pytest.raises(ValueError, match=r"fitted on other weights than .*model\.pt \(the run was trained again after calibrating, or this workflow reads another checkpoint .*run the 'calibrate' workflow again"):
        run_calibrator("ts", str(run), 3)
    # an explicit checkpoint (an evaluation of another file) is what is compared
    assert run_calibrator("ts", str(run), 3, checkpoint=str(other)) is not None
    # a calibrator saved without the record (older versions, or fitted by hand) is not checked
    TemperatureScaling(3).save(calibrator_path(str(run), "ts"))
    assert load_calibrator(calibrator_path(str(run), "ts")).fitted_on == {}
    assert run_calibrator("ts", str(run), 3) is not None


def test_a_missing_checkpoint_names_the_trained_runs_beside_it(tmp_path):
    import re

    from calibmonai.prediction import load_checkpoint

    runs = tmp_path / "runs" / "mni_tissue"
    for run in ("ce", "mbls_alpha0.1_margin10.0"):
        (runs / run / "models").mkdir(parents=True)
        torch.save(torch.nn.Linear(2, 2).state_dict(), runs / run / "models" / "model.pt")
    (runs / "untrained" / "models").mkdir(parents=True)  # no weights: not named
    missing = runs / "mbls_alpha0.1_margin5.0" / "models" / "model.pt"
    with pytest.raises(FileNotFoundError) as exc:
        load_checkpoint(torch.nn.Linear(2, 2), str(missing), "cpu")
    message = str(exc.value)
    assert f"no trained checkpoint at {missing}" in message
    assert re.search(rf"Trained runs in {re.escape(str(runs))}: ce, mbls_alpha0\.1_margin10\.0 \(", message), message
    assert "former name" not in message
    # a run trained when a margin given as 5 named the folder margin5: found, and the rename that makes it used
    (runs / "mbls_alpha0.1_margin5" / "models").mkdir(parents=True)
    torch.save(torch.nn.Linear(2, 2).state_dict(), runs / "mbls_alpha0.1_margin5" / "models" / "model.pt")
    with pytest.raises(FileNotFoundError) as exc:
        load_checkpoint(torch.nn.Linear(2, 2), str(missing), "cpu")
    message = str(exc.value)
    assert f"{runs / 'mbls_alpha0.1_margin5'} holds this run under its former name" in message, message
    assert message.endswith("rename that folder to mbls_alpha0.1_margin5.0 to use it."), message
    # the other way round (a margin5 folder wanted, margin5.0 trained) is not a former name: the runs are listed
    with pytest.raises(FileNotFoundError) as exc:
        load_checkpoint(torch.nn.Linear(2, 2), str(runs / "mbls_alpha0.1_margin1" / "models" / "model.pt"), "cpu")
    assert "former name" not in str(exc.value) and "Trained runs in" in str(exc.value)
    for run in ("ce", "mbls_alpha0.1_margin10.0", "mbls_alpha0.1_margin5"):
        (runs / run / "models" / "model.pt").unlink()
    with pytest.raises(FileNotFoundError) as exc:
        load_checkpoint(torch.nn.Linear(2, 2), str(missing), "cpu")
    assert "Trained runs" not in str(exc.value)
