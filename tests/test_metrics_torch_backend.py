"""The device backend of the calibration histograms (calibmonai.metrics._torch_backend) against the numba CPU
kernel and hand-computed cases; its Triton kernel under Triton's CPU interpreter; CUDA checks skip without a GPU.

Triton's interpreter must be switched on before ``triton`` is first imported: this module sets
``TRITON_INTERPRET=1`` at import (collection) time on machines without CUDA, which changes nothing else (the
automatic dispatch sends only CUDA tensors to Triton).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from dataclasses import fields  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import reference as ref  # noqa: E402
from calibmonai._triton import HAVE_TRITON, interpreting  # noqa: E402
from calibmonai.metrics import CalibrationMetrics, calibration_errors, compute_calibration_histograms  # noqa: E402
from calibmonai.metrics.calibration import CalibrationHistograms  # noqa: E402
from calibmonai.metrics._torch_backend import device_histograms  # noqa: E402

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
TRITON_CPU = HAVE_TRITON and interpreting()
needs_triton_cpu = pytest.mark.skipif(not TRITON_CPU, reason="needs triton with TRITON_INTERPRET=1 set before its import")


def _data(shape, seed=0, temp=3.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g) * temp
    y = torch.randint(0, shape[1], (shape[0], 1) + shape[2:], generator=g)
    z = z + 3.0 * torch.nn.functional.one_hot(y[:, 0], shape[1]).movedim(-1, 1) * (torch.rand((shape[0], 1) + shape[2:], generator=g) < 0.6)
    mask = torch.rand((shape[0], 1) + shape[2:], generator=g) < 0.7
    return z, y, mask


def _device(z, y, mask, impl, foreground="label", softmax=False, classwise=True, num_bins=15, chunk=1 << 21, bg=0, with_nll=True):
    b, c = z.shape[:2]
    hist = CalibrationHistograms.zeros(b, c, num_bins, z.device)
    m = None if mask is None else mask.reshape(b, -1)
    return device_histograms(z.reshape(b, c, -1), y.reshape(b, -1), m, hist, num_bins, foreground, softmax, classwise, bg, 1e-3, with_nll, chunk_voxels=chunk, impl=impl)


def _assert_same(got: CalibrationHistograms, want: CalibrationHistograms, rel=2e-6):
    """Counts equal, sums equal to float32 rounding (relative to the largest entry of each field)."""
    for f, g, w in zip(fields(want), got.tensors(), want.tensors()):
        g, w = g.double().cpu(), w.double().cpu()
        if f.name in ("top_count", "top_correct", "cls_count", "cls_hit", "n", "brier_n", "brier_fg_n"):
            assert torch.equal(g, w), f.name
        else:
            assert torch.allclose(g, w, rtol=0, atol=rel * max(1.0, float(w.abs().max()))), (f.name, float((g - w).abs().max()))


@pytest.mark.parametrize("foreground", ["label", "none", "label_or_pred"])
@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("use_mask", [False, True])
def test_torch_impl_matches_numba_kernel(foreground, softmax, use_mask):
    z, y, mask = _data((2, 4, 13, 11, 9), seed=1)
    x = z if softmax else z.softmax(1)
    m = mask if use_mask else None
    want = compute_calibration_histograms(x, y, mask=m, foreground=foreground, softmax=softmax, backend="numba")
    # slices of 500 voxels: several chunks, the last one partial
    got = _device(x, y, m, "torch", foreground, softmax, chunk=500)
    _assert_same(got, want)


def test_histogram_replicas_as_on_cuda_give_the_same_sums():
    # on CUDA each histogram has several copies (spreading the atomic adds); check that layout on the CPU
    from calibmonai.metrics._torch_backend import _torch_pass

    z, y, mask = _data((2, 3, 10, 9, 8), seed=7)
    p = z.softmax(1).reshape(2, 3, -1)
    args = (p, y.reshape(2, -1), mask.reshape(2, -1), 15, 2, False, True, 0, True, 300)
    one, many = _torch_pass(*args, replicas=1), _torch_pass(*args, replicas=64)
    for a, b in zip(one, many):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-9)
    assert float(many[0][:, 0].sum()) == float(many[2][:, 0].sum()) > 0  # every selected voxel in one top-label bin


def test_torch_impl_matches_numpy_metrics_and_other_bins():
    z, y, mask = _data((3, 3, 17, 14), seed=2)
    p = z.softmax(1)
    got = calibration_errors(_device(p, y, mask, "torch", "label_or_pred", num_bins=7, chunk=100))
    for b in range(3):
        pb = p[b].double().numpy().reshape(3, -1)
        yb = y[b].numpy().reshape(-1)
        mb = mask[b].numpy().reshape(-1)
        sel = mb & ((yb != 0) | (pb.argmax(0) != 0))
        assert got["ece"][b].item() == pytest.approx(ref.ece(pb, yb, 7, sel), abs=2e-6)
        assert got["cece"][b].item() == pytest.approx(ref.cece(pb, yb, 7, sel), abs=2e-6)
        assert got["brier"][b].item() == pytest.approx(ref.brier(pb, yb, mb), abs=2e-6)
        assert got["brier_plus"][b].item() == pytest.approx(ref.brier(pb, yb, mb & (yb != 0)), abs=2e-6)
        assert got["nll"][b].item() == pytest.approx(ref.nll(pb, yb, sel), abs=2e-6)


def _tie_case():
    """4 voxels, 3 classes, 2 bins. Ties at the maximum: the prediction is the lowest tied class."""
    p = torch.tensor([[0.4, 0.4, 0.2], [0.5, 0.25, 0.25], [0.2, 0.4, 0.4], [0.1, 0.3, 0.6]]).T.reshape(1, 3, 4)
    y = torch.tensor([[1, 0, 2, 2]])
    return p, y


def _check_tie_case(hist):
    # voxel 0: tie of classes 0 and 1 -> predicted 0, label 1: wrong; voxel 1: right; voxel 2: tie 1/2 -> predicted 1,
    # label 2: wrong; voxel 3: right. Confidences 0.4, 0.5, 0.4, 0.6: bin 0 holds voxels 0 and 2, bin 1 voxels 1, 3.
    assert hist.top_count[0].tolist() == [2.0, 2.0]
    assert hist.top_correct[0].tolist() == [0.0, 2.0]
    assert hist.top_conf[0].tolist() == pytest.approx([0.8, 1.1])
    ece = calibration_errors(hist)["ece"][0].item()
    assert ece == pytest.approx((0.8 + (2 - 1.1)) / 4)


def test_tie_rule_first_index_and_hand_computed_ece():
    p, y = _tie_case()
    _check_tie_case(_device(p, y, None, "torch", "none", num_bins=2))


def test_tie_rule_in_label_or_pred_selection():
    # background 0; voxel 0 label 0 with a 0/1 tie -> predicted 0 (background): not selected
    p = torch.tensor([[0.45, 0.45, 0.1], [0.2, 0.7, 0.1]]).T.reshape(1, 3, 2)
    y = torch.tensor([[0, 0]])
    hist = _device(p, y, None, "torch", "label_or_pred", num_bins=5)
    assert hist.n.tolist() == [1.0]  # only voxel 1 (predicted class 1)
    assert hist.top_count[0].tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]


def test_bad_input_raises_after_the_pass_with_the_reference_messages():
    p = torch.full((1, 2, 4), 0.5)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\].*\[0, 5\]"):
        _device(p, torch.tensor([[0, 1, 5, 1]]), None, "torch")
    with pytest.raises(ValueError, match="not integers"):
        _device(p, torch.tensor([[0.0, 1.5, 1.0, 0.0]]), None, "torch")
    with pytest.raises(ValueError, match="sum to 1"):
        _device(torch.full((1, 2, 4), 0.6), torch.tensor([[0, 1, 1, 0]]), None, "torch")
    bad = p.clone()
    bad[0, 0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        _device(bad, torch.tensor([[0, 1, 1, 0]]), None, "torch")
    logits = torch.zeros(1, 2, 4)
    logits[0, 1, 2] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        _device(logits, torch.tensor([[0, 1, 1, 0]]), None, "torch", softmax=True)


def test_float_bool_and_uint8_labels_and_no_classwise():
    z, y, mask = _data((1, 2, 6, 7), seed=3)
    p = z.softmax(1)
    want = _device(p, y, mask, "torch")
    for lab in (y.float(), y.bool(), y.to(torch.uint8)):
        _assert_same(_device(p, lab, mask, "torch"), want)
    got = _device(p, y, mask, "torch", classwise=False, with_nll=False)
    assert float(got.cls_count.sum()) == 0.0 and float(got.nll_sum.sum()) == 0.0
    assert torch.equal(got.top_count, want.top_count)


def test_unknown_impl_and_triton_without_device():
    z, y, _ = _data((1, 2, 4, 4))
    with pytest.raises(ValueError, match="impl must be"):
        _device(z.softmax(1), y, None, "cuda")
    if not TRITON_CPU:
        with pytest.raises(ValueError, match="impl='triton' needs"):
            _device(z.softmax(1), y, None, "triton")


@needs_triton_cpu
@pytest.mark.parametrize("foreground,softmax,use_mask", [("label", False, True), ("label_or_pred", True, False), ("none", True, True)])
def test_triton_kernel_matches_numba_kernel_under_the_interpreter(foreground, softmax, use_mask):
    # 5 classes (padded to 8 in the kernel) and a volume that leaves the last block partial
    z, y, mask = _data((2, 5, 9, 8, 7), seed=4)
    x = z if softmax else z.softmax(1)
    m = mask if use_mask else None
    want = compute_calibration_histograms(x, y, mask=m, foreground=foreground, softmax=softmax, backend="numba")
    _assert_same(_device(x, y, m, "triton", foreground, softmax), want)


@needs_triton_cpu
def test_triton_kernel_with_blocks_sharing_partial_sum_slots(monkeypatch):
    # large volumes have more blocks than slots: several programs add into each slot
    from calibmonai.metrics import _triton_histogram

    monkeypatch.setattr(_triton_histogram, "_SLOTS", 2)
    z, y, mask = _data((2, 3, 16, 12, 10), seed=8)
    p = z.softmax(1)
    want = compute_calibration_histograms(p, y, mask=mask, foreground="label_or_pred", backend="numba")
    _assert_same(_device(p, y, mask, "triton", "label_or_pred"), want)


@needs_triton_cpu
def test_triton_kernel_ties_and_bad_input_under_the_interpreter():
    p, y = _tie_case()
    _check_tie_case(_device(p, y, None, "triton", "none", num_bins=2))
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        _device(p, torch.tensor([[0, 1, 3, 1]]), None, "triton")
    with pytest.raises(ValueError, match="not integers"):
        _device(p, torch.tensor([[0.0, 1.5, 1.0, 0.0]]), None, "triton")
    with pytest.raises(ValueError, match="sum to 1"):
        _device(p * 1.1, y, None, "triton")


def _one_hot_case():
    """6 voxels of probability exactly 1 (one-hot), labels wrong at 3 of them, 10 bins: every voxel in the top bin
    (1.0 is clamped into the last bin), ECE = |3 - 6| / 6 = 0.5, NLL = -log(1e-12) = 27.631 at the wrong voxels."""
    y_pred = torch.tensor([0, 1, 2, 0, 1, 2])
    p = torch.nn.functional.one_hot(y_pred, 3).T.float().reshape(1, 3, 6)
    y = torch.tensor([[0, 1, 2, 1, 2, 0]])
    return p, y


def _check_one_hot_case(hist):
    assert hist.top_count[0].tolist() == [0.0] * 9 + [6.0]
    assert hist.top_correct[0].tolist() == [0.0] * 9 + [3.0]
    e = calibration_errors(hist)
    assert float(e["ece"][0]) == pytest.approx(0.5)
    assert float(e["nll"][0]) == pytest.approx(3 * 27.631021115928547 / 6, rel=1e-6)


def test_probability_one_lands_in_the_last_bin_and_nll_is_floored():
    p, y = _one_hot_case()
    _check_one_hot_case(_device(p, y, None, "torch", "none", num_bins=10))
    _check_one_hot_case(compute_calibration_histograms(p, y, num_bins=10, foreground="none", backend="numba"))


def test_probabilities_summing_to_less_than_one_are_refused_on_the_device_path():
    with pytest.raises(ValueError, match="sum to 1"):
        _device(torch.full((1, 2, 4), 0.4), torch.tensor([[0, 1, 1, 0]]), None, "torch")


@needs_triton_cpu
def test_triton_probability_one_nll_floor_and_sums_below_one():
    p, y = _one_hot_case()
    _check_one_hot_case(_device(p, y, None, "triton", "none", num_bins=10))
    with pytest.raises(ValueError, match="sum to 1"):
        _device(torch.full((1, 2, 4), 0.4), torch.tensor([[0, 1, 1, 0]]), None, "triton")


@needs_cuda
@pytest.mark.parametrize("impl", ["auto", "torch"])
def test_cuda_ties_probability_one_and_sums_below_one(impl):
    # the interpreter ignores tl.argmax's tie_break_left: the tie rule of the compiled kernel is checked here
    p, y = _tie_case()
    _check_tie_case(_device(p.cuda(), y.cuda(), None, impl, "none", num_bins=2))
    p, y = _one_hot_case()
    _check_one_hot_case(_device(p.cuda(), y.cuda(), None, impl, "none", num_bins=10))
    with pytest.raises(ValueError, match="sum to 1"):
        _device(torch.full((1, 2, 4), 0.4, device="cuda"), torch.tensor([[0, 1, 1, 0]], device="cuda"), None, impl)


@needs_cuda
@pytest.mark.parametrize("impl", ["auto", "torch"])
def test_cuda_metrics_equal_the_cpu_kernel(impl):
    z, y, mask = _data((2, 4, 24, 20, 16), seed=5)
    p = z.softmax(1)
    want = compute_calibration_histograms(p, y, mask=mask, foreground="label_or_pred", backend="numba")
    got = _device(p.cuda(), y.cuda(), mask.cuda(), impl, "label_or_pred")
    _assert_same(got, want)
    metric = CalibrationMetrics(foreground="label_or_pred")
    cpu = CalibrationMetrics(foreground="label_or_pred")
    assert np.allclose(metric(p.cuda(), y.cuda(), mask=mask.cuda()).cpu().numpy(), cpu(p, y, mask=mask).numpy(), atol=1e-5)


@needs_cuda
def test_cuda_metrics_run_without_host_sync_before_the_checks():
    # the whole pass queues on the device (the checks are read back once, after it): in sync-debug "error" mode
    # any synchronising call inside the pass would raise
    from calibmonai._triton import triton_enabled
    from calibmonai.metrics._torch_backend import _torch_pass

    z, y, _ = _data((1, 4, 32, 32, 32), seed=6)
    p, yc = z.softmax(1).cuda().reshape(1, 4, -1), y.cuda().reshape(1, -1)
    results = []
    torch.cuda.set_sync_debug_mode("error")
    try:
        results.append(_torch_pass(p, yc, None, 15, 1, False, True, 0, True, 1 << 12))
        if triton_enabled():
            from calibmonai.metrics._triton_histogram import triton_histograms

            results.append(triton_histograms(p, yc, None, 15, 1, False, True, 0, True))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for top, cls, sc, chk in results:
        assert float(top[:, 0].sum()) == float(sc[0, 0]) == float((y != 0).sum())
        assert chk.tolist()[:2] == [0.0, 3.0]
