"""Argument checks of the metrics' public functions and classes that an audit found open (each used to return a
number or raise an error from deep inside torch, numba or Python), and a hand-computed region map."""

from __future__ import annotations

import pytest
import torch

from calibmonai.handlers import write_calibration_report
from calibmonai.metrics import (
    BrierScoreMetric,
    CalibrationMetrics,
    SegmentationMetrics,
    calibration_errors,
    compute_calibration_histograms,
    labels_to_regions,
)


def _probs_and_labels():
    p = torch.softmax(torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    y = torch.randint(0, 3, (1, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    return p, y


@pytest.mark.parametrize("prob_tol", ["x", -1.0, float("nan"), 1.5, True])
def test_prob_tol_must_be_a_number_in_0_1(prob_tol):
    p, y = _probs_and_labels()
    with pytest.raises(ValueError, match=r"prob_tol must be a number in \[0, 1\)"):
        compute_calibration_histograms(p, y, prob_tol=prob_tol)


def test_complex_labels_are_refused():
    p, y = _probs_and_labels()
    with pytest.raises(ValueError, match="y must hold class labels, got dtype torch.complex64"):
        compute_calibration_histograms(p, y.to(torch.complex64))


def test_calibration_errors_refuse_a_background_index_outside_the_classes():
    p, y = _probs_and_labels()
    hist = compute_calibration_histograms(p, y)
    for bad in (7, -1, 1.0):
        with pytest.raises(ValueError, match=rf"background_index must be a class index in \[0, 2\] for histograms of 3 classes, got {bad!r}"):
            calibration_errors(hist, include_background=False, background_index=bad)
    # a valid index: the CECE mean leaves that class out (mean of the two others' class-wise errors)
    per_class_all = calibration_errors(hist)["cece"]
    without_0 = calibration_errors(hist, include_background=False)["cece"]
    without_2 = calibration_errors(hist, include_background=False, background_index=2)["cece"]
    cls = (hist.cls_hit - hist.cls_prob).abs().sum(-1) / hist.n.unsqueeze(-1)
    assert torch.allclose(per_class_all, cls.mean(1))
    assert torch.allclose(without_0, cls[:, 1:].mean(1)) and torch.allclose(without_2, cls[:, :2].mean(1))


def test_labels_to_regions_hand_computed_and_checked():
    labels = torch.tensor([0, 1, 2, 3, 3]).view(1, 1, 5)
    maps = labels_to_regions(labels, {"WT": (1, 2, 3), "ET": [3]})
    assert maps.tolist() == [[[0.0, 1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0, 1.0]]]
    assert labels_to_regions(labels.float(), {"TC": (1, 3)}).tolist() == [[[0.0, 1.0, 0.0, 1.0, 1.0]]]
    with pytest.raises(ValueError, match="labels must hold integer class labels .* 1 of its 5 values are not whole numbers"):
        labels_to_regions(labels.float().index_fill(2, torch.tensor([0]), 0.5), {"WT": (1,)})
    with pytest.raises(ValueError, match="regions must map region names to label lists"):
        labels_to_regions(labels, {})
    with pytest.raises(ValueError, match=r"region 'ET' must list one or more integer labels, got \(\)"):
        labels_to_regions(labels, {"ET": ()})
    with pytest.raises(ValueError, match=r"region 'ET' must list one or more integer labels, got \(3\.5,\)"):
        labels_to_regions(labels, {"ET": (3.5,)})


def test_segmentation_metrics_refuse_region_labels_outside_the_classes():
    with pytest.raises(ValueError, match=r"region 'X' lists labels \[9\] outside \[0, 2\] for 3 classes"):
        SegmentationMetrics(3, regions={"X": (9,)})
    assert SegmentationMetrics(4, regions={"ET": (3,), "TC": (1, 3)}).names == ["ET", "TC"]


def test_a_report_of_a_metric_without_cases_is_refused_before_writing(tmp_path):
    out = tmp_path / "report"
    with pytest.raises(ValueError, match="the metric holds no case .* nothing was written"):
        write_calibration_report(CalibrationMetrics(), str(out))
    assert not out.exists()


def test_single_metrics_take_no_metric_names():
    with pytest.raises(ValueError, match="BrierScoreMetric computes 'brier' only and takes no metric_names"):
        BrierScoreMetric(metric_names=("ece",))
    with pytest.raises(ValueError, match="level must be 'case' or 'pooled'"):
        BrierScoreMetric(level="voxel")
