"""More input checks of the losses and metrics (found by an audit): boolean targets read as their integer
equivalent, empty inputs and foreign types give a ValueError naming them, SegmentationMetrics refuses non-integral
label maps and takes a scalar spacing, and the losses refuse non-finite or non-numeric hyper-parameters.

Each check compares with an independent numpy reference written here, or with the integer-target value."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from calibmonai.losses import METHODS, fused_disabled, get_loss
from calibmonai.losses.utils import to_class_indices
from calibmonai.metrics import CalibrationMetrics, SegmentationMetrics, compute_calibration_histograms

C = 4


def _data(seed: int = 0, shape: tuple[int, ...] = (2, C, 6, 5)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g) * 2
    y = torch.randint(0, shape[1], (shape[0], 1) + shape[2:], generator=g)
    return z, y


def _onehot(y: torch.Tensor, c: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(y[:, 0], c).movedim(-1, 1)


def _loss_and_grad(name: str, z: torch.Tensor, target: torch.Tensor) -> tuple[float, torch.Tensor]:
    kw = {"num_classes": z.shape[1], "spatial_dims": z.ndim - 2} if METHODS[name].needs_geometry else {}
    x = z.clone().requires_grad_(True)
    loss = get_loss(name, **kw)(x, target)
    loss.backward()
    return float(loss), x.grad


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


# ------------------------------------------------------------------------------------------ boolean targets


@pytest.mark.parametrize("fused", [True, False], ids=["fast_path", "torch_path"])
@pytest.mark.parametrize("name", list(METHODS))
def test_bool_onehot_target_gives_the_int_onehot_loss(name, fused):
    z, y = _data()
    onehot = _onehot(y, C)
    if fused:
        ref_value, ref_grad = _loss_and_grad(name, z, onehot)
        value, grad = _loss_and_grad(name, z, onehot.bool())
        idx_value, _ = _loss_and_grad(name, z, y)
    else:
        with fused_disabled():
            ref_value, ref_grad = _loss_and_grad(name, z, onehot)
            value, grad = _loss_and_grad(name, z, onehot.bool())
            idx_value, _ = _loss_and_grad(name, z, y)
    assert math.isfinite(value)
    assert value == ref_value and torch.equal(grad, ref_grad)
    assert value == pytest.approx(idx_value, rel=1e-6)  # and both are the loss of the class indices


def test_bool_targets_cross_entropy_matches_numpy():
    z, y = _data(1)
    log_p = _np_log_softmax(z.double().numpy())
    yy = y[:, 0].numpy()
    ref = -np.take_along_axis(log_p, yy[:, None], 1).mean()
    assert float(get_loss("ce")(z, _onehot(y, C).bool())) == pytest.approx(ref, rel=1e-5)
    # a boolean index mask of a 2-class task reads as labels 0/1
    z2 = z[:, :2]
    mask = y > 1
    log_p2 = _np_log_softmax(z2.double().numpy())
    ref2 = -np.take_along_axis(log_p2, mask.numpy().astype(np.int64), 1).mean()
    for fused in (True, False):
        if fused:
            value = float(get_loss("ce")(z2, mask))
        else:
            with fused_disabled():
                value = float(get_loss("ce")(z2, mask))
        assert value == pytest.approx(ref2, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int8, torch.bfloat16])
def test_onehot_of_many_classes_reads_the_right_indices(dtype):
    # 300 classes: a class weight of the target's own 8-bit (or bfloat16) dtype cannot hold 299 exactly
    c = 300
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, c, (2, 3, 2), generator=g)
    labels[0, 0, 0], labels[1, 2, 1] = 299, 256
    onehot = torch.nn.functional.one_hot(labels, c).movedim(-1, 1).to(dtype)
    idx = to_class_indices(torch.zeros(2, c, 3, 2), onehot)
    expected = np.argmax(onehot.float().numpy(), axis=1)
    assert idx.dtype == torch.int64
    np.testing.assert_array_equal(idx.numpy(), expected)


def _np_calibration(p: np.ndarray, y: np.ndarray, bins: int = 15) -> dict[str, float]:
    """Per-case ECE, CECE (every class), NLL on the ground-truth foreground, Brier on all voxels; mean over cases."""

    def binned(conf: np.ndarray, hit: np.ndarray) -> float:
        idx = np.minimum((conf * bins).astype(int), bins - 1)
        return sum(abs(hit[idx == b].mean() - conf[idx == b].mean()) * (idx == b).sum() for b in range(bins) if (idx == b).any()) / len(conf)

    out: dict[str, list[float]] = {"ece": [], "cece": [], "nll": [], "brier": []}
    for i in range(p.shape[0]):
        pp = p[i].reshape(p.shape[1], -1).astype(np.float64)
        yy = y[i].reshape(-1)
        fg = yy != 0
        pf, yf = pp[:, fg], yy[fg]
        out["ece"].append(binned(pf.max(0), (pf.argmax(0) == yf).astype(float)))
        out["cece"].append(np.mean([binned(pf[k], (yf == k).astype(float)) for k in range(pp.shape[0])]))
        out["nll"].append(-np.log(pf[yf, np.arange(len(yf))]).mean())
        out["brier"].append(((pp - np.eye(pp.shape[0])[yy].T) ** 2).sum(0).mean())
    return {k: float(np.mean(v)) for k, v in out.items()}


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_calibration_metrics_take_bool_onehot_labels(backend):
    z, y = _data(2, (3, C, 6, 5, 4))
    p = torch.softmax(z, 1)
    onehot = _onehot(y, C)
    results = []
    for target in (onehot, onehot.bool(), y):
        metric = CalibrationMetrics(backend=backend)
        metric(p, target)
        results.append((metric.aggregate(), metric.aggregate("pooled")))
    assert results[1] == results[0] == results[2]  # bool one-hot == int one-hot == indices, exactly
    ref = _np_calibration(p.numpy(), y[:, 0].numpy())
    for key, value in ref.items():
        assert results[1][0][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


# ------------------------------------------------------------------------------------------ empty inputs, types


@pytest.mark.parametrize("shape", [(0, C, 8, 8), (2, C, 0, 8), (2, C, 8, 0, 3)])
def test_calibration_metrics_refuse_empty_inputs(shape):
    p = torch.zeros(shape)
    y = torch.zeros((shape[0], 1) + shape[2:], dtype=torch.long)
    for backend in ("auto", "torch"):
        with pytest.raises(ValueError, match=r"y_pred holds no voxel \(an empty batch or spatial size\), shape " + re.escape(str(tuple(shape)))):
            CalibrationMetrics(backend=backend)(p, y)
    with pytest.raises(ValueError, match="y_pred holds no voxel"):
        compute_calibration_histograms(p, y)
    # a failed call leaves nothing behind: the metric still scores the next batch
    metric = CalibrationMetrics(("brier",))
    with pytest.raises(ValueError, match="holds no voxel"):
        metric(p, y)
    ones = torch.zeros(1, 2, 2, 1)
    ones[:, 1] = 1.0
    metric(ones * 0.75 + 0.125, torch.ones(1, 1, 2, 1, dtype=torch.long))  # p = (0.125, 0.875), y = 1
    assert metric.aggregate()["brier"] == pytest.approx(2 * 0.125**2)


def test_calibration_metrics_name_the_type_of_foreign_inputs():
    p, y = torch.softmax(_data()[0], 1), _data()[1]
    with pytest.raises(ValueError, match=r"y must be a tensor of labels .* got ndarray \(numpy: torch.as_tensor\(y\)\)"):
        CalibrationMetrics()(p, y.numpy())
    with pytest.raises(ValueError, match=r"y_pred must be a tensor .* got ndarray \(numpy: torch.as_tensor\(y_pred\)\)"):
        CalibrationMetrics()(p.numpy(), y)
    with pytest.raises(ValueError, match="y must be a tensor of labels .* got NoneType"):
        CalibrationMetrics()(p)
    with pytest.raises(ValueError, match="list no case"):
        CalibrationMetrics()([], [])
    with pytest.raises(ValueError, match="y item 1 must be a channel-first tensor, got ndarray"):
        CalibrationMetrics()([p[0], p[1]], [y[0], y[1].numpy()])
    metric = CalibrationMetrics(("nll",), foreground="none")
    metric([p[0], p[1]], [y[0], y[1]])  # the list form still works
    yy = y[:, 0].numpy()
    ref = -np.log(np.take_along_axis(p.double().numpy(), yy[:, None], 1)).reshape(2, -1).mean(1).mean()
    assert metric.aggregate()["nll"] == pytest.approx(ref, rel=1e-5)


# ------------------------------------------------------------------------------------------ SegmentationMetrics


def _squares() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.zeros(1, 1, 12, 12, dtype=torch.long)
    g[0, 0, 2:6, 2:6] = 1
    p = torch.zeros_like(g)
    p[0, 0, 3:7, 2:6] = 1  # the square shifted by one voxel along the first spatial axis
    return p, g


def test_segmentation_metrics_refuse_non_integral_label_maps():
    p, g = _squares()
    with pytest.raises(ValueError, match=r"pred must hold integer class labels .* 144 of its 144 values are not whole numbers"):
        SegmentationMetrics(2)(g.float() + 0.4, g)
    probs = torch.rand(1, 1, 12, 12)
    with pytest.raises(ValueError, match=r"label must hold integer class labels .* are not whole numbers"):
        SegmentationMetrics(2)(g, probs)
    bad = g.float()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"1 of its 144 values are not whole numbers \(or not finite\)"):
        SegmentationMetrics(2)(bad, g)
    with pytest.raises(ValueError, match=r"pred must be a torch.Tensor label map .* got ndarray \(numpy: torch.as_tensor\(pred\)\)"):
        SegmentationMetrics(2)(p.numpy(), g)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\] for 2 classes, got values in \[-1, 1\]"):
        SegmentationMetrics(2)(p - (p == 0).long(), g)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2, got 3.0"):
        SegmentationMetrics(3.0)
    # whole-number floats and booleans are label maps: the same scores as the integers
    pn, gn = p.numpy()[0, 0].astype(bool), g.numpy()[0, 0].astype(bool)
    dsc = 2 * (pn & gn).sum() / (pn.sum() + gn.sum())
    assert dsc == 0.75
    for pred, label in ((p.float(), g.double()), (p.bool(), g.bool()), (p, g)):
        row = SegmentationMetrics(2)(pred, label)[0]
        assert row["dsc_class1"] == pytest.approx(dsc)
        # border voxels of a 4x4 square shifted by one voxel: 6 of 12 at distance 1, the others 0
        assert row["asd_class1"] == pytest.approx(0.5) and row["hd95_class1"] == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(1, 1, 0, 4, 4), (0, 1, 4, 4)])
def test_segmentation_metrics_refuse_empty_volumes(shape):
    empty = torch.zeros(shape, dtype=torch.long)
    with pytest.raises(ValueError, match=r"pred and label hold no voxel \(an empty batch or spatial size\)"):
        SegmentationMetrics(3)(empty, empty)


def test_segmentation_metrics_take_a_scalar_spacing():
    p, g = _squares()
    by_list = SegmentationMetrics(2)(p, g, spacing=[2.0, 2.0])[0]
    for spacing in (2.0, 2, np.float32(2.0), torch.tensor(2.0)):
        row = SegmentationMetrics(2)(p, g, spacing=spacing)[0]
        assert row == by_list
        assert row["hd95_class1"] == pytest.approx(2.0) and row["asd_class1"] == pytest.approx(1.0)  # 1 voxel of 2 mm
    # the shift is along the first axis: only its spacing counts
    assert SegmentationMetrics(2)(p, g, spacing=[2.0, 5.0])[0]["hd95_class1"] == pytest.approx(2.0)
    # a missed class scores the image diagonal in the units of the (isotropic or per-case) spacing
    diag = math.sqrt((11 * 2.0) ** 2 + (11 * 5.0) ** 2)
    assert SegmentationMetrics(2)(torch.zeros_like(g), g, spacing=[[2.0, 5.0]])[0]["hd95_class1"] == pytest.approx(diag)
    assert SegmentationMetrics(2)(torch.zeros_like(g), g, spacing=3)[0]["asd_class1"] == pytest.approx(math.sqrt(2) * 33)
    for bad in ([1.0], [1.0, 2.0, 3.0], [1.0, -1.0], [1.0, float("nan")], "2", 0.0):
        with pytest.raises(ValueError, match=r"spacing must be a number \(isotropic\), one value > 0 per spatial dimension of \(12, 12\)"):
            SegmentationMetrics(2)(p, g, spacing=bad)


# ------------------------------------------------------------------------------------------ loss hyper-parameters

FLOAT_PARAMETERS = [
    ("ecp", "beta", {}),
    ("ls", "alpha", {}),
    ("svls", "sigma", {}),
    ("mbls", "margin", {}),
    ("mbls", "alpha", {}),
    ("mbls_l2", "margin", {}),
    ("mbls_dice", "alpha", {}),
    ("meep_ce_entropy", "lam", {}),
    ("meep_dice_kl", "lam", {}),
    ("meep_ce_kl", "eps", {}),
    ("focal", "gamma", {}),
    ("focal", "alpha", {}),
    ("nacl", "alpha", {"num_classes": C, "spatial_dims": 2}),
    ("nacl", "sigma", {"num_classes": C, "spatial_dims": 2, "kernel_ops": "gaussian"}),
    ("dice", "smooth_nr", {}),
    ("ce_dice", "lambda_ce", {}),
]


@pytest.mark.parametrize("name,param,extra", FLOAT_PARAMETERS, ids=[f"{n}-{p}" for n, p, _ in FLOAT_PARAMETERS])
def test_loss_hyper_parameters_must_be_finite_numbers(name, param, extra):
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match=rf"{param} must be a finite number, got {bad}"):
            get_loss(name, **extra, **{param: bad})
    for bad in ("0.1", None, [0.1, 0.2, 0.3], True):
        if param == "alpha" and name == "focal" and isinstance(bad, list):
            continue  # focal's alpha may be a per-class sequence (MONAI)
        if param == "alpha" and name == "focal" and bad is None:
            continue  # None: no class weighting (MONAI's default)
        with pytest.raises(ValueError, match=rf"{param} must be a real number \(int or float\), got .* of type {type(bad).__name__}"):
            get_loss(name, **extra, **{param: bad})


def test_numeric_hyper_parameter_types_give_the_float_loss():
    z, y = _data(4)
    p = torch.softmax(z.double(), 1).numpy()
    log_p = np.log(p)
    yy = y[:, 0].numpy()
    ce = -np.take_along_axis(log_p, yy[:, None], 1).mean()
    ecp = ce - 0.25 * (-(p * log_p)).mean()  # mean over voxels and classes
    hinge = np.maximum(z.double().numpy().max(1, keepdims=True) - z.double().numpy() - 1.5, 0).mean()
    for beta in (0.25, np.float32(0.25), np.float64(0.25), torch.tensor(0.25)):
        assert float(get_loss("ecp", beta=beta)(z, y)) == pytest.approx(ecp, rel=1e-5)
    for margin in (1.5, np.float32(1.5), torch.tensor(1.5)):
        loss = get_loss("mbls", margin=margin, alpha=np.int64(2))
        assert loss.margin == 1.5 and loss.alpha == 2.0
        assert float(loss(z, y)) == pytest.approx(ce + 2 * hinge, rel=1e-5)
    assert float(get_loss("focal", gamma=np.int64(0))(z, y)) == pytest.approx(ce / C, rel=1e-5)  # gamma 0: CE / C
    with pytest.raises(ValueError, match=r"MarginLabelSmoothingLoss: margin must be a finite number, got nan"):
        get_loss("mbls", num_classes=4, margin=float("nan"))
    with pytest.raises(ValueError, match=r"ConfidencePenaltyLoss: beta must be a real number \(int or float\), got '0.1' of type str"):
        get_loss("ecp", num_classes=4, beta="0.1")
    with pytest.raises(ValueError, match=r"eps must lie in \(0, 1\), got 0.0"):
        get_loss("meep_ce_kl", eps=0.0)
    with pytest.raises(ValueError, match="margin and alpha must be >= 0"):  # the range checks stay as they were
        get_loss("mbls", margin=-1)


def test_focal_takes_per_class_weights_as_numpy_like_monai():
    import numpy as np

    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (2, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    weights = [0.2, 0.3, 0.5]
    as_list = get_loss("focal", num_classes=3, spatial_dims=2, alpha=weights)(x, y)
    as_numpy = get_loss("focal", num_classes=3, spatial_dims=2, alpha=np.array(weights))(x, y)
    assert float(as_numpy) == pytest.approx(float(as_list), rel=1e-6)
    with pytest.raises(ValueError, match="write 1.0e-3"):
        get_loss("mbls", num_classes=3, spatial_dims=2, margin="1e-3")
