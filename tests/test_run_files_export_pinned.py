"""Pinned behaviours of calibmonai.run_files and calibmonai.bundle_export found unguarded by a mutation audit.

Each test is small (files in tmp_path, expectations computed by hand) and runs in well under a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

from calibmonai import run_files
from calibmonai.bundle_export import _foreign_files, _is_export, _large_files_yml, _run_eval_metrics, check_export_target


def _dead_pid() -> int:
    """The id of a process that has ended (a child that exited and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------- run_files


def test_stale_temporaries_of_a_dead_writer_go_those_of_a_live_one_and_other_files_stay(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f".tmp-{dead}-calibrator_ts.pt"
    live = tmp_path / f".tmp-{os.getpid()}-model.pt"
    kept = [tmp_path / "model.pt", tmp_path / f"tmp-{dead}-x.pt", tmp_path / f"notes-{dead}-a.txt", tmp_path / ".tmp-abc-x.pt"]
    for p in (stale, live, *kept):
        p.write_bytes(b"x")
    assert run_files.remove_stale_temporaries(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, *kept))
    assert run_files.remove_stale_temporaries(tmp_path / "missing") == []


def test_keep_previous_weights_names_the_folder_after_the_newest_file_and_numbers_a_second_one(tmp_path):
    ckpt = tmp_path / "models"
    (ckpt / "sub").mkdir(parents=True)
    old, new = ckpt / "calibrator_ts.pt", ckpt / "model.pt"
    old.write_bytes(b"c")
    new.write_bytes(b"m")
    t_old, t_new = 1_600_000_000, 1_700_000_000
    os.utime(old, (t_old, t_old))
    os.utime(new, (t_new, t_new))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(t_new))
    moved = run_files.keep_previous_weights(ckpt)
    assert moved == ckpt / "previous" / stamp
    assert sorted(p.name for p in moved.iterdir()) == ["calibrator_ts.pt", "model.pt"]
    assert (ckpt / "sub").is_dir() and not (moved / "sub").exists()  # sub-folders stay
    (ckpt / "model.pt").write_bytes(b"m2")  # a second training whose weights have the same time
    os.utime(ckpt / "model.pt", (t_new, t_new))
    assert run_files.keep_previous_weights(ckpt) == ckpt / "previous" / f"{stamp}-2"
    (ckpt / "model.pt").write_bytes(b"m3")
    os.utime(ckpt / "model.pt", (t_new, t_new))
    assert run_files.keep_previous_weights(ckpt) == ckpt / "previous" / f"{stamp}-3"


def test_a_busy_lock_names_what_its_holder_wrote_and_is_free_after_release(tmp_path):
    path = tmp_path / "deep" / "run.lock"
    with run_files.locked_file(path) as f:
        assert f is not None
        f.write("pid 4242 on node7")
        f.flush()
        with pytest.raises(run_files.LockBusy) as busy:
            with run_files.locked_file(path, blocking=False):
                pass
        assert busy.value.holder == "pid 4242 on node7"
    with run_files.locked_file(path, blocking=False) as g:  # released at the end of the block
        assert g is not None


def test_setting_differences_ignore_params_and_tiny_float_noise_and_name_absent_keys():
    diff = run_files._setting_differences
    saved = {"lr": 0.1, "momentum": 0.9, "params": [0, 1], "nesterov": False, "gone": 3}
    current = {"lr": 0.1 * (1 + 1e-15), "momentum": 0.8, "params": [5], "nesterov": 0, "new": "x"}
    assert diff(saved, current) == ["gone: 3 -> 'absent'", "momentum: 0.9 -> 0.8", "new: 'absent' -> 'x'"]
    assert diff(saved, current, ignore=("momentum",)) == ["gone: 3 -> 'absent'", "new: 'absent' -> 'x'"]
    assert diff(saved, current, only={"momentum", "params"}) == ["momentum: 0.9 -> 0.8"]
    assert diff({"a": True}, {"a": 1.0 + 1e-13}) == ["a: True -> 1.0000000000001"]  # a bool is no number here
    assert diff({"a": 1.0}, {"a": 1.0 + 1e-9}) == ["a: 1.0 -> 1.000000001"]  # beyond 1e-12 relative


# ---------------------------------------------------------------- bundle_export


def test_large_files_yml_lists_each_weight_with_the_sha256_of_its_own_bytes(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"weights")
    (tmp_path / "models" / "calibrator_ts.pt").write_bytes(b"calib")
    text = _large_files_yml(tmp_path, ["model.pt", "calibrator_ts.pt"])
    sha_w, sha_c = hashlib.sha256(b"weights").hexdigest(), hashlib.sha256(b"calib").hexdigest()
    assert text.split("large_files:\n", 1)[1] == (
        f'  - path: "models/model.pt"\n    url: ""\n    hash_val: "{sha_w}"\n    hash_type: "sha256"\n'
        f'  - path: "models/calibrator_ts.pt"\n    url: ""\n    hash_val: "{sha_c}"\n    hash_type: "sha256"\n'
    )
    assert _large_files_yml(tmp_path, []).endswith("\nlarge_files: []\n")


def test_eval_metrics_are_taken_only_from_an_evaluation_not_older_than_the_weights(tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"w")
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    summary = eval_dir / "summary.csv"
    summary.write_text("metric,value\ndsc_mean,0.8123456789\nhd95_mean,3.5\nece,0.04\ncece,0.01\nbrier,0.1\nnll,0.2\n")
    os.utime(ckpt, (1000, 1000))
    os.utime(summary, (1000, 1000))  # same time: evaluated these weights
    metrics, note = _run_eval_metrics(eval_dir, ckpt)
    assert metrics == {"mean_dice": 0.812346, "mean_hd95": 3.5, "ece": 0.04, "cece": 0.01, "brier": 0.1, "nll": 0.2}
    assert note.endswith("(means over the test cases of the run's evaluation, eval/summary.csv)")
    os.utime(summary, (999, 999))  # older than the weights: it measured earlier ones
    metrics, note = _run_eval_metrics(eval_dir, ckpt)
    assert metrics == {} and "older than the exported weights" in note
    metrics, note = _run_eval_metrics(tmp_path / "no_eval", ckpt)
    assert metrics == {} and "not evaluated" in note
    metrics, note = _run_eval_metrics(eval_dir, tmp_path / "none.pt")
    assert metrics == {} and note == "none (no weights exported)"


def test_foreign_files_accept_only_what_an_export_writes(tmp_path):
    for rel in ("LICENSE", "large_files.yml", "configs/train.json", "configs/notes.json", "docs/README.md", "docs/extra.md",
                "models/model.pt", "models/model.ts", "models/calibrator_ts.pt", "models/calibrator_ts.json",
                "models/calibrator_ts.txt", "models/best.ckpt", "notes.txt"):  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    (tmp_path / "models" / "calibrator_dir.pt").mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "LICENSE.d").mkdir()
    assert _foreign_files(tmp_path, config_names={"train.json"}) == [
        "LICENSE.d/", "configs/notes.json", "docs/extra.md", "models/best.ckpt", "models/calibrator_dir.pt/",
        "models/calibrator_ts.txt", "notes.txt", "runs/",
    ]  # fmt: skip


def test_export_target_checks(tmp_path):
    check_export_target(tmp_path / "new", overwrite=False)  # absent: fine
    empty = tmp_path / "empty"
    empty.mkdir()
    check_export_target(empty, overwrite=False)  # empty: fine without --overwrite
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        check_export_target(a_file, overwrite=True)
    exp = tmp_path / "exp"
    (exp / "configs").mkdir(parents=True)
    (exp / "configs" / "metadata.json").write_text(json.dumps({"name": "x", "version": "0.1.0"}))
    assert not _is_export(exp)
    with pytest.raises(FileExistsError, match="pass --overwrite true"):
        check_export_target(exp, overwrite=False)
    with pytest.raises(FileExistsError, match="is not one"):
        check_export_target(exp, overwrite=True)
    (exp / "configs" / "metadata.json").write_text(json.dumps({"name": "x", "calibmonai_method": "ce"}))
    assert _is_export(exp)
    check_export_target(exp, overwrite=True)


def test_a_resume_file_with_as_many_epochs_as_this_run_but_another_total_is_refused(tmp_path):
    import types

    import torch

    path = tmp_path / run_files.RESUME_FILE
    torch.save({"trainer": {"epoch": 3, "iteration": 30, "max_epochs": 5}}, path)  # stopped after 3 of 5 epochs
    trainer = types.SimpleNamespace(state=types.SimpleNamespace(max_epochs=3))  # this run: --epochs 3
    with pytest.raises(run_files.ResumeRefused, match="stopped after epoch 3, and this run's --epochs is 3"):
        run_files._load_resume_state(path, trainer, None, [], [], [], [])
