"""A new training keeps an earlier training's weights and calibrators (calibmonai.run_files), in every bundle."""

import hashlib
import logging
import os
import shutil
import re
import time
from pathlib import Path

import pytest
import torch

from calibmonai.bundle_tools import config_files, run_workflow
from calibmonai.data import prepare_mni_tissue
from calibmonai.run_files import PREVIOUS_DIR, atomic_file, folder_lock, keep_previous_weights

REPO = Path(__file__).resolve().parent.parent


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_atomic_file_renames_when_complete_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "record.json"
    path.write_text("old")
    with atomic_file(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-") and tmp.name.endswith("record.json")
        tmp.write_text("new")
        assert path.read_text() == "old"  # the final name changes only when the block ends
    assert path.read_text() == "new"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_file(path) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("disk full")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_atomic_file_keeps_the_extension_for_writers_that_read_it(tmp_path):
    import nibabel as nib
    import numpy as np

    path = tmp_path / "case_seg.nii.gz"
    with atomic_file(path) as tmp:
        nib.save(nib.Nifti1Image(np.arange(8, dtype=np.uint8).reshape(2, 2, 2), np.eye(4)), tmp)
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip, as the final name says
    assert np.array_equal(np.asarray(nib.load(path).dataobj), np.arange(8).reshape(2, 2, 2))


def test_a_failed_calibrator_save_leaves_the_earlier_file(tmp_path, monkeypatch):
    from calibmonai.calibration import TemperatureScaling

    path = tmp_path / "calibrator_ts.pt"
    TemperatureScaling(num_classes=3).save(path)
    before = _sha(path)

    def failing_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"trunc")
        raise OSError("no space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="no space"):
        TemperatureScaling(num_classes=3).save(path)
    assert _sha(path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["calibrator_ts.pt"]


def _slow_add_entries(folder: str, who: str, n: int, locked: bool, barrier=None) -> None:
    """Add ``n`` entries to ``folder/record.json`` by read-modify-write; unlocked, every writer reads before any
    writes (a barrier between), so updates are lost for certain."""
    import contextlib
    import json

    path = os.path.join(folder, "record.json")
    for i in range(n):
        with folder_lock(folder) if locked else contextlib.nullcontext():
            records = json.loads(open(path).read()) if os.path.exists(path) else {}
            if barrier is not None:
                barrier.wait(30)
            time.sleep(0.01)
            records[f"{who}-{i}"] = i
            with atomic_file(path) as tmp:
                tmp.write_text(json.dumps(records))
        if barrier is not None:
            barrier.wait(30)


@pytest.mark.parametrize("locked", [True, False])
def test_folder_lock_keeps_every_concurrent_update(tmp_path, locked):
    import json
    import multiprocessing as mp

    from calibmonai.run_files import FOLDER_LOCK

    ctx = mp.get_context("fork")
    barrier = None if locked else ctx.Barrier(3)
    procs = [ctx.Process(target=_slow_add_entries, args=(str(tmp_path), f"p{k}", 6, locked, barrier)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    records = json.loads((tmp_path / "record.json").read_text())
    if locked:
        assert sorted(records) == sorted(f"p{k}-{i}" for k in range(3) for i in range(6))
        assert sorted(p.name for p in tmp_path.iterdir()) == [FOLDER_LOCK, "record.json"]  # one hidden lock file
    else:  # the control: the same updates without the lock lose entries (so the test above can fail)
        assert len(records) <= 6


def test_inference_record_is_read_and_written_under_the_folder_lock(tmp_path, monkeypatch):
    import contextlib
    import json
    import types

    import calibmonai.inference as inf

    held = []

    @contextlib.contextmanager
    def fake_lock(folder):
        held.append(str(folder))
        yield
        held.pop()

    monkeypatch.setattr(inf, "folder_lock", fake_lock)
    engine = types.SimpleNamespace(output_dir=str(tmp_path))
    seen = []

    def records():
        seen.append(list(held))
        return inf.ScanInferenceEngine._records(engine)

    engine._records = records
    inf.ScanInferenceEngine._record(engine, "case1", {"checkpoint_sha256": "ab"})
    inf.ScanInferenceEngine._record(engine, "case2", {"checkpoint_sha256": "cd"})
    inf.ScanInferenceEngine._record(engine, "case1", None)
    assert seen == [[str(tmp_path)]] * 3
    assert json.loads((tmp_path / inf.OUTPUTS_RECORD).read_text()) == {"case2": {"checkpoint_sha256": "cd"}}


def test_first_training_moves_nothing(tmp_path):
    assert keep_previous_weights(tmp_path / "absent") is None
    (tmp_path / "models").mkdir()
    assert keep_previous_weights(tmp_path / "models") is None
    assert list((tmp_path / "models").iterdir()) == []


def test_files_move_to_a_folder_named_after_the_newest(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="calibmonai")
    models = tmp_path / "models"
    (models / "sub").mkdir(parents=True)
    (models / "sub" / "x.txt").write_text("stays")
    (models / "model.pt").write_bytes(b"weights")
    (models / "calibrator_ts.pt").write_bytes(b"calibrator")
    t_old, t_new = 1_700_000_000, 1_700_000_100  # 2023-11-14 22:13:20 UTC and 100 s later
    os.utime(models / "model.pt", (t_old, t_old))
    os.utime(models / "calibrator_ts.pt", (t_new, t_new))
    moved = keep_previous_weights(models)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(t_new))
    assert moved == models / PREVIOUS_DIR / stamp
    assert sorted(p.name for p in moved.iterdir()) == ["calibrator_ts.pt", "model.pt"]
    assert (moved / "model.pt").read_bytes() == b"weights" and (moved / "calibrator_ts.pt").read_bytes() == b"calibrator"
    assert sorted(p.name for p in models.iterdir()) == [PREVIOUS_DIR, "sub"] and (models / "sub" / "x.txt").read_text() == "stays"
    out = capsys.readouterr().out + caplog.text  # printed, or logged where logging is configured
    assert "held an earlier training's files (calibrator_ts.pt, model.pt)" in out and str(moved) in out
    # a second earlier training with the same time stamp is kept beside the first, not merged into it
    (models / "model.pt").write_bytes(b"second")
    os.utime(models / "model.pt", (t_new, t_new))
    again = keep_previous_weights(models)
    assert again == models / PREVIOUS_DIR / f"{stamp}-2" and (again / "model.pt").read_bytes() == b"second"
    assert (moved / "model.pt").read_bytes() == b"weights"


@pytest.mark.slow
def test_training_again_keeps_the_earlier_weights_and_calibrators(tmp_path):
    data = tmp_path / "data"
    prepare_mni_tissue(data, num_subjects=3, split=(1, 1, 1), seed=2, progress=False)
    small = {"dataset_dir": str(data), "runs_dir": str(tmp_path / "runs"), "epochs": 1, "slices_per_volume": 2,
             "batch_size": 2, "network_def#channels": [4, 8, 16, 32]}  # fmt: skip
    files = config_files("mni_tissue_seg2d", "ce")
    run_workflow("training", files, **small)
    models = tmp_path / "runs" / "mni_tissue" / "ce" / "models"
    first = _sha(models / "model.pt")
    with pytest.raises(Exception, match="load_datalist"):  # a training that stops before it starts moves nothing
        run_workflow("training", files, **{**small, "dataset_dir": str(tmp_path / "absent")})
    assert _sha(models / "model.pt") == first and not (models / PREVIOUS_DIR).exists()
    run_workflow("calibrate", config_files("mni_tissue_seg2d", "ce", "calibrate/ts.yaml"), **small)
    calibrator = next(models.glob("calibrator_ts*"))
    fitted = _sha(calibrator)
    run_workflow("training", files, **{**small, "seed": 7})  # trained again (another seed: other weights)
    kept = list((models / PREVIOUS_DIR).iterdir())
    assert len(kept) == 1
    assert _sha(kept[0] / "model.pt") == first and _sha(kept[0] / calibrator.name) == fitted
    assert _sha(models / "model.pt") != first  # the new training's weights
    assert not list(models.glob("calibrator_*"))  # no calibrator of the earlier weights beside the new ones
    torch.load(kept[0] / "model.pt", weights_only=True)  # still a loadable checkpoint


def test_with_a_trainer_the_files_move_after_its_first_step(tmp_path):
    from ignite.engine import Engine, Events

    models = tmp_path / "models"
    models.mkdir()
    (models / "model.pt").write_bytes(b"weights")
    engine = Engine(lambda e, batch: None)
    seen = []
    engine.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(sorted(p.name for p in models.iterdir())))
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(sorted(p.name for p in models.iterdir())))
    assert keep_previous_weights(models, engine) is None
    assert (models / "model.pt").is_file()  # not yet: the engine has not started
    engine.run([0, 1], max_epochs=1)
    # the first step ran with the earlier weights in place; moved before the second and before the epoch's checkpoint
    assert seen == [["model.pt"], [PREVIOUS_DIR], [PREVIOUS_DIR]]
    assert [p.name for p in (models / PREVIOUS_DIR).iterdir()] and not (models / "model.pt").exists()


def test_a_training_that_fails_before_its_first_step_completes_moves_nothing(tmp_path):
    from ignite.engine import Engine

    models = tmp_path / "models"
    models.mkdir()
    (models / "model.pt").write_bytes(b"weights")

    def step(engine, batch):
        raise RuntimeError("the first batch does not fit the network")

    engine = Engine(step)
    keep_previous_weights(models, engine)
    with pytest.raises(RuntimeError, match="does not fit"):
        engine.run([0], max_epochs=1)
    assert sorted(p.name for p in models.iterdir()) == ["model.pt"] and (models / "model.pt").read_bytes() == b"weights"


def _interrupted_training(files, overrides, stop_at_epoch):
    """Run the bundle's ``training`` as ``monai.bundle run`` does, stopped (KeyboardInterrupt, as Ctrl-C or a
    scheduler's SIGTERM) when epoch ``stop_at_epoch`` starts."""
    from ignite.engine import Events

    from calibmonai.bundle_tools import bundle_parser

    parser = bundle_parser(files, **overrides)
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")

    def stop(_engine):
        raise KeyboardInterrupt

    trainer.add_event_handler(Events.EPOCH_STARTED(once=stop_at_epoch), stop)
    with pytest.raises(KeyboardInterrupt):
        parser.get_parsed_content("training")


@pytest.mark.slow
def test_a_stopped_training_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, caplog):
    data = tmp_path / "data"
    prepare_mni_tissue(data, num_subjects=3, split=(1, 1, 1), seed=2, progress=False)
    small = {"dataset_dir": str(data), "epochs": 4, "slices_per_volume": 2, "batch_size": 2,
             "network_def#channels": [4, 8, 16, 32], "volume_repeats": 2}  # fmt: skip
    files = config_files("mni_tissue_seg2d", "ce", "profiles/paper.yaml")
    paper = {"val_interval": 1, "train#datalist": "$calibmonai.data.load_datalist(@dataset_dir, 'training')",
             "validate#datalist": "$calibmonai.data.load_datalist(@dataset_dir, 'validation')"}  # fmt: skip
    # reference: 4 epochs in one go
    run_workflow("training", files, **small, **paper, runs_dir=str(tmp_path / "once"))
    once = tmp_path / "once" / "mni_tissue_paper" / "ce"
    assert not (once / "models" / "resume.pt").exists()  # removed when the training completed
    # stopped when epoch 3 starts: the state of epoch 2 is kept
    runs = tmp_path / "stopped"
    _interrupted_training(files, {**small, **paper, "runs_dir": str(runs)}, stop_at_epoch=3)
    run = runs / "mni_tissue_paper" / "ce"
    saved = torch.load(run / "models" / "resume.pt", weights_only=True)
    assert saved["trainer"]["epoch"] == 2 and saved["evaluator"]["best_metric_epoch"] in (1, 2)
    best_before = _sha(run / "models" / "model.pt")
    # run again with --resume true: epochs 3 and 4, nothing moved to previous/
    with caplog.at_level(logging.INFO):
        run_workflow("training", files, **small, **paper, runs_dir=str(runs), resume=True)
    assert "resumed from" in caplog.text and "epoch 2 of 4 done" in caplog.text
    assert not (run / "models" / PREVIOUS_DIR).exists() and not (run / "models" / "resume.pt").exists()
    # the same weights as the uninterrupted run (random states of torch, numpy and the crops restored)
    for name in ("model_final.pt",):
        a, b = torch.load(once / "models" / name, weights_only=True), torch.load(run / "models" / name, weights_only=True)
        a, b = a.get("model", a), b.get("model", b)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the best checkpoint is the uninterrupted run's best (validation DSC rises every epoch here: epoch 4's)
    best = torch.load(run / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(best[k], b[k]) for k in b) and _sha(run / "models" / "model.pt") != best_before
    # one validation-curve row per epoch, as the uninterrupted run
    import csv

    rows = list(csv.DictReader(open(run / "curves.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert rows == list(csv.DictReader(open(once / "curves.csv")))
    # --resume with nothing to resume trains from the start (the earlier weights move to previous/)
    with caplog.at_level(logging.INFO):
        run_workflow("training", files, **{**small, "epochs": 1}, **paper, runs_dir=str(runs), resume=True)
    assert "no resume.pt" in caplog.text and (run / "models" / PREVIOUS_DIR).is_dir()


def test_a_resume_file_of_other_settings_is_refused_naming_it(tmp_path):
    from ignite.engine import Engine

    from calibmonai.run_files import resumable_training

    models = tmp_path / "models"
    models.mkdir()
    net = torch.nn.Linear(2, 2)
    trainer = Engine(lambda e, b: None)
    trainer.network, trainer.optimizer = net, torch.optim.SGD(net.parameters(), lr=0.1)
    (models / "resume.pt").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="resume.pt cannot be read as a training state .*move it away"):
        resumable_training(models, trainer, None, resume=True)
    trainer.state.max_epochs = 5
    other = torch.nn.Linear(3, 2)
    torch.save({"network": other.state_dict(), "optimizer": torch.optim.SGD(other.parameters(), lr=0.1).state_dict(),
                "lr_schedulers": [], "trainer": {"epoch": 1, "iteration": 2}, "random": {}}, models / "resume.pt")  # fmt: skip
    with pytest.raises(ValueError, match="resume.pt does not fit this run .*size mismatch.*settings of the stopped training"):
        resumable_training(models, trainer, None, resume=True)
    torch.save({"network": net.state_dict(), "optimizer": trainer.optimizer.state_dict(), "lr_schedulers": [],
                "trainer": {"epoch": 3, "iteration": 6}, "random": {}}, models / "resume.pt")  # fmt: skip
    trainer.state.max_epochs = 3
    with pytest.raises(ValueError, match="stopped after epoch 3, and this run's --epochs is 3: give more epochs than 3"):
        resumable_training(models, trainer, None, resume=True)
    with pytest.raises(ValueError, match="--resume expects a boolean"):
        resumable_training(models, trainer, None, resume="maybe")


def _toy_trainer(max_epochs=4, lr=0.1, step_size=2, optimizer=torch.optim.SGD, calls=None):
    """An ignite trainer as the bundles' (network, optimizer, an LrScheduleHandler with StepLR) on 3 batches."""
    from ignite.engine import Engine
    from monai.handlers import LrScheduleHandler

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = optimizer(net.parameters(), lr=lr)

    def step(engine, batch):
        if calls is not None:
            calls.append(engine.state.epoch)
        opt.zero_grad()
        loss = net(batch).pow(2).mean() + 0.01 * torch.rand(())
        loss.backward()
        opt.step()
        return loss.item()

    trainer = Engine(step)
    trainer.network, trainer.optimizer = net, opt
    LrScheduleHandler(torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=0.5), print_lr=False).attach(trainer)
    trainer.state.max_epochs = max_epochs
    trainer.data = [torch.ones(2, 3) * k for k in range(3)]
    return trainer


def _run_toy(trainer, stop_at_epoch=None):
    from ignite.engine import Events

    if stop_at_epoch:
        def stop(_engine):
            raise KeyboardInterrupt

        trainer.add_event_handler(Events.EPOCH_STARTED(once=stop_at_epoch), stop)
        with pytest.raises(KeyboardInterrupt):
            trainer.run(trainer.data, max_epochs=trainer.state.max_epochs)
    else:
        trainer.run(trainer.data, max_epochs=trainer.state.max_epochs)


def test_resume_refuses_other_settings_and_completes_a_finished_one(tmp_path):
    from ignite.engine import Events

    from calibmonai.run_files import resumable_training

    models = tmp_path / "models"
    reference = _toy_trainer()
    resumable_training(models, reference, None, resume=False)
    _run_toy(reference)
    assert not (models / "resume.pt").exists()
    stopped = _toy_trainer()
    resumable_training(models, stopped, None, resume=True)
    _run_toy(stopped, stop_at_epoch=3)
    assert torch.load(models / "resume.pt", weights_only=True)["trainer"]["epoch"] == 2
    # other settings than the stopped run's are refused, each named, before anything is loaded
    for kwargs, named in (({"lr": 0.01}, "initial_lr: 0.1 -> 0.01"), ({"step_size": 3}, "step_size: 2 -> 3"),
                          ({"optimizer": torch.optim.Adam}, "optimizer: SGD -> Adam")):  # fmt: skip
        with pytest.raises(ValueError, match=f"saved by a training with other settings: .*{re.escape(named)}.*--lr_scheduler#step_size"):
            resumable_training(models, _toy_trainer(**kwargs), None, resume=True)
    # the same settings continue to the uninterrupted run's weights (random state restored), LR schedule included
    resumed = _toy_trainer()
    assert resumable_training(models, resumed, None, resume=True) == 2
    _run_toy(resumed)
    assert all(torch.equal(a, b) for a, b in zip(resumed.network.state_dict().values(), reference.network.state_dict().values()))
    assert resumed.optimizer.param_groups[0]["lr"] == reference.optimizer.param_groups[0]["lr"] == 0.1 * 0.5**2
    # a training that ran all its epochs but ended before its last handlers: completed without training
    dying = _toy_trainer(max_epochs=3)
    resumable_training(models, dying, None, resume=False)

    def die(engine):
        if engine.state.epoch == 3:
            raise KeyboardInterrupt

    dying.add_event_handler(Events.EPOCH_COMPLETED, die)  # after the state's save
    with pytest.raises(KeyboardInterrupt):
        dying.run(dying.data, max_epochs=3)
    calls, ended = [], []
    finishing = _toy_trainer(max_epochs=3, calls=calls)
    finishing.add_event_handler(Events.COMPLETED, lambda e: ended.append(True))
    assert resumable_training(models, finishing, None, resume=True) == 3
    finishing.run()
    assert calls == [] and ended == [True] and not (models / "resume.pt").exists()
    assert all(torch.equal(a, b) for a, b in zip(finishing.network.state_dict().values(), dying.network.state_dict().values()))


def test_resume_state_is_process_count_free_and_stale_temporaries_go(tmp_path):
    from calibmonai.run_files import _plain, remove_stale_temporaries

    class DistributedDataParallel(torch.nn.Module):  # the wrapper's name is what counts
        def __init__(self, module):
            super().__init__()
            self.module = module

    inner = torch.nn.Linear(2, 2)
    wrapped = DistributedDataParallel(inner)
    assert list(wrapped.state_dict()) == ["module.weight", "module.bias"]
    assert _plain(wrapped) is inner and _plain(inner) is inner and list(_plain(wrapped).state_dict()) == ["weight", "bias"]
    # a write cut by SIGKILL/SIGTERM left its temporary: removed when its process is gone, kept while it runs
    import subprocess
    import sys as _sys

    dead = subprocess.run([_sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (tmp_path / f".tmp-{dead}-resume.pt").write_bytes(b"half")
    (tmp_path / f".tmp-{os.getpid()}-resume.pt").write_bytes(b"being written")
    (tmp_path / "model.pt").write_bytes(b"w")
    assert remove_stale_temporaries(tmp_path) == [tmp_path / f".tmp-{dead}-resume.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".tmp-{os.getpid()}-resume.pt", "model.pt"]


def test_weights_of_a_stopped_training_are_used_with_a_warning(tmp_path, caplog):
    from calibmonai.prediction import load_checkpoint

    net = torch.nn.Linear(2, 2)
    (tmp_path / "models").mkdir()
    torch.save(net.state_dict(), tmp_path / "models" / "model.pt")
    with caplog.at_level(logging.INFO):
        load_checkpoint(net, str(tmp_path / "models" / "model.pt"), "cpu")
    assert "stopped before its last epoch" not in caplog.text
    (tmp_path / "models" / "resume.pt").write_bytes(b"state")
    with caplog.at_level(logging.INFO):
        load_checkpoint(net, str(tmp_path / "models" / "model.pt"), "cpu")
    assert "WARNING: the training of this run has not completed (resume.pt beside model.pt: it stopped" in caplog.text
    assert "--resume true" in caplog.text
    # weights an earlier training left in previous/: said, without advice that cannot be followed there
    from calibmonai.prediction import stopped_training_warning

    kept = tmp_path / "models" / "previous" / "20260101-000000"
    kept.mkdir(parents=True)
    (kept / "resume.pt").write_bytes(b"state")
    warning = stopped_training_warning(str(kept / "model.pt"))
    assert "had stopped before its last epoch" in warning and "--resume" not in warning


def test_resumed_curves_hold_the_stopped_run_s_rows_only(tmp_path):
    """An earlier training's curves.csv is not kept by a resumed one stopped before its first validation."""
    import csv

    from calibmonai.handlers.curves import CURVE_COLUMNS, ValidationCurveLogger

    (tmp_path / "curves.csv").write_text(",".join(CURVE_COLUMNS) + "\n" + "\n".join(f"{e}," + ",".join(["0.5"] * 9) for e in (1, 2, 3)) + "\n")
    logger = ValidationCurveLogger(str(tmp_path))
    logger.restore([])  # the stopped run had not validated yet
    assert (tmp_path / "curves.csv").read_text().strip() == ",".join(CURVE_COLUMNS)
    row = {k: "0.100000" for k in CURVE_COLUMNS} | {"epoch": 4, "iteration": 1}
    logger.restore([row])
    assert list(csv.DictReader(open(tmp_path / "curves.csv"))) == [{k: str(v) for k, v in row.items()}]
    assert logger.rows == [row] and logger._started  # the next validation appends


def test_resume_with_another_number_of_batches_per_epoch_runs_whole_epochs(tmp_path):
    """torchrun's share of the data, another batch size: the epoch count decides, not the saved iteration count."""
    from calibmonai.run_files import resumable_training

    models = tmp_path / "models"
    stopped = _toy_trainer(max_epochs=4)
    stopped.data = stopped.data * 2  # 6 batches per epoch
    resumable_training(models, stopped, None, resume=False)
    _run_toy(stopped, stop_at_epoch=3)
    for batches in (3, 12):
        calls = []
        resumed = _toy_trainer(max_epochs=4, calls=calls)
        resumed.data = (resumed.data * 4)[:batches]
        resumed.state.epoch_length = batches  # as MONAI's Workflow sets it
        shutil.copy(models / "resume.pt", tmp_path / "keep.pt")
        resumable_training(models, resumed, None, resume=True)
        _run_toy(resumed)
        assert calls == [3] * batches + [4] * batches  # epochs 3 and 4, whole, nothing run again
        shutil.copy(tmp_path / "keep.pt", models / "resume.pt")


def test_resume_compares_schedule_settings_not_their_progress():
    from calibmonai.run_files import _schedule_settings, _setting_differences

    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=2)
    saved = plateau.state_dict()
    for _ in range(3):
        plateau.step(1.0)  # progress: num_bad_epochs, best, last_epoch move
    assert _setting_differences(saved, plateau.state_dict(), only=_schedule_settings(plateau)) == []
    assert _setting_differences({"x": float("inf")}, {"x": float("inf")}) == []  # equal infinities are equal
    cosine = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=5)
    before = cosine.state_dict()
    cosine.step()
    assert _setting_differences(before, cosine.state_dict(), only=_schedule_settings(cosine)) == []
    other = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=7)
    assert _setting_differences(before, other.state_dict(), only=_schedule_settings(other)) == ["T_0: 5 -> 7"]
