"""The main job (calibmonai demo) end to end on a tiny cohort, and the command line."""

import csv
import os
import subprocess
import sys

import pytest

from calibmonai.demo import comparison_table, run_demo


def test_demo_end_to_end(tmp_path, capsys):
    results = run_demo(out=str(tmp_path / "results"), data=str(tmp_path / "data"), runs=str(tmp_path / "runs"),
                       methods="ce,mbls", epochs=1, subjects=6, profile="none")  # fmt: skip
    assert list(results) == ["ce", "mbls"]
    out = tmp_path / "results"
    for f in ("comparison.md", "comparison.csv", "ce_reliability.png", "mbls_slice.png", "ce_reference_reliability.png"):
        assert (out / f).stat().st_size > 0, f
    rows = list(csv.DictReader(open(out / "comparison.csv")))
    assert [r["method"] for r in rows] == ["ce", "mbls"]
    for r in rows:
        assert 0 <= float(r["ece"]) <= 1 and 0 <= float(r["dsc_mean"]) <= 1
    printed = capsys.readouterr().out
    assert "| ce |" in printed and "| mbls |" in printed and "total" in printed
    # how to use each run afterwards: the infer command that finds it (the flags tested with infer in test_profiles)
    assert f"  mbls: calibmonai infer --input scans/ --output out/ --method mbls --runs_dir {tmp_path / 'runs'}\n" in printed
    md = (out / "comparison.md").read_text()
    assert md.count("\n| ") == 3  # header + two methods


def test_comparison_table_formats_nan():
    table = comparison_table({"x": {"dsc_mean": 0.5, "dsc_mean_std": 0.1}})
    assert "| x | 0.5000 ± 0.1000 | nan |" in table


def test_cli_prepare_and_methods(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-m", "calibmonai.cli", "prepare", "--out", str(tmp_path / "d"), "--subjects", "3"],
                       capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "d" / "datalist.json").is_file() and "subject 3/3" in r.stdout
    r = subprocess.run([sys.executable, "-m", "calibmonai.cli", "methods"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "mbls: margin-based label smoothing" in r.stdout


@pytest.mark.parametrize("seed", [None, 7])
def test_demo_seed_reaches_the_bundle(tmp_path, monkeypatch, seed):
    import calibmonai.data
    import calibmonai.demo as demo

    seen = []

    class Stop(Exception):
        pass

    def fake_run_workflow(run_id, files, **overrides):
        seen.append((run_id, overrides))
        raise Stop

    monkeypatch.setattr(calibmonai.data, "prepare_mni_tissue", lambda *a, **k: None)
    monkeypatch.setattr(demo, "run_workflow", fake_run_workflow)
    with pytest.raises(Stop):
        demo.run_demo(out=str(tmp_path / "out"), data=str(tmp_path / "d"), runs=str(tmp_path / "r"), methods="ce", epochs=1, seed=seed)
    ((run_id, overrides),) = seen
    assert run_id == "training" and overrides["epochs"] == 1
    assert overrides.get("seed") == seed and (seed is not None or "seed" not in overrides)


@pytest.mark.parametrize(
    "flags, epochs, methods, runs",
    [
        # the default: the over-confidence regime cut to 400 of its 600 epochs, three methods, runs of their own
        ({}, 400, ["ce", "mbls:margin=5", "meep_ce_kl"], "runs/400_epochs"),
        ({"full": "true"}, 600, ["ce", "mbls:margin=5", "mbls:margin=8", "mbls:margin=10", "meep_ce_kl"], "runs"),
        # runs of another length than the task's own schedule never overwrite its runs
        ({"epochs": 600}, 600, ["ce", "mbls:margin=5", "meep_ce_kl"], "runs"),
        ({"full": True, "epochs": 400}, 400, ["ce", "mbls:margin=5", "mbls:margin=8", "mbls:margin=10", "meep_ce_kl"], "runs/400_epochs"),
        ({"profile": "none"}, 30, ["ce", "mbls", "meep_ce_kl"], "runs"),
        ({"profile": "none", "epochs": 10}, 10, ["ce", "mbls", "meep_ce_kl"], "runs/10_epochs"),
        ({"epochs": 7, "methods": "ce", "runs": "elsewhere"}, 7, ["ce"], "elsewhere"),
    ],
)  # fmt: skip
def test_demo_defaults(tmp_path, monkeypatch, flags, epochs, methods, runs):
    import calibmonai.data
    import calibmonai.demo as demo

    trained, prepared = [], []

    class Stop(Exception):
        pass

    def fake_run_workflow(run_id, files, **overrides):
        trained.append((files, overrides))
        raise Stop

    monkeypatch.setattr(calibmonai.data, "prepare_mni_tissue", lambda *a, **k: prepared.append((a, k)))
    monkeypatch.setattr(demo, "run_workflow", fake_run_workflow)
    seen_methods, check = [], demo._checked_method
    monkeypatch.setattr(demo, "_checked_method", lambda spec, *a: (seen_methods.append(spec), check(spec, *a))[1])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Stop):
        demo.run_demo(out=str(tmp_path / "out"), **flags)
    ((files, overrides),) = trained
    assert overrides["epochs"] == epochs and overrides["runs_dir"] == runs
    assert seen_methods == methods
    profile = flags.get("profile", "paper")
    assert any(f.endswith("profiles/paper.yaml") for f in files) == (profile == "paper")
    ((args, kwargs),) = prepared
    assert (kwargs.get("num_subjects"), str(args[0])) == ((8, "data/mni_tissue_paper") if profile == "paper" else (24, "data/mni_tissue"))
