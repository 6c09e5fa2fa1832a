"""calibmonai study: a study's input is checked when it is loaded or planned (override keys against each bundle's
config, every grid point against its loss, YAML syntax and value types, explicit empty methods), ``study run``
exits non-zero when nothing could run and 130 on Ctrl-C, and a study folder holding another study is not replaced
or reported for the wrong study."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from calibmonai.study.__main__ import main
from calibmonai.study.spec import load_study
from test_study import TINY  # the tiny study file and its helper, once for both study test modules
from test_study import tiny_spec as tiny


def write(path, raw):
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def cli(argv, capsys):
    """Run ``calibmonai study ...``: (exit status, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code, capsys.readouterr().err


# ---------------------------------------------------------------- overrides against the bundle's config
def test_override_keys_checked_against_the_bundle_config(tmp_path):
    load_study(tiny(tmp_path))  # network_def#channels, validate#inferer#roi_size, ...: keys of the config
    with pytest.raises(ValueError, match=r"overrides sets 'batch_sise', but 'batch_sise' is not a key of bundle mni_tissue_seg2d's config.*did you mean 'batch_size'"):
        load_study(tiny(tmp_path, overrides={**TINY["overrides"], "batch_sise": 4}))
    raw = tiny(tmp_path)
    raw["bundles"]["mni_tissue_seg2d"]["overrides"]["netwrk_def#channels"] = [4, 8]
    with pytest.raises(ValueError, match=r"bundles\.mni_tissue_seg2d\.overrides sets 'netwrk_def#channels'.*did you mean 'network_def'"):
        load_study(raw)
    with pytest.raises(ValueError, match=r"backbone_overrides\.attention_unet sets 'lrr'"):
        load_study(tiny(tmp_path, backbones=["unet", "attention_unet"], backbone_overrides={"attention_unet": {"lrr": 0.1}}))
    with pytest.raises(ValueError, match="backbone_overrides names 'resunet', not a backbone of the study"):
        load_study(tiny(tmp_path, backbone_overrides={"resunet": {"lr": 0.1}}))


def test_multi_gpu_training_needs_the_bundles_multi_gpu_config(tmp_path):
    load_study(tiny(tmp_path, resources={"train": {"gpus": 2, "cpus": 1, "memory_gb": 1}}))  # the embedded bundle has one
    raw = tiny(tmp_path, resources={"train": {"gpus": 2, "cpus": 1, "memory_gb": 1}})
    raw["bundles"] = {"acdc_seg2d": {}}
    with pytest.raises(ValueError, match=r"resources\.train\.gpus is 2, .*bundle acdc_seg2d has none \(bundles with one: mni_tissue_seg2d\)"):
        load_study(raw)
    raw["resources"]["train"]["gpus"] = 1
    load_study(raw)


# ---------------------------------------------------------------- grid points against the loss
@pytest.mark.parametrize(
    "grid, message",
    [
        ({"margn": [5]}, r"methods\.mbls: 'margn' is not a parameter of method 'mbls' \(did you mean 'margin'\?\); its parameters: margin, alpha, penalty"),
        ({"margin": [5, -5]}, r"methods\.mbls: method 'mbls' \(bundle mni_tissue_seg2d\) refuses margin=-5\.0: margin and alpha must be >= 0.*Its parameters: margin, alpha"),
        ({"margin": ["five"]}, r"methods\.mbls: mbls\.margin must be a number \(default 10\.0\), got 'five'"),
    ],
)  # fmt: skip
def test_every_grid_point_builds_its_loss(tmp_path, grid, message):
    with pytest.raises(ValueError, match=message):
        load_study(tiny(tmp_path, methods={"ce": {}, "mbls": grid}))


def test_a_bundle_grid_is_checked_and_named(tmp_path):
    raw = tiny(tmp_path)
    raw["bundles"]["mni_tissue_seg2d"]["methods"] = {"meep_ce_kl": {"lam": [-1.0]}}
    with pytest.raises(ValueError, match=r"bundles\.mni_tissue_seg2d\.methods\.meep_ce_kl: method 'meep_ce_kl'.*lam=-1\.0"):
        load_study(raw)


# ---------------------------------------------------------------- YAML and value types
def test_yaml_syntax_error_is_one_line_with_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbundles: [mni_tissue_seg2d\nmethods: {ce: {}}\n")
    with pytest.raises(ValueError) as e:
        load_study(bad)
    assert str(e.value).startswith(f"{bad}: not valid YAML: line 3, column ") and "\n" not in str(e.value)
    code, err = cli(["plan", str(bad)], capsys)
    assert code == 2 and err.count("\n") == 1 and "<unicode string>" not in err and "not valid YAML: line 3" in err


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"seeds": 3}, r"'seeds' must be a list of whole numbers >= 0, such as seeds: \[3\]"),
        ({"seeds": [0, -1]}, r"'seeds' must be a list of whole numbers >= 0, got -1"),
        ({"folds": "all"}, r"'folds' must be a list"),
        ({"epochs": "ten"}, r"'epochs' must be a whole number >= 1, got 'ten'"),
        ({"epochs": 1.5}, r"'epochs' must be a whole number >= 1, got 1\.5"),
        ({"resources": {"train": {"gpu": 1}}}, r"resources\.train has the unknown key 'gpu' \(did you mean 'gpus'\?\); its keys: gpus, cpus, memory_gb"),
        ({"resources": {"train": {"cpus": "four"}}}, r"resources\.train\.cpus must be a whole number >= 1, got 'four'"),
        ({"noise_sigmas": ["a"]}, r"noise_sigmas must be a list of numbers"),
        ({"overrides": [1, 2]}, r"'overrides' must be a mapping"),
        ({"methods": None}, r"'methods' is empty; .*remove the key to run the papers' full grid"),
        ({"methods": {}}, r"'methods' is empty; .*remove the key to run the papers' full grid"),
    ],
)  # fmt: skip
def test_wrong_value_types_name_the_key(tmp_path, changes, message):
    path = write(tmp_path / "s.yaml", tiny(tmp_path / "d", **changes))
    with pytest.raises(ValueError, match=rf"^{path}: {message}"):
        load_study(path)


def test_no_methods_key_is_the_papers_grid(tmp_path):
    raw = tiny(tmp_path)
    del raw["methods"]
    assert len(load_study(raw).methods) == 13


# ---------------------------------------------------------------- study run with nothing runnable
@pytest.mark.parametrize("bundle, why", [("no_such_bundle", "bundle 'no_such_bundle' not found"), ("mni_tissue_seg2d", "does not exist")])
def test_run_fails_when_every_task_is_blocked(tmp_path, capsys, bundle, why):
    raw = tiny(tmp_path / "missing")
    conf = raw["bundles"].pop("mni_tissue_seg2d")
    conf.pop("prepare")  # a missing dataset folder the study cannot prepare
    raw["bundles"][bundle] = conf
    code, err = cli(["run", str(write(tmp_path / "s.yaml", raw)), "--out", str(tmp_path / "out"), "--workers", "0"], capsys)
    assert code == 2 and "nothing could run, 22 task(s) remain blocked" in err and why in err


# ---------------------------------------------------------------- a study folder and its study
def test_plan_refuses_a_folder_of_another_study(tmp_path, capsys):
    ok = write(tmp_path / "ok.yaml", tiny(tmp_path / "d"))
    other = write(tmp_path / "other.yaml", tiny(tmp_path / "d", name="other", epochs=2))
    out = tmp_path / "study"
    main(["plan", str(ok), "--out", str(out), "--verbose", "false"])
    before = (out / "study.yaml").read_text()
    code, err = cli(["plan", str(other), "--out", str(out), "--verbose", "false"], capsys)
    assert code == 2 and f"{out}: holds the study 'tiny' (from {ok.resolve()}), not {other.resolve()} (study 'other')" in err and "--replace true" in err
    assert (out / "study.yaml").read_text() == before  # nothing replaced
    write(ok, tiny(tmp_path / "d", epochs=3))  # the same study file edited and planned again: as before
    main(["plan", str(ok), "--out", str(out), "--verbose", "false"])
    assert yaml.safe_load((out / "study.yaml").read_text())["epochs"] == 3
    main(["plan", str(other), "--out", str(out), "--verbose", "false", "--replace", "true"])
    assert yaml.safe_load((out / "study.yaml").read_text())["name"] == "other"
    main(["plan", str(out), "--verbose", "false"])  # the folder itself: its own study, source kept
    assert (out / "study.yaml").read_text().startswith(f"# planned from the study file: {other.resolve()}\n")


def test_report_uses_the_given_study_or_refuses(tmp_path, capsys):
    ok = write(tmp_path / "ok.yaml", tiny(tmp_path / "d"))
    other = write(tmp_path / "other.yaml", tiny(tmp_path / "d", name="other"))
    out = tmp_path / "study"
    main(["plan", str(ok), "--out", str(out), "--verbose", "false"])
    code, err = cli(["report", str(other), "--out", str(out)], capsys)
    assert code == 2 and "holds the study 'tiny'" in err and f"calibmonai study report {out}" in err and not (out / "report").exists()
    code, err = cli(["report", str(ok), "--out", str(tmp_path / "new")], capsys)
    assert code == 2 and f"{tmp_path / 'new'}: no study has been planned or run in this folder" in err and "study run" in err
    assert "study file" not in err


# ---------------------------------------------------------------- Ctrl-C
def test_keyboard_interrupt_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import calibmonai.study.executors as ex

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ex, "run_study", interrupted)
    code, err = cli(["run", str(write(tmp_path / "s.yaml", tiny(tmp_path / "d"))), "--out", str(tmp_path / "out")], capsys)
    assert code == 130 and err == "calibmonai study: interrupted: finished tasks are kept; run the same command again to resume.\n"


@pytest.mark.slow
def test_ctrl_c_of_a_pool_run_keeps_finished_tasks(tmp_path):
    """SIGINT to the whole process group (a terminal's Ctrl-C) while a pool worker trains: one line, status 130,
    no traceback of the driver or the workers, no worker left, finished tasks kept and not redone."""
    study = write(tmp_path / "s.yaml", tiny(tmp_path / "d", methods={"ce": {}, "mbls": {"margin": [5, 10]}}, posthoc=[], noise_sigmas=[0.0]))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "calibmonai.study", "run", str(study), "--out", str(out), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and not list((out / "state").rglob("*.json")) and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    printed = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, printed
    assert "Traceback" not in printed and "KeyboardInterrupt" not in printed, printed
    # the line is the driver's last word (the pool's resource tracker may still warn about semaphores after it)
    assert "calibmonai study: interrupted: finished tasks are kept; run the same command again to resume." in printed, printed
    for _ in range(100):  # no worker left behind (the pool's resource tracker leaves when the driver's pipe closes)
        left = [line for line in subprocess.run(["ps", "-o", "stat=,args=", "-g", str(proc.pid)], capture_output=True, text=True).stdout.splitlines() if not line.startswith("Z")]
        if not left:
            break
        time.sleep(0.1)
    assert not left, left
    kept = sorted(p for p in (out / "state").rglob("*.json") if not p.name.endswith(".failed.json"))
    assert kept and all(p.stat().st_size > 0 for p in kept)
    from calibmonai.study.executors import run_study

    again = run_study(load_study(study), out=out, workers=0, max_tasks=1)
    assert again["ran"] and not set(again["ran"]) & {str(p.relative_to(out / "state"))[: -len(".json")] for p in kept}
