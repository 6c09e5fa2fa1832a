"""Hand-computed values that pin the validation-curve logger (:class:`calibmonai.handlers.curves.ValidationCurveLogger`),
the over-fitting signature of :mod:`calibmonai.regime`, and the embedded task's soft reference and rater labels
(:mod:`calibmonai.data.mni_tissue`)."""

import math

import nibabel as nib
import numpy as np
import pytest
import torch

from calibmonai.data import mni_tissue
from calibmonai.handlers.curves import ValidationCurveLogger, read_curves
from calibmonai.regime import overfit_signature


class _State:
    def __init__(self, epoch, output, batch, metrics):
        self.epoch, self.iteration, self.output, self.batch, self.metrics = epoch, 1, output, batch, metrics


class _Engine:
    def __init__(self, state):
        self.state = state


def _run(logger, engine):
    logger._reset(engine)
    logger._accumulate(engine)
    logger._write(engine)


def _case():
    """One 2x2x1 case, 2 classes: labels [1, 1, 0, 1]; p(class 1) = [0.9, 0.6, 0.3, 0.2]."""
    p1 = torch.tensor([0.9, 0.6, 0.3, 0.2]).reshape(2, 2, 1)
    return torch.stack([1 - p1, p1]), torch.tensor([1, 1, 0, 1]).reshape(1, 2, 2, 1)


def _reference(path, q1):
    q1 = np.array(q1, dtype=np.float32).reshape(2, 2, 1)
    nib.save(nib.Nifti1Image(np.stack([1 - q1, q1], -1), np.eye(4)), str(path))
    return str(path)


# ---- ValidationCurveLogger ----


def test_curve_logger_brier_and_cece_columns(tmp_path):
    prob, label = _case()
    logger = ValidationCurveLogger(str(tmp_path / "run"), num_bins=10)
    _run(logger, _Engine(_State(1, [{"prob": prob, "label": label}], [{}], {"val_mean_dice": 0.5})))
    (r,) = read_curves(str(tmp_path / "run" / "curves.csv"))
    # Brier over all 4 voxels, sum_k (p_k - y_k)^2 (2 classes: twice the squared error of class 1):
    #   voxel 0 (y 1, p1 0.9): 2 * 0.1^2 = 0.02; voxel 1 (y 1, p1 0.6): 2 * 0.4^2 = 0.32
    #   voxel 2 (y 0, p0 0.7): 2 * 0.3^2 = 0.18; voxel 3 (y 1, p1 0.2): 2 * 0.8^2 = 1.28 -> 1.8 / 4 = 0.45
    assert r["brier"] == pytest.approx(0.45, abs=2e-6)
    # CECE on the foreground voxels 0, 1, 3, bins of 0.1; every voxel falls in its own bin per class, so each class's
    # ECE is the mean of |1[y == c] - p_c|:
    #   class 0: p0 = 0.1, 0.4, 0.8, never the label: (0.1 + 0.4 + 0.8) / 3 = 1.3 / 3
    #   class 1: p1 = 0.9, 0.6, 0.2, always the label: (0.1 + 0.4 + 0.8) / 3 = 1.3 / 3
    #   mean over the 2 classes: 1.3 / 3 = 0.433333 (Brier 0.45: the two columns are told apart)
    assert r["cece"] == pytest.approx(1.3 / 3, abs=2e-6)


def test_curve_logger_one_hot_label_is_read_as_the_index_label(tmp_path):
    prob, label = _case()
    one_hot = torch.cat([label == 0, label == 1]).float()  # (2, 2, 2, 1)
    for name, lab in (("index", label), ("one_hot", one_hot)):
        logger = ValidationCurveLogger(str(tmp_path / name), num_bins=10)
        _run(logger, _Engine(_State(1, [{"prob": prob, "label": lab}], [{}], {})))
        (r,) = read_curves(str(tmp_path / name / "curves.csv"))
        # foreground voxels (label 1): 0, 1, 3 with top probabilities 0.9, 0.6, 0.8 (a one-hot label read as
        # indices would take channel 0, the background indicator, as the label: voxel 2 only, 0.7)
        assert r["mean_confidence"] == pytest.approx((0.9 + 0.6 + 0.8) / 3, abs=2e-6), name
        assert r["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.6) + math.log(0.2)) / 3, abs=2e-6), name


def test_curve_logger_forgets_the_reference_of_the_previous_validation(tmp_path):
    prob, label = _case()
    ref = _reference(tmp_path / "ref.nii.gz", [0.8, 0.55, 0.0, 0.6])
    logger = ValidationCurveLogger(str(tmp_path / "run"), num_bins=10)
    state = _State(1, [{"prob": prob, "label": label}], [{"probs": ref}], {})
    _run(logger, _Engine(state))
    state.epoch, state.batch = 2, [{}]  # the second validation's item names no reference
    _run(logger, _Engine(state))
    rows = read_curves(str(tmp_path / "run" / "curves.csv"))
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0]["ref_mad"] == pytest.approx((0.1 + 0.05 + 0.4) / 3, abs=2e-6)
    assert not math.isnan(rows[0]["ref_ece"])
    assert math.isnan(rows[1]["ref_mad"]) and math.isnan(rows[1]["ref_ece"])


def test_curve_logger_brain_is_reference_background_strictly_below_half(tmp_path):
    prob, label = _case()
    # q1 = [0.8, 0.55, 0.5, 0.6]: reference background 1 - q1 = [0.2, 0.45, 0.5, 0.4]; voxel 2's is exactly 0.5,
    # not < 0.5, so brain = voxels 0, 1, 3:
    #   ref_mad = (|0.9 - 0.8| + |0.6 - 0.55| + |0.2 - 0.6|) / 3 = 0.55 / 3 = 0.183333
    # (with voxel 2, |0.3 - 0.5| = 0.2: 0.75 / 4 = 0.1875)
    ref = _reference(tmp_path / "ref.nii.gz", [0.8, 0.55, 0.5, 0.6])
    logger = ValidationCurveLogger(str(tmp_path / "run"), num_bins=10)
    _run(logger, _Engine(_State(1, [{"prob": prob, "label": label}], [{"probs": ref}], {})))
    (r,) = read_curves(str(tmp_path / "run" / "curves.csv"))
    assert r["ref_mad"] == pytest.approx(0.55 / 3, abs=2e-6)


def test_curve_logger_nll_is_the_mean_over_cases(tmp_path):
    # case A: one voxel, p(class 1) = 0.9, label 1; case B: three voxels, p(class 1) = 0.6, label 1
    prob_a = torch.tensor([0.1, 0.9]).reshape(2, 1, 1, 1)
    prob_b = torch.tensor([0.4, 0.6]).reshape(2, 1, 1, 1).expand(2, 3, 1, 1).contiguous()
    outputs = [{"prob": prob_a, "label": torch.ones(1, 1, 1, 1)}, {"prob": prob_b, "label": torch.ones(1, 3, 1, 1)}]
    logger = ValidationCurveLogger(str(tmp_path / "run"), num_bins=10)
    _run(logger, _Engine(_State(1, outputs, [{}, {}], {})))
    (r,) = read_curves(str(tmp_path / "run" / "curves.csv"))
    # per case: A -ln 0.9 = 0.105361, B -ln 0.6 = 0.510826; mean over cases 0.308093
    # (pooled over the 4 voxels: (-ln 0.9 - 3 ln 0.6) / 4 = 0.409465)
    assert r["nll"] == pytest.approx((-math.log(0.9) - math.log(0.6)) / 2, abs=2e-6)
    # mean confidence is over voxels: (0.9 + 3 * 0.6) / 4 = 0.675
    assert r["mean_confidence"] == pytest.approx(0.675, abs=2e-6)


# ---- regime.overfit_signature ----


def _rows(nll, dsc, ece):
    return [{"epoch": 10 * (i + 1), "nll": n, "dsc": d, "ece": e} for i, (n, d, e) in enumerate(zip(nll, dsc, ece))]


def test_overfit_signature_tie_takes_the_first_minimum():
    # NLL 0.4 at epochs 10 and 30: the minimum is the first (epoch 10); rise (0.46 - 0.4) / 0.4 = 0.15
    s = overfit_signature(_rows([0.4, 0.5, 0.4, 0.46], [0.7, 0.8, 0.9, 0.75], [0.1, 0.2, 0.3, 0.4]))
    assert s["min_nll_epoch"] == 10 and s["last_epoch"] == 40
    assert s["dsc_at_min"] == 0.7 and s["ece_at_min"] == 0.1
    assert s["nll_rise"] == pytest.approx(0.15)


def test_overfit_signature_dsc_exactly_at_the_tolerance_holds():
    # minimum NLL 0.25 at epoch 20; rise (0.5 - 0.25) / 0.25 = 1 > 0.02; last DSC 0.5 = 0.75 - 0.25 exactly
    # (binary fractions: no rounding), which counts as holding (>=); ECE 0.125 -> 0.5 worse
    s = overfit_signature(_rows([0.5, 0.25, 0.5], [0.5, 0.75, 0.5], [0.25, 0.125, 0.5]), dsc_tolerance=0.25)
    assert s["min_nll_epoch"] == 20 and s["nll_rise"] == 1.0
    assert s["signature"] is True


# ---- mni_tissue.soft_reference and rater_labels ----


def test_soft_reference_csf_is_what_grey_and_white_matter_leave():
    gm = np.array([0.0, 0.2, 0.5])
    wm = np.array([0.9, 0.6, 0.5])
    brain = np.array([1.0, 1.0, 0.0])
    ref = mni_tissue.soft_reference(gm, wm, brain)
    # classes (background, CSF, GM, WM); inside the brain CSF = clip(1 - gm - wm, 0, 1): 0.1 and 0.2, and each
    # voxel already sums to 1: voxel 0 [0, 0.1, 0, 0.9], voxel 1 [0, 0.2, 0.2, 0.6]; outside the brain [1, 0, 0, 0]
    # (CSF = 1 - gm alone would give voxel 0 [0, 1, 0, 0.9] / 1.9)
    expected = np.array([[0, 0.1, 0, 0.9], [0, 0.2, 0.2, 0.6], [1, 0, 0, 0]]).T
    assert ref.shape == (4, 3) and ref.dtype == np.float32
    np.testing.assert_allclose(ref, expected, atol=1e-6)


def test_rater_labels_interpolate_linearly(monkeypatch):
    # a constant displacement of 0.4 voxel along every axis (size-1 axes clamp: mode "nearest")
    monkeypatch.setattr(mni_tissue, "smooth_displacement", lambda shape, shift, smoothness, rng: np.full((3, *shape), 0.4, np.float32))
    ref = np.zeros((4, 2, 1, 1), np.float32)
    ref[:, 0, 0, 0] = [0, 0.6, 0.4, 0]
    ref[:, 1, 0, 0] = [0, 0, 0.45, 0.55]
    labels = mni_tissue.rater_labels(ref, 1.0, 4.0, np.random.default_rng(0))
    # voxel 0 is read at x = 0.4: 0.6 * voxel 0 + 0.4 * voxel 1 = [0, 0.36, 0.42, 0.22] -> 2 (GM)
    # (nearest-neighbour reading takes voxel 0 itself: CSF, 1); voxel 1 at x = 1.4 clamps to voxel 1 -> 3 (WM)
    assert labels.shape == (2, 1, 1) and labels.dtype == np.uint8
    assert labels[:, 0, 0].tolist() == [2, 3]
