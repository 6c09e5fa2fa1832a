"""The fused CPU path of the losses (float32, one pass) against the numpy references and the torch path."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

import reference as ref
from calibmonai import _vector_math as vector_math
from calibmonai.losses import get_loss
from calibmonai.losses import _fused_kernel as K
from calibmonai.losses import fused_disabled, set_fused_enabled

FUSED = ["ce", "ecp", "ls", "svls", "mbls", "mbls_l2", "mbls_dice", "meep_ce_entropy", "meep_ce_kl", "meep_dice_entropy", "meep_dice_kl"]
# shapes cross a block boundary (512 voxels) and a chunk boundary, 2D and 3D, 2 to 6 classes
SHAPES = [(2, 3, 37, 29), (2, 4, 11, 13, 9), (1, 2, 40, 33), (3, 6, 9, 10, 11), (2, 5, 3, 1000), (1, 3, 1, 7, 90)]
PARAMS = {"mbls": {"margin": 2.0}, "mbls_l2": {"margin": 2.0}, "mbls_dice": {"margin": 2.0}}
MONAI_BACKED = ["ce_dice", "focal", "nacl"]  # MONAI's losses, which the kernel reproduces with the registry's settings


def _loss(name, shape, **kw):
    return get_loss(name, num_classes=shape[1], spatial_dims=len(shape) - 2, **PARAMS.get(name, {}), **kw)


def _data(shape, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g) * scale
    y = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g)
    return z, y


def _numpy_value(name, z, y):
    z, y = z.astype(np.float64), y
    if name == "ce":
        return ref.ce(z, y)
    if name == "ecp":
        return ref.ecp(z, y, 0.1)
    if name == "ls":
        return ref.ls(z, y, 0.1)
    if name == "svls":
        return ref.svls(z, y, 1.0)[0]
    if name in ("mbls", "mbls_l2"):
        return ref.mbls(z, y, 2.0, 0.1, "l1" if name == "mbls" else "l2")
    if name == "mbls_dice":
        return ref.mbls_dice(z, y, 2.0, 0.1, include_background=False)  # the reference code leaves class 0 out
    base = ref.ce(z, y) if "_ce_" in name else ref.dice_loss(z, y)
    if name.endswith("entropy"):
        return base - 0.3 * ref.meep_term(z, y, "entropy")
    return base + 0.3 * ref.meep_term(z, y, "kl")


def _value_and_grad(loss, z, target):
    x = z.clone().requires_grad_(True)
    value = loss(x, target)
    value.backward()
    return value.detach(), x.grad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", FUSED)
def test_fused_value_matches_numpy_and_gradient_matches_float64_torch(name, shape):
    z, y = _data(shape, scale=4.0)
    loss = get_loss(name, **PARAMS.get(name, {}))
    value, grad = _value_and_grad(loss, z, y.unsqueeze(1))
    assert grad.dtype == torch.float32
    assert value.grad_fn is None and "PrecomputedGradient" in type(loss(z.clone().requires_grad_(True), y).grad_fn).__name__
    np.testing.assert_allclose(value.item(), _numpy_value(name, z.numpy(), y.numpy()), rtol=2e-6)
    # the float64 torch path is gradchecked in test_losses.py: the fused gradient must agree with it
    _, want = _value_and_grad(loss, z.double(), y.unsqueeze(1))
    np.testing.assert_allclose(grad.numpy(), want.numpy(), rtol=0, atol=2e-6 * float(want.abs().max()))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", MONAI_BACKED)
def test_fused_matches_monai_losses_in_float64(name, shape):
    z, y = _data(shape, scale=4.0)
    loss = _loss(name, shape)
    value, grad = _value_and_grad(loss, z, y.unsqueeze(1))
    assert "PrecomputedGradient" in type(loss(z.clone().requires_grad_(True), y).grad_fn).__name__
    with fused_disabled():  # MONAI's own implementation
        want_v, want_g = _value_and_grad(loss, z.double(), y.unsqueeze(1))
    np.testing.assert_allclose(value.item(), want_v.item(), rtol=2e-6)
    np.testing.assert_allclose(grad.numpy(), want_g.numpy(), rtol=0, atol=2e-6 * float(want_g.abs().max()))


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 4.0])
def test_fused_focal_gammas_and_fallback(gamma):
    z, y = _data((2, 3, 30, 20))
    loss = _loss("focal", z.shape, gamma=gamma)
    v, g = _value_and_grad(loss, z, y)
    with fused_disabled():
        want_v, want_g = _value_and_grad(loss, z.double(), y)
    np.testing.assert_allclose(v.item(), want_v.item(), rtol=2e-6)
    np.testing.assert_allclose(g.numpy(), want_g.numpy(), atol=2e-6 * float(want_g.abs().max()))
    # a setting the kernel does not reproduce runs MONAI's implementation
    assert _loss("focal", z.shape, gamma=2.5).fused is None and _loss("ce_dice", z.shape, lambda_dice=0.5).fused is None


@pytest.mark.parametrize("name", FUSED + MONAI_BACKED)
def test_fused_equals_torch_path_in_float32_for_every_target_format(name):
    z, y = _data((2, 4, 23, 17, 5), scale=6.0, seed=1)
    loss = _loss(name, z.shape)
    with fused_disabled():
        want_v, want_g = _value_and_grad(loss, z, y)
    onehot = torch.nn.functional.one_hot(y, 4).movedim(-1, 1)
    for target in (y, y.unsqueeze(1), y.to(torch.uint8), y.to(torch.int32).unsqueeze(1), onehot, onehot.float(), y.float()):
        v, g = _value_and_grad(loss, z, target)
        np.testing.assert_allclose(v.item(), want_v.item(), rtol=2e-6)
        np.testing.assert_allclose(g.numpy(), want_g.numpy(), atol=3e-6 * float(want_g.abs().max()))


@pytest.mark.parametrize("name", ["ce", "ecp", "ls", "svls", "mbls", "mbls_l2"])
def test_fused_sum_reduction_and_no_grad(name):
    z, y = _data((2, 3, 30, 20))
    loss = get_loss(name, reduction="sum", **PARAMS.get(name, {}))
    with fused_disabled():
        want_v, want_g = _value_and_grad(loss, z, y)
    v, g = _value_and_grad(loss, z, y)
    np.testing.assert_allclose(v.item(), want_v.item(), rtol=2e-6)
    np.testing.assert_allclose(g.numpy(), want_g.numpy(), atol=2e-6 * float(want_g.abs().max()))
    with torch.no_grad():
        assert loss(z.clone().requires_grad_(True), y).item() == pytest.approx(want_v.item(), rel=2e-6)
    assert loss(z, y).item() == pytest.approx(want_v.item(), rel=2e-6)  # input without requires_grad


def test_fused_extreme_logits_ties_and_perfect_predictions():
    z, y = _data((2, 4, 40, 30), scale=40.0, seed=3)  # p underflows to 0 for most classes
    z[:, :, :5] = 7.0  # exact ties: every class has the max; MEEP predicts class 0 there, as numpy's argmax
    for name in ("ce", "ecp", "mbls", "meep_ce_entropy", "meep_dice_kl"):
        loss = get_loss(name, **PARAMS.get(name, {}))
        v, g = _value_and_grad(loss, z, y)
        with fused_disabled():
            want_v, want_g = _value_and_grad(loss, z.double(), y)
        np.testing.assert_allclose(v.item(), want_v.item(), rtol=2e-6)
        np.testing.assert_allclose(g.numpy(), want_g.numpy(), atol=2e-6 * float(want_g.abs().max()))
        np.testing.assert_allclose(v.item(), _numpy_value(name, z.numpy(), y.numpy()), rtol=2e-6)
    # a perfect prediction: MEEP's term is 0, the loss is its base
    perfect = torch.nn.functional.one_hot(y, 4).movedim(-1, 1).float() * 20.0
    v, _ = _value_and_grad(get_loss("meep_ce_kl"), perfect, y)
    assert v.item() == pytest.approx(ref.ce(perfect.double().numpy(), y.numpy()), abs=1e-7)


def test_fused_gradient_scales_with_upstream_gradient_and_runs_once():
    z, y = _data((2, 3, 16, 16))
    x = z.clone().requires_grad_(True)
    (3.0 * get_loss("mbls", margin=1.0)(x, y)).backward()
    x1 = z.clone().requires_grad_(True)
    get_loss("mbls", margin=1.0)(x1, y).backward()
    np.testing.assert_allclose(x.grad.numpy(), 3.0 * x1.grad.numpy(), rtol=1e-6)
    x2 = z.clone().requires_grad_(True)
    value = get_loss("ce")(x2, y)
    value.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass"):
        value.backward()


def test_fused_non_contiguous_input_and_metatensor():
    z, y = _data((2, 3, 17, 26))
    z, y = z[..., ::2], y[..., ::2]  # (2, 3, 17, 13), not contiguous
    loss = get_loss("ecp")
    with fused_disabled():
        want_v, want_g = _value_and_grad(loss, z, y)
    for x in (z, MetaTensor(z.contiguous())):
        v, g = _value_and_grad(loss, x, MetaTensor(y) if isinstance(x, MetaTensor) else y)
        np.testing.assert_allclose(v.item(), want_v.item(), rtol=2e-6)
        np.testing.assert_allclose(g.numpy(), want_g.numpy(), atol=2e-6 * float(want_g.abs().max()))


@pytest.mark.parametrize("name", FUSED + MONAI_BACKED)
def test_fused_bad_input_raises_the_reference_messages(name):
    z, y = _data((2, 3, 20, 30))
    loss = _loss(name, z.shape)
    bad = y.clone()
    bad[1, 5, 7] = 3
    with pytest.raises(ValueError, match=r"target labels must lie in \[0, 2\]"):
        loss(z.clone().requires_grad_(True), bad)
    bad[1, 5, 7] = -1
    with pytest.raises(ValueError, match=r"target labels must lie in \[0, 2\]"):
        loss(z, bad)
    nan = z.detach().clone()
    nan[0, 1, 3, 3] = float("nan")
    nan[1, 2, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="2 non-finite logit"):
        loss(nan, y)
    with pytest.raises(ValueError, match="does not match input shape"):
        loss(z, y[:, :10])


def test_fused_switch_off_runs_the_torch_path():
    z, y = _data((1, 3, 8, 8))
    set_fused_enabled(False)
    try:
        out = get_loss("mbls")(z.clone().requires_grad_(True), y)
        assert "PrecomputedGradient" not in type(out.grad_fn).__name__
    finally:
        set_fused_enabled(True)
    assert "PrecomputedGradient" in type(get_loss("mbls")(z.clone().requires_grad_(True), y).grad_fn).__name__


def test_vectorised_exp_and_log_accuracy():
    x = -np.linspace(0.0, 90.0, 200_001).astype(np.float32)
    out = np.empty_like(x)
    vector_math.exp_values(x, out)
    want = np.exp(x.astype(np.float64))
    keep = want > 1e-37  # normal float32 range
    np.testing.assert_allclose(out[keep], want[keep], rtol=3e-7)
    assert (out[~keep] >= 0).all() and (out[~keep] < 2e-37).all()
    s = np.concatenate([np.linspace(1.0, 64.0, 100_001), np.geomspace(1e-30, 1e30, 10_001)]).astype(np.float32)
    out = np.empty_like(s)
    vector_math.log_values(s, out)
    want = np.log(s.astype(np.float64))
    assert (np.abs(out - want) <= 2e-7 * np.maximum(1.0, np.abs(want))).all()


@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (2, 4, 5, 6, 7), (1, 2, 1, 4, 9), (1, 5, 1, 1)])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.5])
def test_svls_soft_labels_of_the_kernel_match_numpy(shape, sigma):
    z, y = _data(shape)
    _, want = ref.svls(z.double().numpy(), y.numpy(), sigma)
    b, c = shape[:2]
    out = np.empty((b, c, int(np.prod(shape[2:]))), np.float32)
    y4 = y.reshape((b, 1) + shape[2:]) if len(shape) == 4 else y
    K.svls_targets(y4.numpy(), out, float(np.exp(-1 / (2 * sigma**2))), len(shape) == 5, 2)
    np.testing.assert_allclose(out.reshape(want.shape), want, atol=1e-6)


def test_fused_false_alarm_on_huge_finite_logits_falls_back_to_torch():
    # finite float32 logits whose block sum overflows: the kernel flags them, the torch path decides (finite)
    z, y = _data((1, 3, 8, 8))
    z[0, :, :2] = 3e38
    for name in ("ce", "meep_dice_kl"):
        out = get_loss(name)(z.clone().requires_grad_(True), y)
        assert "PrecomputedGradient" not in type(out.grad_fn).__name__
        with fused_disabled():
            want = get_loss(name)(z, y)
        assert out.item() == want.item()


def test_kernels_follow_torch_thread_count():
    import numba

    from calibmonai._vector_math import kernel_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert kernel_threads() == 1 and numba.get_num_threads() == 1
        z, y = _data((2, 3, 40, 40))
        one, g1 = _value_and_grad(get_loss("mbls"), z, y)
        torch.set_num_threads(before)
        assert kernel_threads() == min(before, numba.config.NUMBA_NUM_THREADS)
        many, g2 = _value_and_grad(get_loss("mbls"), z, y)
        assert one.item() == pytest.approx(many.item(), rel=1e-6)
        np.testing.assert_array_equal(g1.numpy(), g2.numpy())  # per-voxel gradients do not depend on threads
    finally:
        torch.set_num_threads(before)


def test_hinge_exactly_at_the_margin_has_no_gradient_hand_computed():
    # logits (0, 10, 20), label 2, margin 10, weight 1: distances to the top logit 20, 10, 0; the hinge is active
    # for class 0 only (20 - 10 > 0), exactly at its edge for class 1 (10 - 10 = 0: ReLU's gradient there is 0).
    # Gradient = (p - onehot) of the CE + (-1/3, 0, +1/3) of the hinge mean over 3 classes.
    from calibmonai.losses import MarginLabelSmoothingLoss

    z = torch.tensor([0.0, 10.0, 20.0]).view(1, 3, 1, 1)
    y = torch.tensor([[[2]]])
    p = torch.softmax(z.double(), 1).view(3)
    want = (p - torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)) + torch.tensor([-1 / 3, 0.0, 1 / 3], dtype=torch.float64)
    loss = MarginLabelSmoothingLoss(margin=10.0, alpha=1.0)
    v, g = _value_and_grad(loss, z, y)  # the fused kernel (float32 on CPU)
    assert v.item() == pytest.approx(float(-torch.log(p[2])) + 10.0 / 3, rel=1e-6)
    np.testing.assert_allclose(g.view(3).double().numpy(), want.numpy(), atol=1e-6)
    with fused_disabled():
        _, g_torch = _value_and_grad(loss, z, y)
    np.testing.assert_allclose(g_torch.view(3).double().numpy(), want.numpy(), atol=1e-6)


@pytest.mark.parametrize("name", ["dice", "ce_dice", "mbls_dice", "meep_dice_kl"])
def test_dice_smoothing_with_a_class_absent_from_labels_and_prediction(name):
    # class 2 is in no label and its probability is 0 (logit -200): MONAI's Dice of that class is
    # 1 - (0 + 1e-5) / (0 + 1e-5) = 0, which only the exact smoothing constants (1e-5 both) give
    z, y = _data((2, 3, 9, 8), seed=4)
    y = y % 2
    z[:, 2] = -200.0
    loss = _loss(name, (2, 3, 9, 8))
    v, g = _value_and_grad(loss, z, y)
    with fused_disabled():
        want_v, want_g = _value_and_grad(loss, z.double(), y)
    np.testing.assert_allclose(v.item(), want_v.item(), rtol=2e-6)
    np.testing.assert_allclose(g.numpy(), want_g.numpy(), atol=2e-6 * float(want_g.abs().max()))
