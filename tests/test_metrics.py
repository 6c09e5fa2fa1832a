import math

import numpy as np
import pytest
import torch
from monai.metrics import CalibrationErrorMetric

import reference as ref
from calibmonai.metrics import (
    BrierScoreMetric,
    CalibrationMetrics,
    ClasswiseCalibrationErrorMetric,
    ExpectedCalibrationErrorMetric,
    SegmentationMetrics,
    StratifiedBrierScoreMetric,
    calibration_errors,
    compute_calibration_histograms,
    plot_reliability_diagram,
)

SHAPES = [(3, 4, 9, 11), (2, 3, 6, 5, 7), (2, 2, 13, 6)]


def _data(shape, seed=0, temp=3.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g, dtype=torch.float64) * temp
    y = torch.randint(0, shape[1], (shape[0], 1) + shape[2:], generator=g)
    # make the prediction informative: boost the true class for half of the voxels
    boost = (torch.rand((shape[0], 1) + shape[2:], generator=g) < 0.6).double() * 4
    z = z + torch.nn.functional.one_hot(y[:, 0], shape[1]).movedim(-1, 1) * boost
    mask = torch.rand((shape[0], 1) + shape[2:], generator=g) < 0.7
    return z.softmax(1).float(), y, mask


def _ref_case(p, y, mask, fg, nb, include_background=True):
    p = p.double().numpy().reshape(p.shape[0], -1)
    y = y.numpy().reshape(-1)
    m = np.ones_like(y, bool) if mask is None else mask.numpy().reshape(-1)
    if fg == "label":
        sel = m & (y != 0)
    elif fg == "label_or_pred":
        sel = m & ((y != 0) | (p.argmax(0) != 0))
    else:
        sel = m
    return {
        "ece": ref.ece(p, y, nb, sel),
        "cece": ref.cece(p, y, nb, sel, include_background),
        "brier": ref.brier(p, y, m),
        "brier_plus": ref.brier(p, y, m & (y != 0)),
        "nll": ref.nll(p, y, sel),
    }


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("foreground", ["label", "none", "label_or_pred"])
@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("num_bins", [15, 7])
@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_per_case_metrics_match_numpy(shape, foreground, use_mask, num_bins, backend):
    p, y, mask = _data(shape)
    m = CalibrationMetrics(num_bins=num_bins, foreground=foreground, backend=backend)
    got = m(p, y, mask=mask if use_mask else None)
    for b in range(shape[0]):
        want = _ref_case(p[b], y[b], mask[b] if use_mask else None, foreground, num_bins)
        for j, name in enumerate(m.metric_names):
            assert got[b, j].item() == pytest.approx(want[name], abs=2e-6), (b, name)


def test_cece_without_background_and_softmax_input():
    p, y, _ = _data((2, 4, 8, 8))
    logits = torch.log(p)
    m = CalibrationMetrics(("cece",), foreground="none", include_background=False, softmax=True)
    got = m(logits, y)
    for b in range(2):
        pb = p[b].double().numpy().reshape(4, -1)
        want = ref.cece(pb, y[b].numpy().reshape(-1), 15, np.ones(64, bool), include_background=False)
        assert got[b, 0].item() == pytest.approx(want, abs=1e-6)


def test_hand_computed_case():
    # 4 voxels, 2 classes, 2 bins; labels 1,1,0,1 (foreground = label 1)
    p1 = torch.tensor([0.9, 0.8, 0.3, 0.4])
    p = torch.stack([1 - p1, p1]).view(1, 2, 4, 1)
    y = torch.tensor([1, 1, 0, 1]).view(1, 1, 4, 1)
    m = CalibrationMetrics(num_bins=2, foreground="none")
    out = dict(zip(m.metric_names, m(p, y)[0].tolist()))
    # conf = .9,.8,.7,.6 all in bin [.5,1]; correct = 1,1,1,0 -> |3/4 - 3.0/4| = 0
    assert out["ece"] == pytest.approx(0.0, abs=1e-7)
    # class 1: p1 = .9,.8 (bin 1, hits 2) .3,.4 (bin 0, hits 0 and 1): |2-1.7|/4 + |1-0.7|/4 = 0.15
    # class 0: p0 = .1,.2 (bin 0, hits 0) .7,.6 (bin 1, hits 1,0): |0-.3|/4 + |1-1.3|/4 = 0.15
    assert out["cece"] == pytest.approx(0.15, abs=1e-7)
    # brier = mean 2*(1-p_y)^2 = 2*(.01+.04+.09+.36)/4 = 0.25
    assert out["brier"] == pytest.approx(0.25, abs=1e-7)
    # brier+ on label-1 voxels: 2*(.01+.04+.36)/3
    assert out["brier_plus"] == pytest.approx(2 * 0.41 / 3, abs=1e-7)
    assert out["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.7, 0.4])), abs=1e-6)


def test_exact_zero_and_one_values():
    # one-hot predictions: confidence exactly 1.0 must land in the last bin (not a hidden extra bin)
    y = torch.tensor([0, 1, 2, 2, 1, 0]).view(1, 1, 6, 1)
    p = torch.nn.functional.one_hot(y[:, 0], 3).movedim(-1, 1).float()
    m = CalibrationMetrics(foreground="none")
    assert m(p, y).tolist()[0][:4] == [0.0, 0.0, 0.0, 0.0]
    stats = m.reliability()
    assert stats["count"][-1] == 6 and stats["count"][:-1].sum() == 0
    assert stats["accuracy"][-1] == 1.0 and stats["confidence"][-1] == 1.0
    # all wrong with full confidence: ECE 1, Brier 2, CECE = mean over classes of |hits - p| / n
    wrong = (y + 1) % 3
    out = CalibrationMetrics(foreground="none")(p, wrong)[0]
    assert out[0].item() == pytest.approx(1.0)
    pp, yy = p[0].double().numpy().reshape(3, -1), wrong.numpy().reshape(-1)
    assert out[1].item() == pytest.approx(ref.cece(pp, yy, 15, np.ones(6, bool)), abs=1e-7)
    assert out[2].item() == pytest.approx(2.0)


@pytest.mark.parametrize("shape", [(2, 3, 8, 9), (2, 4, 5, 6, 4)])
def test_cece_agrees_with_monai_calibration_error(shape):
    p, y, _ = _data(shape, seed=2)
    onehot = torch.nn.functional.one_hot(y[:, 0], shape[1]).movedim(-1, 1).float()
    monai = CalibrationErrorMetric(num_bins=15, include_background=True, metric_reduction="none")
    per_channel = monai(p, onehot)  # (B, C): one ECE per image and channel
    ours = CalibrationMetrics(("cece",), foreground="none")(p, y)[:, 0]
    torch.testing.assert_close(ours, per_channel.mean(1).float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("foreground", ["label", "none"])
def test_streaming_pooled_equals_concatenated(foreground):
    batches = [_data((2, 3, 10, 7), seed=s) for s in range(5)]
    m = CalibrationMetrics(foreground=foreground)
    for p, y, mask in batches:
        m(p, y, mask=mask)
    pooled = m.aggregate("pooled")
    # one big case made of every voxel of every case
    p_all = torch.cat([p.movedim(0, -1).reshape(3, -1) for p, _, _ in batches], -1).view(1, 3, -1, 1)
    y_all = torch.cat([y.movedim(0, -1).reshape(1, -1) for _, y, _ in batches], -1).view(1, 1, -1, 1)
    m_all = torch.cat([k.movedim(0, -1).reshape(1, -1) for _, _, k in batches], -1).view(1, 1, -1, 1)
    single = CalibrationMetrics(foreground=foreground)
    single(p_all, y_all, mask=m_all)
    for k, v in single.aggregate("case").items():
        if k in pooled:
            assert pooled[k] == pytest.approx(v, abs=1e-6), k
    # the pooled state is a fixed-size histogram, whatever the number of voxels seen
    assert m._pooled.top_count.shape == (1, 15) and m._pooled.cls_count.shape == (1, 3, 15)


def test_case_level_aggregate_mean_std():
    p, y, _ = _data((4, 3, 6, 6))
    m = CalibrationMetrics(("ece", "brier"))
    vals = m(p, y)
    agg = m.aggregate()
    assert agg["ece"] == pytest.approx(vals[:, 0].double().mean().item(), abs=1e-7)
    assert agg["ece_std"] == pytest.approx(vals[:, 0].double().std(unbiased=False).item(), abs=1e-7)
    assert agg["brier_skipped"] == 0


def test_case_names_and_lists_of_cases():
    p, y, _ = _data((3, 3, 6, 6))
    m = CalibrationMetrics(("ece", "brier"))
    with pytest.raises(ValueError, match=r"case_names must name each of the 3 cases of the batch \(y_pred \(3, 3, 6, 6\)\), got 1"):
        m(p, y, case_names=["only_one"])
    # MONAI's decollated form: a list of channel-first cases, each with its own name and mask item
    mask = torch.ones(3, 1, 6, 6, dtype=torch.bool)
    mask[1, :, :3] = False
    listed = m(list(p), list(y), mask=list(mask), case_names=["a", "b", "c"])
    assert m.case_names == ["a", "b", "c"]
    batched = CalibrationMetrics(("ece", "brier"))(p, y, mask=mask)
    assert torch.allclose(listed, batched, atol=1e-7)
    with pytest.raises(ValueError, match="case_names must name each of the 3 listed cases, got 2"):
        m(list(p), list(y), case_names=["a", "b"])
    # another number of classes without reset(): named, not a torch size error
    p2, y2, _ = _data((1, 4, 6, 6))
    with pytest.raises(ValueError, match=r"has accumulated 3 classes; the batch has 4 .*call reset\(\)"):
        m(p2, y2)
    m.reset()
    assert m(p2, y2).shape == (1, 2)


def test_case_without_foreground_is_nan_and_skipped():
    p, y, _ = _data((3, 3, 6, 6))
    y[1] = 0  # case 1 has no foreground
    m = CalibrationMetrics()
    with pytest.warns(UserWarning, match="liver_07.*no voxel selected"):
        vals = m(p, y, case_names=["a", "liver_07", "c"])
    assert math.isnan(vals[1, 0]) and not math.isnan(vals[0, 0])
    assert not math.isnan(vals[1, 2])  # Brier over all voxels is still defined
    agg = m.aggregate()
    assert agg["ece_skipped"] == 1 and agg["brier_skipped"] == 0
    assert agg["ece"] == pytest.approx(vals[[0, 2], 0].double().mean().item(), abs=1e-7)


@pytest.mark.parametrize(
    "p,y,match",
    [
        (torch.full((1, 2, 3, 3), 0.5) + torch.tensor([0.7, -0.7]).view(1, 2, 1, 1), torch.zeros(1, 1, 3, 3), r"\[0, 1\]"),
        (torch.full((1, 2, 3, 3), 0.6), torch.zeros(1, 1, 3, 3), "sum to 1"),
        (torch.full((1, 2, 3, 3), 0.5), torch.zeros(1, 1, 3, 4), "does not match"),
        (torch.full((1, 2, 3, 3), 0.5), torch.full((1, 1, 3, 3), 2), r"\[0, 1\] for 2 classes"),
        (torch.full((1, 2, 3, 3), 0.5), torch.full((1, 1, 3, 3), -1), "got values in"),
        (torch.full((2, 3), 0.5), torch.zeros(2), "B, C"),
        (torch.full((1, 2, 3, 3), float("nan")), torch.zeros(1, 1, 3, 3), "NaN"),
    ],
)
@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_bad_input(p, y, match, backend):
    with pytest.raises(ValueError, match=match):
        CalibrationMetrics(backend=backend)(p, y)


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_non_finite_logits_and_fractional_labels(backend):
    z = torch.randn(1, 3, 4, 4)
    z[0, 1, 2, 2] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        CalibrationMetrics(softmax=True, backend=backend)(z, torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="not integers"):
        CalibrationMetrics(backend=backend)(torch.full((1, 2, 3, 3), 0.5), torch.full((1, 1, 3, 3), 0.5))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("softmax", [False, True])
def test_backends_agree(shape, softmax):
    from calibmonai.metrics import compute_calibration_histograms

    p, y, mask = _data(shape, seed=9)
    x = torch.log(p) if softmax else p
    for fg in ("label", "none", "label_or_pred"):
        a = compute_calibration_histograms(x, y, mask=mask, foreground=fg, softmax=softmax, backend="torch")
        b = compute_calibration_histograms(x, y.to(torch.uint8), mask=mask, foreground=fg, softmax=softmax, backend="numba")
        for ta, tb in zip(a.tensors(), b.tensors()):
            torch.testing.assert_close(ta, tb, atol=2e-4, rtol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown metric"):
        CalibrationMetrics(("ece", "mce"))
    with pytest.raises(ValueError, match="foreground"):
        CalibrationMetrics(foreground="brain")
    with pytest.raises(ValueError, match="no data"):
        CalibrationMetrics().aggregate()


def test_single_metric_classes_return_scalars():
    p, y, _ = _data((2, 3, 7, 7))
    full = CalibrationMetrics()
    full(p, y)
    agg = full.aggregate()
    for cls, name in [(ExpectedCalibrationErrorMetric, "ece"), (ClasswiseCalibrationErrorMetric, "cece"),
                      (BrierScoreMetric, "brier"), (StratifiedBrierScoreMetric, "brier_plus")]:  # fmt: skip
        m = cls()
        m(p, y)
        assert m.aggregate().item() == pytest.approx(agg[name], abs=1e-6)
        mp = cls(level="pooled")
        mp(p, y)
        assert mp.aggregate().item() == pytest.approx(full.aggregate("pooled")[name], abs=1e-6)


def test_chunking_does_not_change_values():
    from calibmonai.metrics import calibration_errors, compute_calibration_histograms

    p, y, mask = _data((2, 4, 12, 10), seed=5)
    # the torch backend is the chunked one (the numba kernel, "auto" on CPU, takes no chunks)
    a = calibration_errors(compute_calibration_histograms(p, y, mask=mask, chunk_voxels=7, backend="torch"))
    b = calibration_errors(compute_calibration_histograms(p, y, mask=mask, chunk_voxels=10_000, backend="torch"))
    c = calibration_errors(compute_calibration_histograms(p, y, mask=mask, backend="numba"))
    for k in a:
        torch.testing.assert_close(a[k], b[k])
        torch.testing.assert_close(a[k], c[k])
    # against the numpy reference, every chunk boundary inside a case
    for i in range(2):
        want = _ref_case(p[i], y[i], mask[i], "label", 15)
        for k in ("ece", "cece", "brier", "brier_plus", "nll"):
            assert float(a[k][i]) == pytest.approx(want[k], abs=1e-6), k


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_a_background_index_other_than_0_hand_computed(backend):
    # one voxel, p = (0.7, 0.2, 0.1), label 0: with background 2 it is a foreground voxel,
    # Brier+ = 0.3^2 + 0.2^2 + 0.1^2 = 0.14; with background 0 it is not (no foreground voxel: NaN)
    p = torch.tensor([0.7, 0.2, 0.1]).view(1, 3, 1)
    y = torch.zeros(1, 1, 1, dtype=torch.long)
    e2 = calibration_errors(compute_calibration_histograms(p, y, num_bins=10, foreground="none", background_index=2, backend=backend), background_index=2)
    assert float(e2["brier_plus"][0]) == pytest.approx(0.14)
    e0 = calibration_errors(compute_calibration_histograms(p, y, num_bins=10, foreground="none", backend=backend))
    assert math.isnan(float(e0["brier_plus"][0]))
    # class-wise ECE without the background class 2: classes 0 and 1, |0.7 - 1| and |0.2 - 0|
    e = calibration_errors(compute_calibration_histograms(p, y, num_bins=10, foreground="none", background_index=2, backend=backend), include_background=False, background_index=2)
    assert float(e["cece"][0]) == pytest.approx((0.3 + 0.2) / 2)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_probabilities_summing_to_less_than_one_are_refused(backend):
    with pytest.raises(ValueError, match="sum to 1"):
        compute_calibration_histograms(torch.full((1, 2, 4), 0.4), torch.zeros(1, 1, 4, dtype=torch.long), backend=backend)


def test_reliability_png(tmp_path):
    p, y, _ = _data((2, 3, 10, 10))
    m = CalibrationMetrics()
    m(p, y)
    out = plot_reliability_diagram(m.reliability(), tmp_path / "sub" / "rd.png")
    data = open(out, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    out2 = plot_reliability_diagram({"a": m.reliability(), "b": m.reliability()}, tmp_path / "two.png")
    assert open(out2, "rb").read()[:4] == b"\x89PNG"


# ---- segmentation glue ------------------------------------------------------------------------------------------


def test_segmentation_metrics_dice_and_distances():
    gt = torch.zeros(1, 1, 10, 10, 10, dtype=torch.long)
    gt[0, 0, 2:6, 2:6, 2:6] = 1
    gt[0, 0, 6:9, 6:9, 6:9] = 2
    pred = gt.clone()
    pred[0, 0, 2:6, 2:6, 2:7] = 1  # class 1 grows by one slab: 64 -> 80 voxels
    seg = SegmentationMetrics(3, class_names=["bg", "a", "b"])
    row = seg(pred, gt, spacing=(1.0, 1.0, 2.0))[0]
    assert row["dsc_a"] == pytest.approx(2 * 64 / (64 + 80))
    assert row["dsc_b"] == pytest.approx(1.0)
    assert row["dsc_mean"] == pytest.approx((2 * 64 / 144 + 1) / 2)
    assert row["hd95_b"] == pytest.approx(0.0) and row["asd_b"] == pytest.approx(0.0)
    assert row["hd95_a"] == pytest.approx(2.0)  # one slab along the axis with 2 mm spacing
    agg = seg.aggregate()
    assert agg["dsc_a"] == pytest.approx(row["dsc_a"]) and agg["dsc_a_std"] == 0.0


def _two_cubes():
    lab = torch.zeros(1, 1, 20, 20, 20, dtype=torch.long)
    lab[0, 0, 2:8, 2:8, 2:8] = 1
    lab[0, 0, 10:16, 10:16, 10:16] = 2
    return lab


def test_segmentation_missed_structure_scores_the_diagonal_not_a_perfect_distance():
    # MONAI gives inf for a class the prediction misses; left out of the mean, the mean HD95 would be 0 (perfect)
    from calibmonai.metrics.segmentation import image_diagonal

    lab = _two_cubes()
    pred = lab.masked_fill(lab == 2, 0)
    spacing = (0.7, 0.9, 2.5)
    diag = math.sqrt((19 * 0.7) ** 2 + (19 * 0.9) ** 2 + (19 * 2.5) ** 2)
    assert image_diagonal((20, 20, 20), spacing) == pytest.approx(diag)
    assert image_diagonal((5, 3)) == pytest.approx(math.sqrt(16 + 4))
    row = SegmentationMetrics(3)(pred, lab, spacing)[0]
    assert row["dsc_class1"] == pytest.approx(1.0) and row["dsc_class2"] == 0.0 and row["dsc_mean"] == pytest.approx(0.5)
    assert row["hd95_class1"] == 0.0 and row["hd95_class2"] == pytest.approx(diag) and row["hd95_mean"] == pytest.approx(diag / 2)
    assert row["asd_class2"] == pytest.approx(diag) and row["asd_mean"] == pytest.approx(diag / 2)
    # voxels without spacing; a fixed distance (BraTS's 373.13 mm); MONAI's inf as NaN, left out of the mean
    assert SegmentationMetrics(3)(pred, lab)[0]["hd95_class2"] == pytest.approx(19 * math.sqrt(3))
    assert SegmentationMetrics(3, missed_distance=373.13)(pred, lab, spacing)[0]["asd_class2"] == pytest.approx(373.13)
    row = SegmentationMetrics(3, missed_distance="nan")(pred, lab, spacing)[0]
    assert math.isnan(row["hd95_class2"]) and row["hd95_mean"] == 0.0 and row["dsc_class2"] == 0.0


def test_segmentation_class_absent_from_the_reference():
    lab = _two_cubes().masked_fill(_two_cubes() == 2, 0)  # the reference lacks class 2
    fp = lab.clone()
    fp[0, 0, 15:18, 15:18, 15:18] = 2  # a false-positive class-2 blob
    spacing = (1.0, 1.0, 2.0)
    diag = math.sqrt(2 * 19**2 + 38**2)
    # default ("nan", MONAI's ignore_empty): every score of class 2 NaN, left out of the means
    for pred in (lab, fp):
        row = SegmentationMetrics(3)(pred, lab, spacing)[0]
        assert all(math.isnan(row[f"{k}_class2"]) for k in ("dsc", "asd", "hd95"))
        assert row["dsc_mean"] == pytest.approx(1.0) and row["hd95_mean"] == 0.0
    # "score" (the BraTS challenge's rule): nothing predicted where there is nothing is perfect, a false positive
    # scores DSC 0 and the missed distance
    seg = SegmentationMetrics(3, empty_reference="score")
    row = seg(lab, lab, spacing)[0]
    assert (row["dsc_class2"], row["asd_class2"], row["hd95_class2"]) == (1.0, 0.0, 0.0)
    row = seg(fp, lab, spacing)[0]
    assert row["dsc_class2"] == 0.0 and row["hd95_class2"] == pytest.approx(diag) and row["asd_class2"] == pytest.approx(diag)
    assert row["dsc_mean"] == pytest.approx(0.5)


def test_segmentation_empty_rules_on_regions_and_bad_arguments():
    from calibmonai.metrics.segmentation import BRATS_REGIONS

    gt = torch.tensor([0, 1, 2, 2, 0, 0]).view(1, 1, 6, 1, 1).repeat(1, 1, 1, 4, 4)  # no label 3: ET absent
    pred = torch.tensor([0, 1, 2, 2, 3, 0]).view(1, 1, 6, 1, 1).repeat(1, 1, 1, 4, 4)  # ET predicted
    row = SegmentationMetrics(4, regions=BRATS_REGIONS, empty_reference="score")(pred, gt)[0]
    assert row["dsc_ET"] == 0.0 and row["hd95_ET"] == pytest.approx(math.sqrt(25 + 9 + 9))
    assert row["dsc_WT"] == pytest.approx(2 * 3 / 7)
    for bad in ({"missed_distance": "max"}, {"missed_distance": -1.0}, {"missed_distance": math.inf}, {"empty_reference": "zero"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SegmentationMetrics(3, **bad)


def test_segmentation_regions():
    from calibmonai.metrics.segmentation import BRATS_REGIONS

    gt = torch.tensor([0, 1, 2, 3, 3, 0]).view(1, 1, 6, 1, 1).repeat(1, 1, 1, 4, 4)
    pred = torch.tensor([0, 1, 2, 3, 0, 0]).view(1, 1, 6, 1, 1).repeat(1, 1, 1, 4, 4)
    row = SegmentationMetrics(4, regions=BRATS_REGIONS, distances=False)(pred, gt)[0]
    assert row["dsc_ET"] == pytest.approx(2 * 1 / 3)
    assert row["dsc_TC"] == pytest.approx(2 * 2 / 5)
    assert row["dsc_WT"] == pytest.approx(2 * 3 / 7)
    with pytest.raises(ValueError, match="label maps"):
        SegmentationMetrics(4)(pred[:, :, :5], gt)


def test_numba_packed_histograms_are_exact_at_full_blocks():
    # every voxel certain of class 0 and labelled 0: each packed bin field reaches its largest value per block
    from calibmonai.metrics import compute_calibration_histograms

    n = 3 * 512 + 7
    p = torch.zeros(1, 4, n)
    p[:, 0] = 1.0
    y = torch.zeros(1, 1, n, dtype=torch.long)
    h = compute_calibration_histograms(p, y, foreground="none", backend="numba")
    assert h.top_count[0, -1].item() == n and h.top_conf[0, -1].item() == n and h.top_correct[0, -1].item() == n
    assert h.cls_count[0, 0, -1].item() == n and h.cls_prob[0, 0, -1].item() == n and h.cls_hit[0, 0, -1].item() == n
    assert (h.cls_count[0, 1:, 0] == n).all() and (h.cls_prob[0, 1:] == 0).all() and (h.cls_hit[0, 1:] == 0).all()
    assert h.top_count.sum().item() == n and h.cls_count.sum().item() == 4 * n


def test_numba_fixed_point_sums_match_float64():
    from calibmonai.metrics import compute_calibration_histograms

    g = torch.Generator().manual_seed(5)
    p = (torch.randn(2, 3, 40, 50, generator=g) * 2).softmax(1)
    y = torch.randint(0, 3, (2, 1, 40, 50), generator=g)
    h = compute_calibration_histograms(p, y, foreground="none", backend="numba")
    pn = p.double().numpy()
    for b in range(2):
        for k in range(3):
            v = pn[b, k].ravel()
            bins = np.minimum((v.astype(np.float32) * np.float32(15)).astype(int), 14)
            want = np.bincount(bins, weights=v, minlength=15)
            np.testing.assert_allclose(h.cls_prob[b, k].numpy(), want, rtol=0, atol=1e-7 * v.size)
            np.testing.assert_array_equal(h.cls_count[b, k].numpy(), np.bincount(bins, minlength=15))


def test_numba_tolerates_probabilities_a_little_below_zero():
    from calibmonai.metrics import compute_calibration_histograms

    g = torch.Generator().manual_seed(6)
    p = (torch.randn(1, 3, 20, 20, generator=g) * 4).softmax(1)
    p[0, 0] += p[0, 1] + 5e-4  # class 1 is -5e-4 everywhere (within prob_tol of 1e-3), the sums stay 1
    p[0, 1] = -5e-4
    y = torch.randint(0, 3, (1, 1, 20, 20), generator=g)
    a = compute_calibration_histograms(p, y, foreground="none", backend="torch")
    b = compute_calibration_histograms(p, y, foreground="none", backend="numba")
    for ta, tb in zip(a.tensors(), b.tensors()):
        torch.testing.assert_close(ta, tb, atol=400 * 5e-4, rtol=0)
    assert torch.equal(a.cls_count, b.cls_count) and torch.equal(a.cls_hit, b.cls_hit)
    assert (b.cls_prob >= 0).all()


def test_numba_compilation_is_announced_once(monkeypatch):
    """One line before a kernel that is not in numba's cache yet compiles; nothing for a cached or compiled one."""
    import calibmonai._vector_math as vm
    import calibmonai.progress

    said = []
    monkeypatch.setattr(calibmonai.progress, "progress", lambda message, name="calibmonai": said.append(message))

    class FakeDispatcher:
        signatures = []

        class _cache:
            class _cache_file:
                _index_path = "/nonexistent/kernel.nbi"

    monkeypatch.setattr(vm, "_ANNOUNCED", set())
    vm.announce_compile(FakeDispatcher(), "a test kernel")
    vm.announce_compile(FakeDispatcher(), "a test kernel")
    assert len(said) == 1 and "compiling the numba kernels of a test kernel (first use only" in said[0]

    class Compiled(FakeDispatcher):
        signatures = ["(float32[:],)"]

    vm.announce_compile(Compiled(), "another kernel")
    assert len(said) == 1
