"""Pinned, hand-computed cases for the study's plan, selection, report tables and the CLI's error message: each test
kills a mutation (a wrong direction, aggregate, column, count or order) that the other fast unit tests let through."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from calibmonai.study.plan import Task, estimate_gpu_hours, marker_path, replicate_tag, task_status
from calibmonai.study.report import noise_table, sensitivity_table, table1, table2, table3
from calibmonai.study.spec import Resources
from calibmonai.study.tasks import _select


def _row(method, case, metric, value, seed=0, evaluation="test", sigma=0.0, param="", param_value="", selected=True, backbone="unet"):
    return {
        "bundle": "b", "backbone": backbone, "seed": seed, "fold": "", "method": method, "run": method, "param": param,
        "param_value": param_value, "selected": selected, "evaluation": evaluation, "sigma": sigma, "case": case,
        "metric": metric, "value": value,
    }  # fmt: skip


def _pm(values):
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


# ---------------------------------------------------------------- the plan
def test_replicate_tag_names_seed_and_fold():
    assert replicate_tag(1, None) == "seed1"
    assert replicate_tag(0, 2) == "seed0-fold2"


def test_estimate_gpu_hours_hand_computed():
    spec = SimpleNamespace(bundles=[SimpleNamespace(name="b", estimate={"train_gpu_hours_per_epoch": 0.5, "eval_gpu_hours": 0.25})])
    common = dict(bundle="b", backbone="unet", method="ce")
    tasks = [
        Task("train/x", "train", params={"overrides": {"epochs": 4}}, resources=Resources(gpus=2), **common),
        Task("evaluate/x", "evaluate", **common),
        Task("posthoc/x", "posthoc", params={"calibrators": ["ts", "lts"]}, **common),
        Task("noise/x", "noise", params={"sigmas": [0.05, 0.1, 0.2]}, **common),
        Task("select/x", "select", **common),
        Task("analysis/x", "analysis", **common),
    ]
    est = estimate_gpu_hours(spec, tasks)["b"]
    # train: 0.5 h/epoch x 4 epochs x 2 GPUs = 4; evaluations: 1 + 2 x 2 (fit + evaluation per calibrator) + 3 + 0 + 1 = 9
    assert est["training_runs"] == 1 and est["tasks"] == 6 and est["evaluations"] == 9
    assert est["gpu_hours"] == pytest.approx(4 + 9 * 0.25)


def test_task_status_fingerprint_done_changed_ready(tmp_path):
    common = dict(bundle="mni_tissue_seg2d", backbone="unet", method="ce")
    a = Task("train/a", "train", params={"x": 1}, **common)
    b = Task("train/b", "train", params={"x": 2}, **common)
    c = Task("evaluate/c", "evaluate", deps=["train/a", "train/b"], **common)
    d = Task("evaluate/d", "evaluate", params={"x": 3}, **common)
    for t, fp in ((a, None), (b, "0" * 12)):  # a: an old marker without fingerprint; b: ran with other settings
        p = marker_path(tmp_path, t.id)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"id": t.id} if fp is None else {"id": t.id, "fingerprint": fp}))
    status = task_status([a, b, c, d], tmp_path)
    assert status == {"train/a": "done", "train/b": "changed", "evaluate/c": "ready", "evaluate/d": "ready"}


# ---------------------------------------------------------------- selection by mean validation metric
def _select_with(tmp_path, scores):
    """``scores``: {run name: [best_metric per seed]}; candidates listed in that order."""
    cands = []
    for name, values in scores.items():
        ids = []
        for s, v in enumerate(values):
            tid = f"train/b/unet/seed{s}/{name}"
            p = marker_path(tmp_path, tid)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps({"id": tid, "result": {"best_metric": v, "metric": "val_mean_dice"}}))
            ids.append(tid)
        cands.append({"run_name": name, "loss_kwargs": {"margin": len(cands)}, "train": ids})
    task = Task("select/b/unet/m", "select", "b", "unet", "m", params={"candidates": cands, "metric": "val_mean_dice", "param": "margin"})
    return _select(task, tmp_path)


def test_select_highest_mean_over_seeds_first_listed_on_ties(tmp_path):
    # means: a 0.5 (max 0.8), b 0.6, c 0.6 (a tie with b: the first listed wins), d NaN (never chosen)
    res = _select_with(tmp_path, {"a": [0.8, 0.2], "b": [0.5, 0.7], "c": [0.6, 0.6], "d": [math.nan, math.nan]})
    assert res["run_name"] == "b" and res["loss_kwargs"] == {"margin": 1}
    assert res["scores"]["a"] == pytest.approx(0.5) and res["scores"]["b"] == pytest.approx(0.6)


# ---------------------------------------------------------------- report tables
def test_tables_average_seeds_then_mean_and_std_over_cases():
    # one case with three seeds (mean 0.3, median 0.2) and two cases with one seed: case means 0.3, 0.9, 0.0
    rows = [_row("ce", "c0", "dsc_mean", v, seed=s) for s, v in enumerate((0.1, 0.2, 0.6))]
    rows += [_row("ce", "c1", "dsc_mean", 0.9), _row("ce", "c2", "dsc_mean", 0.0)]
    header, body = table1(rows, "b", "unet")
    assert header[:2] == ["method", "DSC mean"] and body[0][:2] == ["ce", _pm([0.3, 0.9, 0.0])]  # 0.4000 ± 0.3742


def test_table1_classes_in_the_bundles_order():
    rows = [_row("ce", "c0", k, 0.5) for k in ("dsc_B", "dsc_A", "dsc_mean", "asd_B", "asd_A", "asd_mean")]
    header, _ = table1(rows, "b", "unet", class_order=("B", "A"))
    assert header == ["method", "DSC B", "DSC A", "DSC mean", "ASD B", "ASD A", "ASD mean"]


def test_table2_ece_and_cece_columns():
    rows = []
    for m, (dsc, asd, ece, cece) in {"ce": (0.8, 2.0, 0.1, 0.3), "mbls": (0.9, 1.0, 0.05, 0.2)}.items():
        for k, v in (("dsc_mean", dsc), ("asd_mean", asd), ("ece", ece), ("cece", cece)):
            rows.append(_row(m, "c0", k, v))
    header, body = table2(rows, "b", "unet")
    assert header == ["method", "ECE", "CECE", "sum-rank", "mean case-rank"]
    assert body == [["ce", _pm([0.1]), _pm([0.3]), "8", "2.00"], ["mbls", _pm([0.05]), _pm([0.2]), "4", "1.00"]]


def test_table3_pre_then_each_calibrator():
    rows = [_row("ce", "c0", k, v) for k, v in (("ece", 0.2), ("cece", 0.4), ("dsc_mean", 0.8))]
    rows += [_row("ce", "c0", k, v, evaluation="ts") for k, v in (("ece", 0.1), ("cece", 0.3), ("dsc_mean", 0.8))]
    rows += [_row("mbls", "c0", "ece", 0.1)]  # no post-hoc evaluation: no row
    header, body = table3(rows, "b", "unet", ["ts"])
    assert [r[:3] for r in body] == [["ce", "Pre", _pm([0.2])], ["ce", "TS", _pm([0.1])]]


def test_noise_table_means_over_cases_and_needs_two_levels():
    rows = [_row("ce", c, "dsc_mean", v) for c, v in (("c0", 0.9), ("c1", 0.5))]
    rows += [_row("ce", c, "dsc_mean", v, evaluation="noise", sigma=0.1) for c, v in (("c0", 0.7), ("c1", 0.1))]
    header, body, curves = noise_table(rows, "b", "unet")
    assert header == ["method", "DSC σ=0", "DSC σ=0.1", "ECE σ=0", "ECE σ=0.1"]
    assert body == [["ce", "0.7000", "0.4000", "n/a", "n/a"]]
    assert noise_table(rows[:2], "b", "unet")[1] == []  # the plain test evaluation alone: no curve


def test_sensitivity_table_only_methods_with_several_values():
    rows = [_row("focal", "c0", "dsc_mean", v, param="gamma", param_value=g, selected=False) for g, v in ((1.0, 0.6), (2.0, 0.8))]
    rows += [_row("ls", "c0", "dsc_mean", 0.7, param="alpha", param_value=0.1)]
    header, body, _ = sensitivity_table(rows, "b", "unet")
    assert body == [["focal", "gamma", "1", "0.6000", "n/a"], ["focal", "gamma", "2", "0.8000", "n/a"]]


# ---------------------------------------------------------------- the CLI's error message
def test_error_message_takes_the_outermost_calibmonai_error():
    from calibmonai.bundle_tools import cause_chain
    from calibmonai.cli import error_message
    from calibmonai.study.stats import sum_rank
    from calibmonai.study.tasks import logit_gap_histograms

    try:
        logit_gap_histograms(np.zeros((2, 2)), np.zeros((1, 2)), 2)
    except ValueError as e:
        inner = e
    try:
        sum_rank({"a": {"ece": 0.1}}, ["cece"])
    except ValueError as e:
        middle = e
    middle.__cause__ = inner
    outer = RuntimeError("Failed to evaluate ConfigExpression")
    outer.__cause__ = middle
    assert cause_chain(outer) == [outer, middle, inner]
    assert error_message(outer) == str(middle) and "has no values for metric" in str(middle)
