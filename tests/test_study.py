"""calibmonai study: study files, the task plan, rankings and the Wilcoxon test against hand-computed cases, the
report's tables against numpy references, and the tiny study end to end (plan, interrupted run, resume through the
process pool, report; the same study through Ray and through submitit's local executor)."""

import copy
import csv
import json
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from calibmonai.study.executors import LocalExecutor, dependants, run_study
from calibmonai.study.plan import Task, build_plan, estimate_gpu_hours, marker_path, read_marker, task_status
from calibmonai.study.report import (
    backbone_table, collect_tidy, gap_fractions, meep_table, paired_table, read_tidy, table1, table2, table4, write_report,
)  # fmt: skip
from calibmonai.study.spec import PAPER_METHODS, Resources, load_study
from calibmonai.study.stats import mean_case_rank, paired_wilcoxon, rank_values, sum_rank
from calibmonai.study.tasks import GAP_EDGES, AddRelativeGaussianNoise, logit_gap_histograms, training_argv

REPO = Path(__file__).resolve().parent.parent
TINY = yaml.safe_load((REPO / "studies" / "tiny.yaml").read_text())


def tiny_spec(data_dir, **changes):
    raw = copy.deepcopy(TINY)
    raw["bundles"]["mni_tissue_seg2d"]["dataset_dir"] = str(data_dir)
    raw.update(changes)
    return raw


# ---------------------------------------------------------------- study files and the plan
def test_study_file_checks(tmp_path):
    spec = load_study(tiny_spec(tmp_path / "d"))
    assert spec.methods["mbls"] == {"margin": [5.0, 10.0], "alpha": [0.1]}  # integers of a float default become floats
    assert spec.noise_sigmas == [0.0, 0.05] and spec.posthoc == ["ts", "lts"] and spec.resources["train"] == Resources(1, 1, 2)
    with pytest.raises(ValueError, match="unknown method 'mbls_typo'.*available methods"):
        load_study(tiny_spec(tmp_path, methods={"mbls_typo": {}}))
    with pytest.raises(ValueError, match=r"unknown keys \['epoch'\]"):
        load_study({**tiny_spec(tmp_path), "epoch": 3})
    with pytest.raises(ValueError, match="unknown calibrator 'tss'"):
        load_study(tiny_spec(tmp_path, posthoc=["tss"]))
    with pytest.raises(ValueError, match="posthoc_on must be"):
        load_study(tiny_spec(tmp_path, posthoc_on="some"))
    with pytest.raises(ValueError, match="unknown backbone 'vnet'"):
        load_study(tiny_spec(tmp_path, backbones=["vnet"]))
    with pytest.raises(ValueError, match="noise_sigmas"):
        load_study(tiny_spec(tmp_path, noise_sigmas=[-0.1]))
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load_study(tmp_path / "nowhere.yaml")


def test_paper_grid_and_run_counts():
    assert PAPER_METHODS["focal"] == {"gamma": [1.0, 2.0, 3.0]}
    assert PAPER_METHODS["ecp"] == {"beta": [0.1, 0.2, 0.3]} and PAPER_METHODS["ls"] == {"alpha": [0.1, 0.2, 0.3]}
    assert PAPER_METHODS["mbls"] == PAPER_METHODS["mbls_l2"] == {"margin": [5.0, 8.0, 10.0], "alpha": [0.1]}
    assert {m for m in PAPER_METHODS if m.startswith("meep")} == {"meep_ce_entropy", "meep_ce_kl", "meep_dice_entropy", "meep_dice_kl"}
    assert {"ce", "ce_dice", "svls", "nacl"} <= set(PAPER_METHODS)
    spec = load_study(REPO / "studies" / "papers.yaml")
    tasks = build_plan(spec, "/tmp/papers_study")
    est = estimate_gpu_hours(spec, tasks)
    # per backbone and seed: 1 + 1 + 3 + 3 + 3 + 1 + 1 + 3 + 3 (CE, CE+Dice, focal, ECP, LS, SVLS, NACL, MbLS L1/L2)
    # + the bundle's MEEP lambdas x 4 variants; the other backbones run CE and MbLS (1 + 3)
    for b in spec.bundles:
        lams = len(spec.methods_for(b)["meep_ce_kl"]["lam"])
        per_seed = 19 + 4 * lams + (len(spec.backbones) - 1) * 4
        assert est[b.name]["training_runs"] == per_seed * len(spec.seeds), b.name
        assert est[b.name]["gpu_hours"] > 0
    sel = [t for t in tasks if t.kind == "select" and t.method == "mbls" and t.backbone == "unet" and t.bundle == "acdc_seg2d"][0]
    assert len(sel.deps) == 3 * len(spec.seeds)  # every margin of every seed


def test_plan_ids_dependencies_and_folders(tmp_path):
    spec = load_study(tiny_spec(tmp_path / "d", seeds=[0, 1], posthoc_on="all"))
    tasks = {t.id: t for t in build_plan(spec, tmp_path / "s")}
    train = tasks["train/mni_tissue_seg2d/unet/seed1/mbls_alpha0.1_margin5.0"]
    assert train.params["run_dir"] == str((tmp_path / "s" / "runs" / "mni_tissue_seg2d" / "unet" / "seed1" / "mbls_alpha0.1_margin5.0").resolve())
    ov = train.params["overrides"]
    assert ov["seed"] == 1 and ov["epochs"] == 1 and ov["loss_kwargs"] == {"margin": 5.0, "alpha": 0.1} and ov["network_def#channels"] == [4, 8, 16, 32]
    assert ov["image_size"] == [48, 56] and ov["dataset_dir"] == str(tmp_path / "d")
    assert tasks["evaluate/mni_tissue_seg2d/unet/seed1/mbls_alpha0.1_margin5.0"].deps == [train.id]
    assert tasks["posthoc/mni_tissue_seg2d/unet/seed1/mbls_alpha0.1_margin5.0"].deps == [train.id]
    sel = tasks["select/mni_tissue_seg2d/unet/mbls"]
    assert sorted(sel.deps) == sorted(f"train/mni_tissue_seg2d/unet/seed{s}/mbls_alpha0.1_margin{m}" for s in (0, 1) for m in ("5.0", "10.0"))
    assert tasks["noise/mni_tissue_seg2d/unet/seed0/mbls"].deps == [sel.id] and tasks["noise/mni_tissue_seg2d/unet/seed0/mbls"].params["sigmas"] == [0.05]
    assert "train/mni_tissue_seg2d/unet/seed0/ce" in tasks and tasks["select/mni_tissue_seg2d/unet/ce"].params["param"] is None
    assert dependants(list(tasks.values()), [train.id]) == {
        train.id, "evaluate/mni_tissue_seg2d/unet/seed1/mbls_alpha0.1_margin5.0", "posthoc/mni_tissue_seg2d/unet/seed1/mbls_alpha0.1_margin5.0", sel.id,
        *(f"{k}/mni_tissue_seg2d/unet/seed{s}/mbls" for k in ("noise", "analysis") for s in (0, 1)),
    }  # fmt: skip
    status = task_status(list(tasks.values()), tmp_path / "s")
    assert status[train.id] == "ready" and status[sel.id] == "waiting"
    blocked = load_study({**tiny_spec(tmp_path / "d"), "bundles": {"no_such_bundle": {}}})
    assert set(task_status(build_plan(blocked, tmp_path / "b"), tmp_path / "b").values()) == {"blocked"}


def test_a_grid_value_given_twice_is_refused_naming_the_run(tmp_path):
    spec = load_study(tiny_spec(tmp_path / "d", methods={"mbls": {"margin": [5, 5.0, 8], "alpha": [0.1]}}))
    with pytest.raises(ValueError, match=r"the grid of 'mbls' names the run mbls_alpha0\.1_margin5\.0 twice .*list each value once"):
        build_plan(spec, tmp_path / "s")


def test_backbone_methods_and_local_pool_size(tmp_path):
    spec = load_study(tiny_spec(tmp_path, backbones=["unet", "attention_unet"], backbone_methods=["ce", "mbls"]))
    tasks = build_plan(spec, tmp_path / "s")
    assert {t.method for t in tasks if t.backbone == "attention_unet"} == {"ce", "mbls"}
    assert {t.method for t in tasks if t.backbone == "unet"} == {"ce", "mbls", "meep_ce_kl"}
    two = [Task("a", "train", "b", "unet", "ce", resources=Resources(gpus=2, cpus=1, memory_gb=0.1))]
    assert LocalExecutor(gpus=4).pool_size(two) == (2, ["0,1", "2,3"])
    one = [Task("a", "train", "b", "unet", "ce", resources=Resources(gpus=1, cpus=1, memory_gb=0.1))]
    assert LocalExecutor(gpus=3).pool_size(one) == (3, ["0", "1", "2"])
    assert LocalExecutor(gpus=0).pool_size(one) == (os.cpu_count(), [])
    with pytest.raises(ValueError, match="needs 2 GPUs, this machine has 1"):
        LocalExecutor(gpus=1).pool_size(two)
    argv = training_argv(["train.yaml", "methods/ce.yaml", "multi_gpu_train.yaml"], 2)
    assert argv[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] and argv[-1] == repr(["train.yaml", "methods/ce.yaml", "multi_gpu_train.yaml"])


# ---------------------------------------------------------------- ranking and Wilcoxon, by hand
def test_rankings_hand_computed():
    np.testing.assert_array_equal(rank_values([0.9, 0.8, 0.9, math.nan], higher=True), [1.5, 3, 1.5, 4])
    np.testing.assert_array_equal(rank_values([0.3, 0.1, math.nan, math.nan], higher=False), [2, 1, 3.5, 3.5])
    # three methods, two cases; DSC (higher better) and ECE (lower better), dyadic values so the means tie exactly
    per_case = {
        "a": {"dsc_mean": [0.75, 0.25], "ece": [0.125, 0.375]},
        "b": {"dsc_mean": [0.625, 0.375], "ece": [0.25, 0.125]},
        "c": {"dsc_mean": [0.5, 0.5], "ece": [0.375, 0.25]},
    }
    # case ranks: DSC case 1 a1 b2 c3, case 2 c1 b2 a3; ECE case 1 a1 b2 c3, case 2 b1 c2 a3
    assert mean_case_rank(per_case, ["dsc_mean", "ece"]) == {"a": 2.0, "b": 1.75, "c": 2.25}
    # means: DSC 0.5 for all three (ranks 2, 2, 2); ECE a 0.25, b 0.1875, c 0.3125 (ranks 2, 1, 3)
    means = {m: {k: float(np.mean(v)) for k, v in d.items()} for m, d in per_case.items()}
    assert sum_rank(means, ["dsc_mean", "ece"]) == {"a": 4.0, "b": 3.0, "c": 5.0}
    assert sum_rank({"a": {"asd_mean": 1.0}, "b": {"asd_mean": math.nan}}, ["asd_mean"]) == {"a": 1.0, "b": 2.0}
    with pytest.raises(ValueError, match="has no values for metric"):
        sum_rank({"a": {"ece": 0.1}}, ["cece"])
    with pytest.raises(ValueError, match="same cases"):
        mean_case_rank({"a": {"ece": [0.1]}, "b": {"ece": [0.1, 0.2]}}, ["ece"])


def test_wilcoxon_hand_computed():
    # n = 5 differences, exact null distribution of W+ over the 2^5 = 32 sign patterns
    r = paired_wilcoxon([2, 3, 4, 5, 6], [1, 1, 1, 1, 1])  # all positive: T = 0, p = 2 / 32
    assert r["n"] == 5 and r["statistic"] == 0 and r["p_value"] == pytest.approx(0.0625) and r["mean_diff"] == 3 and r["median_diff"] == 3
    r = paired_wilcoxon([-1, 2, 3, 4, 5], [0, 0, 0, 0, 0])  # W- = 1: P(W <= 1) = 2/32, two-sided 0.125
    assert r["statistic"] == 1 and r["p_value"] == pytest.approx(0.125)
    r = paired_wilcoxon([1, -2, 3, -4, 5], [0] * 5)  # W+ = 9, W- = 6; 13 of 32 sign patterns have W <= 6
    assert r["statistic"] == 6 and r["p_value"] == pytest.approx(2 * 13 / 32)
    r = paired_wilcoxon([1, 2, math.nan], [1, 2, 0])  # NaN pair dropped, zero differences: p = 1
    assert r["n"] == 2 and r["p_value"] == 1.0 and r["mean_diff"] == 0
    assert math.isnan(paired_wilcoxon([math.nan], [1.0])["p_value"])
    with pytest.raises(ValueError, match="same length"):
        paired_wilcoxon([1, 2], [1])


def test_logit_gaps_and_noise_hand_computed():
    logits = torch.tensor([[5.0, 0.0], [1.0, 2.0], [0.0, 60.0]]).reshape(1, 3, 2, 1)  # two voxels, three classes
    label = torch.tensor([0, 2]).reshape(1, 1, 2, 1)
    h = logit_gap_histograms(logits, label, 3)
    # voxel 0 (class 0): distances 4 and 5 (the maximal logit's 0 left out); voxel 1 (class 2): 60 and 58 (last bin)
    expected = np.zeros((3, len(GAP_EDGES) - 1), dtype=int)
    expected[0, 8] = expected[0, 10] = 1
    expected[2, -1] = 2
    np.testing.assert_array_equal(h, expected)
    frac = gap_fractions(h, GAP_EDGES, 4.5)
    assert frac[0] == 0.5 and math.isnan(frac[1]) and frac[2] == 1.0
    with pytest.raises(ValueError, match=r"logits must be \(1, 4"):
        logit_gap_histograms(logits, label, 4)

    image = torch.linspace(0, 2, 64 * 64 * 8).reshape(1, 64, 64, 8)
    pre = lambda item: {"image": image.clone(), "label": torch.zeros(1, 64, 64, 8)}  # noqa: E731
    a = AddRelativeGaussianNoise(pre, 0.05, seed=1)({"image": "sub-001_T1w.nii.gz"})["image"]
    b = AddRelativeGaussianNoise(pre, 0.05, seed=1)({"image": "/elsewhere/sub-001_T1w.nii.gz"})["image"]
    c = AddRelativeGaussianNoise(pre, 0.05, seed=1)({"image": "sub-002_T1w.nii.gz"})["image"]
    assert float((a - image).std()) == pytest.approx(0.05 * 2.0, rel=0.02)  # sigma x intensity range
    assert torch.equal(a, b) and not torch.equal(a, c)  # seeded per case file name
    assert torch.equal(AddRelativeGaussianNoise(pre, 0.0)({"image": "x"})["image"], image)


# ---------------------------------------------------------------- report tables against numpy
def _synthetic_rows():
    """Two backbones, two seeds, two cases; ce, mbls and mbls_l2 (margins 5, 10), meep_ce_kl; values from a formula."""
    rows = []

    def value(method, margin, seed, case, metric, backbone):
        index = ["ce", "mbls", "mbls_l2", "meep_ce_kl"].index(method)
        base = [0.1, 0.2, 0.3, 0.45][index] + 0.01 * margin + 0.001 * seed + 0.05 * case + 0.0001 * (2 * seed + case) * index
        return base + {"dsc_mean": 0.5, "dsc_A": 0.4, "asd_A": 3.0, "asd_mean": 3.0, "ece": 0.0, "cece": 0.01, "hd95_mean": 7.0, "brier": 0.02, "brier_plus": 0.03}[metric] + (0.1 if backbone == "attention_unet" else 0)

    for backbone in ("unet", "attention_unet"):
        for method, margins, param in (("ce", [0], ""), ("mbls", [5, 10], "margin"), ("mbls_l2", [5, 10], "margin"), ("meep_ce_kl", [0], "lam")):
            for margin in margins:
                for seed in (0, 1):
                    for case in (0, 1):
                        for metric in ("dsc_mean", "dsc_A", "asd_A", "asd_mean", "ece", "cece", "hd95_mean", "brier", "brier_plus"):
                            rows.append({
                                "bundle": "b", "backbone": backbone, "seed": seed, "fold": "", "method": method, "run": f"{method}{margin}",
                                "param": param, "param_value": margin if param == "margin" else (0.3 if param else ""), "selected": margin in (0, 10),
                                "evaluation": "test", "sigma": 0.0, "case": f"c{case}", "metric": metric,
                                "value": value(method, margin, seed, case, metric, backbone),
                            })  # fmt: skip
    return rows, value


def _pm(values):
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def test_report_tables_against_numpy():
    rows, value = _synthetic_rows()
    # per case: the mean over the two seeds; then mean ± std over the two cases
    case_means = lambda method, margin, metric, bb="unet": [np.mean([value(method, margin, s, c, metric, bb) for s in (0, 1)]) for c in (0, 1)]  # noqa: E731
    header, body = table1(rows, "b", "unet")
    assert header == ["method", "DSC A", "DSC mean", "ASD A", "ASD mean"]
    assert [r[0] for r in body] == ["ce", "mbls", "mbls_l2", "meep_ce_kl"]
    assert body[1][1:] == [_pm(case_means("mbls", 10, k)) for k in ("dsc_A", "dsc_mean", "asd_A", "asd_mean")]
    header, body = table2(rows, "b", "unet")
    # DSC (higher better): meep > mbls_l2 > mbls > ce; ASD, ECE, CECE (lower better): the reverse
    assert [r[3] for r in body] == ["7", "9", "11", "13"] and [r[4] for r in body] == ["1.75", "2.25", "2.75", "3.25"]
    header, body = table4(rows, "b", "unet")
    assert [r[0] for r in body] == ["5", "10"]
    assert body[0][1:] == [_pm(case_means(m, 5, k)) for m in ("mbls", "mbls_l2") for k in ("dsc_mean", "ece", "cece")]
    header, body = backbone_table(rows, "b")
    assert [r[0] for r in body] == ["attention_unet", "unet"]
    assert body[0][1:] == [_pm(case_means(m, mg, k, "attention_unet")) for m, mg in (("ce", 0), ("mbls", 10)) for k in ("dsc_mean", "ece")]
    header, body = meep_table(rows, "b", "unet")
    seed_means = lambda method, metric: [np.mean([value(method, 0, s, c, metric, "unet") for c in (0, 1)]) for s in (0, 1)]  # noqa: E731
    assert [r[0] for r in body] == ["ce", "meep_ce_kl"] and body[1][1:] == [_pm(seed_means("meep_ce_kl", k)) for k in ("dsc_mean", "hd95_mean", "brier", "brier_plus", "ece")]
    pairs = {(p["method"], p["metric"]): p for p in paired_table(rows, "b", "unet")}
    # 2 pairs, one per case (each averaged over the 2 seeds first: the seeds' repeats are not independent cases),
    # differences 0.2 + 0.0001 x (1, 2): exact two-sided p = 2 / 4
    p = pairs[("mbls", "ece")]
    assert p["n"] == 2 and p["mean_diff"] == pytest.approx(0.20015) and p["p_value"] == pytest.approx(0.5)


def test_table2_ranks_a_case_a_method_lacks_last():
    rows, value = _synthetic_rows()
    rows = [r for r in rows if not (r["method"] == "meep_ce_kl" and r["case"] == "c1")]  # a partly finished study
    header, body = table2(rows, "b", "unet")
    ranks = {r[0]: r[4] for r in body}
    # c0 as before (DSC: meep best; ASD, ECE, CECE: meep worst): ce 1.75, mbls 2.25, mbls_l2 2.75, meep 3.25;
    # c1 without meep: meep last (4) on every metric, the others as on c0 among themselves but DSC ranks 3, 2, 1
    c1 = {"ce": (3 + 1 + 1 + 1) / 4, "mbls": (2 + 2 + 2 + 2) / 4, "mbls_l2": (1 + 3 + 3 + 3) / 4, "meep_ce_kl": 4.0}
    c0 = {"ce": 1.75, "mbls": 2.25, "mbls_l2": 2.75, "meep_ce_kl": 3.25}
    assert ranks == {m: f"{(c0[m] + c1[m]) / 2:.2f}" for m in c0}  # 1.62 (1.625), 2.12, 2.62, 3.62
    assert ranks != {"ce": "1.75", "mbls": "2.25", "mbls_l2": "2.75", "meep_ce_kl": "3.25"}  # c0 alone (the shared cases)


# ---------------------------------------------------------------- the tiny study end to end
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny study: the first 7 tasks in this process (then "interrupted"), the rest through the process pool,
    a third run that has nothing left to do, and the report."""
    root = tmp_path_factory.mktemp("study")
    spec = load_study(tiny_spec(root / "data"))
    out = root / "tiny"
    first = run_study(spec, out=out, workers=0, max_tasks=7)
    markers = {tid: marker_path(out, tid).stat().st_mtime_ns for tid in first["ran"]}
    logs = {tid: (out / "logs" / f"{tid}.log").stat().st_size for tid in first["ran"]}
    partial = write_report(out, out / "partial_report")  # whatever has finished
    second = run_study(spec, out=out, workers=2)
    third = run_study(spec, out=out, workers=0)
    report = write_report(out)
    return {"spec": spec, "out": out, "first": first, "second": second, "third": third, "markers": markers, "logs": logs, "report": report, "partial": partial}


@pytest.mark.slow
def test_tiny_study_interrupted_and_resumed(tiny):
    first, second, third, out = tiny["first"], tiny["second"], tiny["third"], tiny["out"]
    tasks = build_plan(tiny["spec"], out)
    assert len(tasks) == 22 and (Path(tiny["spec"].bundles[0].dataset_dir) / "datalist.json").is_file()  # prepared by the study
    assert len(first["ran"]) == 7 and not first["failed"] and len(first["remaining"]) == 15
    assert not second["failed"] and not second["remaining"] and sorted(first["ran"] + second["ran"]) == sorted(t.id for t in tasks)
    assert set(first["ran"]).isdisjoint(second["ran"])  # nothing finished was redone
    assert third["ran"] == [] and third["remaining"] == []
    for tid, mtime in tiny["markers"].items():
        assert marker_path(out, tid).stat().st_mtime_ns == mtime
        assert (out / "logs" / f"{tid}.log").stat().st_size == tiny["logs"][tid]
    assert set(task_status(tasks, out).values()) == {"done"}
    # the report of the interrupted study: CE's tasks had finished (plan order), the other methods not yet
    partial = tiny["partial"].read_text()
    assert first["ran"][:6] == [f"{k}/mni_tissue_seg2d/unet/{'' if k == 'select' else 'seed0/'}ce" for k in ("train", "evaluate", "select", "posthoc", "noise", "analysis")]
    assert "7 of 22 tasks finished" in partial and "Unfinished task kinds: analysis, evaluate, noise, posthoc, select, train" in partial
    assert [r[0] for r in _table_cells(partial, "Table 1")] == ["ce"] and "_Not available: needs the reference ce and another method" in partial
    sel = read_marker(out, "select/mni_tissue_seg2d/unet/mbls")["result"]
    scores = {n: read_marker(out, f"train/mni_tissue_seg2d/unet/seed0/{n}")["result"]["best_metric"] for n in ("mbls_alpha0.1_margin5.0", "mbls_alpha0.1_margin10.0")}
    assert sel["scores"] == scores and sel["run_name"] == max(scores, key=lambda n: (scores[n], n == "mbls_alpha0.1_margin5.0"))
    run = out / "runs" / "mni_tissue_seg2d" / "unet" / "seed0" / sel["run_name"]
    for f in ("models/model.pt", "eval/per_case.csv", "eval_ts/per_case.csv", "eval_lts/per_case.csv", "noise/sigma0.050/per_case.csv", "analysis/analysis.npz", "study/overrides.yaml", "study/command.sh"):
        assert (run / f).is_file(), f
    assert "monai.bundle run training" in (run / "study" / "command.sh").read_text()
    # a finished task run with other settings is kept (status "changed") unless redone on request
    changed = load_study({**tiny_spec(tiny["spec"].bundles[0].dataset_dir), "epochs": 2})
    assert task_status(build_plan(changed, out), out)["train/mni_tissue_seg2d/unet/seed0/ce"] == "changed"
    assert run_study(changed, out=out, workers=0)["ran"] == []
    stale = write_report(out, out / "changed_report").read_text()  # the report says its results predate the file
    assert re.search(r"\*\*\d+ finished task\(s\) ran with other settings than the study file now gives\*\* \(`train/mni_tissue_seg2d/unet/seed0/ce`", stale)
    assert "finished task(s) ran with other settings" not in tiny["report"].read_text()
    assert run_study(tiny["spec"], out=out, workers=0)["ran"] == []  # (and the study folder holds the tiny study again)


@pytest.mark.slow
def test_tiny_study_redo_and_failure(tiny, tmp_path):
    out = tiny["out"]
    before = marker_path(out, "analysis/mni_tissue_seg2d/unet/seed0/ce").stat().st_mtime_ns
    redo = run_study(tiny["spec"], out=out, workers=0, redo="analysis/*/ce")
    assert redo["ran"] == ["analysis/mni_tissue_seg2d/unet/seed0/ce"]
    assert marker_path(out, "analysis/mni_tissue_seg2d/unet/seed0/ce").stat().st_mtime_ns != before
    with pytest.raises(ValueError, match="matches no task"):
        run_study(tiny["spec"], out=out, workers=0, redo="nothing/*")
    # a failing training: its marker is absent, the traceback is kept, its dependants do not run
    bad = load_study({**tiny_spec(tiny["spec"].bundles[0].dataset_dir), "methods": {"ce": {}}, "overrides": {**TINY["overrides"], "network_def#strides": [2]}})
    res = run_study(bad, out=tmp_path / "bad", workers=0)
    assert res["failed"] == ["train/mni_tissue_seg2d/unet/seed0/ce"] and len(res["not_run"]) == 5
    failed = json.loads(marker_path(tmp_path / "bad", res["failed"][0], failed=True).read_text())
    assert "Traceback" in failed["traceback"] and failed["log"].endswith("ce.log")
    assert task_status(build_plan(bad, tmp_path / "bad"), tmp_path / "bad")[res["failed"][0]] == "failed"
    assert "_No finished run yet._" in write_report(tmp_path / "bad").read_text()


@pytest.mark.slow
def test_a_task_another_process_runs_is_not_run_twice(tiny):
    from calibmonai.study.tasks import execute_task, task_lock

    out = tiny["out"]
    task = next(t for t in build_plan(tiny["spec"], out) if t.id.startswith("analysis/"))
    before = marker_path(out, task.id).read_bytes()
    with task_lock(out, task.id):  # as a worker of a killed study run would hold it (a second open file: flock conflicts)
        res = execute_task(out, task, force=True)
    assert not res["ok"] and re.match(rf"another process \(pid {os.getpid()} on .+\) is running this task", res["error"]), res
    assert marker_path(out, task.id).read_bytes() == before and not marker_path(out, task.id, failed=True).exists()
    assert execute_task(out, task)["skipped"]  # the lock released: the finished task is found finished


def test_noise_levels_never_share_a_folder():
    from calibmonai.study.tasks import noise_dir_name

    assert [noise_dir_name(s) for s in (0, 0.01, 0.05, 0.1)] == ["sigma0.000", "sigma0.010", "sigma0.050", "sigma0.100"]  # as before
    close = [0.0005, 0.001, 0.0125, 0.0126, 0.01255]
    assert len({noise_dir_name(s) for s in close}) == len(close)
    assert noise_dir_name(0.0125) == "sigma0.0125"


def _ends_within(pid: int, seconds: float) -> bool:
    """Whether process ``pid`` is gone within ``seconds`` (polled)."""
    t0 = time.time()
    while time.time() - t0 < seconds:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_pool_workers_end_when_the_study_process_is_killed(tmp_path):
    """kill -9 of the study process: its pool cannot stop the workers, their watchdog does (a worker left training
    would write into the run folder the next study run trains again)."""
    import signal
    import subprocess
    import sys
    import time

    script = f"""
import concurrent.futures as cf, multiprocessing as mp, os, time
from calibmonai.study.executors import _init_worker

def work(path):
    open(path, "w").write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    pool = cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(None, os.getpid()))
    pool.submit(work, {str(tmp_path / "worker.pid")!r})
    time.sleep(120)
"""
    (tmp_path / "driver.py").write_text(script)
    driver = subprocess.Popen([sys.executable, str(tmp_path / "driver.py")], cwd=tmp_path)
    pid_file = tmp_path / "worker.pid"
    t0 = time.time()
    while not (pid_file.is_file() and pid_file.read_text()) and time.time() - t0 < 120:
        time.sleep(0.2)
    worker = int(pid_file.read_text())
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    if not _ends_within(worker, 15):
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the pool worker outlived its study process by 15 s")


def _table_cells(md: str, title: str) -> list[list[str]]:
    part = md.split(f"### {title}", 1)[1].split("\n### ", 1)[0]
    lines = [ln for ln in part.splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[1:]]


@pytest.mark.slow
def test_tiny_study_report(tiny):
    md = tiny["report"].read_text()
    folder = tiny["report"].parent
    tables = {
        "Table 1": ["ce", "mbls", "meep_ce_kl"], "Table 2": ["ce", "mbls", "meep_ce_kl"], "Paired comparisons": ["mbls", "meep_ce_kl"],
        "Table 3": ["ce", "ce", "ce", "mbls", "mbls", "mbls", "meep_ce_kl", "meep_ce_kl", "meep_ce_kl"], "MEEP": ["ce", "meep_ce_kl"],
        "Robustness": ["ce", "mbls", "meep_ce_kl"], "Hyper-parameter sensitivity": ["mbls", "mbls", "meep_ce_kl", "meep_ce_kl"],
        "Logit distances": ["ce", "ce", "mbls", "mbls"], "Backbones": ["unet"],
    }  # fmt: skip
    for title, first_col in tables.items():
        cells = _table_cells(md, title)
        assert [r[0] for r in cells] == first_col, title
        for row in cells:
            for cell in row[1:]:
                for number in re.findall(r"[-+]?\d+\.\d+(?:e[-+]\d+)?|nan|inf|n/a", cell):
                    assert number not in ("nan", "inf", "n/a") and math.isfinite(float(number)), (title, row)
    assert "Table 4" in md and "_Not available: needs methods mbls and mbls_l2" in md  # the tiny study has no L2
    for png in re.findall(r"\]\(([^)]+\.png)\)", md):
        assert (folder / png).stat().st_size > 10_000, png
    assert len(re.findall(r"\.png\)", md)) == 5
    rows = read_tidy(folder / "tidy.csv")
    with open(folder / "tidy.csv") as f:
        assert next(csv.reader(f)) == ["bundle", "backbone", "seed", "fold", "method", "run", "param", "param_value", "selected", "evaluation", "sigma", "case", "metric", "value"]
    kinds = {(r["evaluation"], r["sigma"]) for r in rows}
    assert kinds == {("validation", 0.0), ("test", 0.0), ("ts", 0.0), ("lts", 0.0), ("noise", 0.05)}
    test = [r for r in rows if r["evaluation"] == "test"]
    assert {r["run"] for r in test} == {"ce", "mbls_alpha0.1_margin5.0", "mbls_alpha0.1_margin10.0", "meep_ce_kl_lam0.1", "meep_ce_kl_lam0.3"}
    assert all(math.isfinite(r["value"]) for r in test if r["metric"] in ("dsc_mean", "ece", "cece", "brier"))
    per_case = list(csv.DictReader(open(tiny["out"] / "runs" / "mni_tissue_seg2d" / "unet" / "seed0" / "ce" / "eval" / "per_case.csv")))
    ce_dsc = [r["value"] for r in test if r["run"] == "ce" and r["metric"] == "dsc_mean"]
    assert ce_dsc == [float(per_case[0]["dsc_mean"])]
    assert sum(r["selected"] is True for r in rows if r["evaluation"] == "validation") == 3


@pytest.mark.slow
def test_tiny_study_folder_moved(tiny, tmp_path):
    """A study folder read at another path (a shared filesystem mounted elsewhere) gives the same tidy rows."""
    import shutil

    moved = tmp_path / "elsewhere"
    shutil.copytree(tiny["out"], moved, ignore=shutil.ignore_patterns("*.pt", "*report"))
    per_case = moved / "runs" / "mni_tissue_seg2d" / "unet" / "seed0" / "ce" / "eval" / "per_case.csv"
    table = list(csv.DictReader(open(per_case)))
    table[0]["dsc_mean"] = "0.123456"  # the moved copy, not the original, is what the report reads
    with open(per_case, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    is_ce_dsc = lambda r: r["run"] == "ce" and r["evaluation"] == "test" and r["metric"] == "dsc_mean"  # noqa: E731
    here, there = collect_tidy(tiny["out"]), collect_tidy(moved)
    assert [r["value"] for r in there if is_ce_dsc(r)] == [0.123456] != [r["value"] for r in here if is_ce_dsc(r)]
    assert [r for r in there if not is_ce_dsc(r)] == [r for r in here if not is_ce_dsc(r)]


def _subset(spec_root):
    """The tiny study's MbLS part, without post-hoc and noise tasks: training, evaluation, selection, analysis."""
    # selection with the evaluations' resources: one submitit job array per resource class and wave, one fewer here
    resources = {**TINY["resources"], "select": TINY["resources"]["evaluate"]}
    return load_study(tiny_spec(spec_root, methods={"mbls": TINY["methods"]["mbls"]}, posthoc=[], noise_sigmas=[0.0], resources=resources))


def _same_rows(rows, reference):
    key = lambda r: tuple(str(r[k]) for k in ("bundle", "backbone", "seed", "method", "run", "selected", "evaluation", "sigma", "case", "metric"))  # noqa: E731
    ref = {key(r): r["value"] for r in reference if r["method"] == "mbls" and r["evaluation"] in ("validation", "test")}
    got = {key(r): r["value"] for r in rows}
    assert sorted(got) == sorted(ref)
    for k in ref:  # float32 sums in another order (thread pools, memory alignment) move the 7th digit at most
        assert got[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-6), k


@pytest.mark.slow
def test_tiny_study_through_ray_same_tidy(tiny, tmp_path):
    ray = pytest.importorskip("ray", reason="the ray executor needs 'pip install calibmonai[ray]'")
    res = run_study(_subset(tiny["spec"].bundles[0].dataset_dir), out=tmp_path / "ray", executor="ray", num_cpus=2)
    assert not ray.is_initialized()  # the Ray started here is shut down
    assert not res["failed"] and not res["remaining"] and len(res["ran"]) == 6
    _same_rows(collect_tidy(tmp_path / "ray"), read_tidy(tiny["report"].parent / "tidy.csv"))


@pytest.mark.slow
def test_tiny_study_through_submitit_same_tidy(tiny, tmp_path):
    pytest.importorskip("submitit", reason="the slurm executor needs 'pip install calibmonai[slurm]'")
    res = run_study(_subset(tiny["spec"].bundles[0].dataset_dir), out=tmp_path / "sub", executor="slurm", cluster="local", tasks_per_job=8, array_parallelism=2, poll_s=0.5)
    assert not res["failed"] and not res["remaining"] and len(res["ran"]) == 6
    assert list((tmp_path / "sub" / "logs" / "submitit").iterdir())  # submitit's own job folders
    _same_rows(collect_tidy(tmp_path / "sub"), read_tidy(tiny["report"].parent / "tidy.csv"))


@pytest.mark.slow
def test_cli_plan_and_errors(tiny, tmp_path, capsys):
    from calibmonai.study.__main__ import main

    main(["plan", str(tiny["out"]), "--verbose", "false"])  # what `python -m calibmonai.study plan <folder>` runs
    printed = capsys.readouterr().out
    assert re.search(r"train\s+5\s+0\s+0\s+0\s+0\s+0\s+5", printed) and re.search(r"mni_tissue_seg2d\s+5\s+22\s+", printed)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "methods": {"nope": {}}}))
    with pytest.raises(SystemExit) as e:
        main(["plan", str(bad)])
    assert e.value.code == 2 and "unknown method 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["run", str(tiny["out"]), "--address", "auto"])
    assert e.value.code == 2 and "--address do not apply to the local executor" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_training_through_torchrun(tmp_path):
    """``gpus: 2`` trains through ``torchrun`` with the bundle's multi_gpu_train.yaml (gloo processes on a CPU
    machine); rank 0 records the validation metric, and the checkpoint loads into the plain network."""
    raw = tiny_spec(tmp_path / "data", methods={"ce": {}}, posthoc=[], noise_sigmas=[0.0])
    raw["bundles"]["mni_tissue_seg2d"]["prepare"] = {**raw["bundles"]["mni_tissue_seg2d"]["prepare"], "num_subjects": 5, "split": [2, 2, 1]}
    raw["resources"] = {**raw["resources"], "train": {"gpus": 2, "cpus": 1, "memory_gb": 2}}
    res = run_study(load_study(raw), out=tmp_path / "s", workers=0, max_tasks=1)
    assert res["ran"] == ["train/mni_tissue_seg2d/unet/seed0/ce"], res
    run = tmp_path / "s" / "runs" / "mni_tissue_seg2d" / "unet" / "seed0" / "ce"
    record = json.loads((run / "study" / "train_record.json").read_text())
    assert record["metric"] == "val_mean_dice" and 0 < record["best_metric"] <= 1 and record["best_metric_epoch"] == 1
    assert "torch.distributed.run --standalone --nproc_per_node=2" in (run / "study" / "command.sh").read_text()
    log = (tmp_path / "s" / "logs" / "train" / "mni_tissue_seg2d" / "unet" / "seed0" / "ce.log").read_text()
    assert "multi_gpu_train.yaml" in log
    from monai.networks.nets import UNet

    from calibmonai.evaluation import load_checkpoint

    net = UNet(spatial_dims=2, in_channels=1, out_channels=4, channels=[4, 8, 16, 32], strides=[2, 2, 2], num_res_units=1)
    load_checkpoint(net, record["ckpt_path"], "cpu")  # no "module." prefix left by DistributedDataParallel


def test_mistyped_study_flags_are_refused_before_anything_runs(tmp_path, capsys):
    from calibmonai.cli import main as cli_main
    from calibmonai.study.__main__ import main as study_main

    study = str(REPO / "studies" / "tiny.yaml")
    out = tmp_path / "study"
    for run, argv in ((cli_main, ["study", "run", study, "--out", str(out), "--max_tasks", "1", "--redoo", "noise/*"]),
                      (study_main, ["plan", study, "--out", str(out), "--outt", "x"]),
                      (cli_main, ["study", "plann", study])):  # fmt: skip
        with pytest.raises(SystemExit) as code:
            run(argv)
        assert code.value.code == 2
    err = capsys.readouterr().err
    assert "unknown flag --redoo for `calibmonai study run`; flags: --study, --out, --executor, --redo," in err
    assert "unknown flag --outt for `calibmonai study plan`; flags: --study, --out, --verbose, --replace." in err
    assert "unknown command 'plann' of `calibmonai study`; commands: plan, run, report." in err
    assert not out.exists()  # nothing planned, run or written


@pytest.mark.slow
def test_a_worker_that_dies_fails_its_task_and_says_so(tiny, tmp_path, capsys):
    """A pool worker killed abruptly (the out-of-memory killer; here the training config ends its process): its task
    fails with a marker naming what happened; the tasks not started are reported not run, not failed."""
    raw = tiny_spec(tiny["spec"].bundles[0].dataset_dir, methods={"ce": {}, "mbls": {"margin": [5.0], "alpha": [0.1]}})
    raw["overrides"] = {**raw["overrides"], "epochs": "$__import__('os')._exit(9)"}
    out = tmp_path / "killed"
    res = run_study(load_study(raw), out=out, workers=1)
    text = capsys.readouterr().out
    ce, mbls = "train/mni_tissue_seg2d/unet/seed0/ce", "train/mni_tissue_seg2d/unet/seed0/mbls_alpha0.1_margin5.0"
    assert res["ran"] == [] and res["failed"] == [ce], res
    failed = json.loads(marker_path(out, ce, failed=True).read_text())
    assert "its worker process died (exit status 9)" in failed["error"]
    assert mbls in res["not_run"] and not marker_path(out, mbls, failed=True).exists()
    assert f"failed: {ce} (see {marker_path(out, ce, failed=True)})" in text
    assert task_status(build_plan(load_study(raw), out), out)[ce] == "failed"


def test_when_a_worker_dies_only_its_task_fails(tmp_path):
    """The pool stops every other worker when one dies (SIGTERM, answered with status 143): their tasks are not run,
    with no failure marker; the task whose worker died (here killed: -9) fails. Each task's worker is found by the
    pid in its lock file."""
    import signal

    from calibmonai.study.executors import _Driver
    from calibmonai.study.tasks import task_lock

    class Worker:
        def __init__(self, exitcode):
            self.exitcode = exitcode

        def join(self, timeout=None):
            return None

    tasks = [Task(id=f"train/b/unet/seed0/{m}", kind="train", bundle="b", backbone="unet", method=m) for m in ("ce", "mbls", "meep")]
    for t, pid in zip(tasks, (101, 102, 103)):
        with task_lock(tmp_path, t.id):
            marker_path(tmp_path, t.id).with_suffix(".lock").write_text(f"pid {pid} on host")
    workers = {101: Worker(-signal.SIGKILL), 102: Worker(128 + signal.SIGTERM), 103: Worker(-signal.SIGTERM)}
    lines = []
    driver = _Driver(tasks, [], None, lines.append)
    for t in tasks:
        LocalExecutor._worker_died(driver, str(tmp_path), t.id, RuntimeError("pool broke"), workers)
    assert driver.failed == {tasks[0].id} and driver.not_run == {tasks[1].id, tasks[2].id}
    assert marker_path(tmp_path, tasks[0].id, failed=True).is_file()
    assert "exit status -9" in json.loads(marker_path(tmp_path, tasks[0].id, failed=True).read_text())["error"]
    assert not marker_path(tmp_path, tasks[1].id, failed=True).exists() and not marker_path(tmp_path, tasks[2].id, failed=True).exists()
    assert f"[study] {tasks[1].id}: stopped, another worker process died (not run: the next study run runs it)" in lines


def test_noise_results_of_earlier_studies_are_still_read(tmp_path):
    from calibmonai.study.report import _noise_dir

    run = tmp_path / "run"
    (run / "noise" / "sigma0.013").mkdir(parents=True)  # 0.0125 as studies named it before
    assert _noise_dir(run, 0.0125, [0.0, 0.0125]) == run / "noise" / "sigma0.013"
    assert _noise_dir(run, 0.0125, [0.0125, 0.0126]) == run / "noise" / "sigma0.0125"  # ambiguous: not taken
    (run / "noise" / "sigma0.0125").mkdir()
    assert _noise_dir(run, 0.0125, [0.0, 0.0125]) == run / "noise" / "sigma0.0125"
    assert _noise_dir(run, 0.05, [0.05]) == run / "noise" / "sigma0.050"


def test_a_child_training_is_stopped_with_its_whole_process_group(tmp_path):
    """torchrun and its ranks (here a child and its own child) are stopped together when the worker ends."""
    import subprocess
    import sys
    import threading
    import time

    from calibmonai.study.tasks import run_child_training, stop_child_trainings

    pid_file = tmp_path / "rank.pid"
    child = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
             f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(120)")  # fmt: skip
    errors = []

    def run():
        try:
            run_child_training([sys.executable, "-c", child])
        except subprocess.CalledProcessError as e:
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    t0 = time.time()
    while not (pid_file.is_file() and pid_file.read_text()) and time.time() - t0 < 60:
        time.sleep(0.1)
    rank = int(pid_file.read_text())
    stop_child_trainings()
    thread.join(30)
    assert not thread.is_alive() and errors and errors[0].returncode == -9
    if not _ends_within(rank, 10):
        os.kill(rank, 9)
        pytest.fail("the training's own child outlived the stop")


def test_a_train_task_stopped_mid_training_continues_from_its_resume_state(tmp_path, monkeypatch):
    """A training task stopped before its last epoch (Slurm time limit, kill) left models/resume.pt: run again, the
    study composes resume: true, and accepts a best checkpoint from before the stop; without it, no resume file."""
    import calibmonai.study.tasks as T

    spec = load_study(tiny_spec(tmp_path / "d"))
    train = next(t for t in build_plan(spec, tmp_path / "s") if t.kind == "train")
    run_dir = Path(train.params["run_dir"])
    seen = []

    def fake_workflow(files, run_id):
        seen.append([yaml.safe_load(open(f)) if f.endswith(".yaml") and "/study/" in f else f for f in files])
        (run_dir / "models").mkdir(parents=True, exist_ok=True)
        ckpt = run_dir / "models" / "model.pt"
        if write_checkpoint:
            ckpt.write_bytes(b"weights")
        T._write_json(run_dir / "study" / "train_record.json", {"ckpt_path": str(ckpt), "best_metric": 0.5})

    monkeypatch.setattr(T, "_workflow", fake_workflow)
    write_checkpoint = True
    T._train(train, tmp_path / "s")
    assert {"resume": True} not in seen[-1]
    write_checkpoint = False  # a try whose validation never beat the best checkpoint kept from before
    old = time.time() - 3600  # the best checkpoint predates this try: refused for a fresh training...
    os.utime(run_dir / "models" / "model.pt", (old, old))
    with pytest.raises(RuntimeError, match="wrote no new checkpoint"):
        T._train(train, tmp_path / "s")
    (run_dir / "models" / "resume.pt").write_bytes(b"state")  # ...accepted for a resumed one
    T._train(train, tmp_path / "s")
    assert {"resume": True} in seen[-1] and seen[-1][-1] == yaml.safe_load(open(run_dir / "study" / "record.yaml"))
    assert "resume.yaml" in (run_dir / "study" / "command.sh").read_text()
    # a stopped training whose task settings changed since (the study file's epochs): its state is refused, and the
    # task trains from the start instead of failing on every re-run
    from calibmonai.run_files import ResumeRefused

    def refusing_workflow(files, run_id):
        if any(f.endswith("resume.yaml") for f in files):
            try:
                raise ResumeRefused("resume.pt was saved by a training with other settings: step_size: 2 -> 3")
            except ResumeRefused as e:
                raise RuntimeError("Failed to evaluate ConfigExpression: $calibmonai.run_files.resumable_training(...)") from e
        fake_workflow(files, run_id)

    monkeypatch.setattr(T, "_workflow", refusing_workflow)
    write_checkpoint = True
    n = len(seen)
    T._train(train, tmp_path / "s")
    assert len(seen) == n + 1 and {"resume": True} not in seen[-1] and not (run_dir / "study" / "resume.yaml").exists()
    assert "resume.yaml" not in (run_dir / "study" / "command.sh").read_text()
    monkeypatch.setattr(T, "_workflow", fake_workflow)
    (run_dir / "models" / "resume.pt").unlink()  # completed: the next training starts afresh, no stale resume.yaml
    write_checkpoint = True
    T._train(train, tmp_path / "s")
    assert {"resume": True} not in seen[-1] and not (run_dir / "study" / "resume.yaml").exists()


def test_wilcoxon_drops_zero_differences_before_ranking():
    # differences 0, 1, -2, 3, 4, 5. zero_method "wilcox": the zero is dropped, |1, -2, 3, 4, 5| get ranks 1..5,
    # W- = 2 (the rank of -2), W+ = 13: statistic min = 2. Exact two-sided p for n = 5: the sign patterns with
    # W <= 2 are {}, {1}, {2} (W = 0, 1, 2), 3 of 32, so p = 2 * 3 / 32 = 0.1875.
    # ("pratt" would rank the zero too: ranks 2..6 for the others, W- = 3, statistic 3.)
    r = paired_wilcoxon([0, 1, -2, 3, 4, 5], [0] * 6)
    assert r["statistic"] == 2 and r["p_value"] == pytest.approx(0.1875)
    assert r["n"] == 6 and r["mean_diff"] == pytest.approx(11 / 6) and r["median_diff"] == 2  # median (1 + 3) / 2


def test_wilcoxon_median_diff_is_the_median_not_the_mean():
    # differences 1, 1, 1, 1, 6: mean (4 + 6) / 5 = 2, median 1; all positive, so W- = 0
    r = paired_wilcoxon([1, 1, 1, 1, 6], [0] * 5)
    assert r["median_diff"] == 1 and r["mean_diff"] == 2 and r["statistic"] == 0
