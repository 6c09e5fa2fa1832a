"""The fused Triton loss kernels (calibmonai.losses._triton_kernel) against the torch implementations.

Without a GPU the kernels run on CPU tensors under Triton's interpreter: this module sets ``TRITON_INTERPRET=1``
at import (collection) time when CUDA is missing, before ``triton`` is first imported; the automatic dispatch
still sends only CUDA tensors to Triton, so other tests are unaffected. CUDA tests skip without a GPU.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from calibmonai._triton import HAVE_TRITON, interpreting, set_triton_enabled  # noqa: E402
from calibmonai.losses import METHODS, FusedTerms, fused_disabled, get_loss  # noqa: E402
from calibmonai.losses._triton_kernel import interpret_on_cpu, triton_softmax_loss  # noqa: E402

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not (CUDA and HAVE_TRITON), reason="needs a CUDA device and triton")
needs_interp = pytest.mark.skipif(not (HAVE_TRITON and interpreting()), reason="needs triton with TRITON_INTERPRET=1 set before its import")


def _data(shape, scale=6.0, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * scale  # scale 6: the MbLS hinge (margin 10) is active on some voxels
    y = torch.randint(0, shape[1], (shape[0], 1) + shape[2:], generator=g)
    return x.to(device), y.to(device)


def _loss(name, shape):
    return get_loss(name, num_classes=shape[1], spatial_dims=len(shape) - 2)


def _torch_value_grad(loss, x, y):
    xr = x.detach().clone().requires_grad_(True)
    with fused_disabled():
        v = loss(xr, y)
    v.backward()
    return v.detach(), xr.grad


def _kernel_value_grad(loss, x, y):
    xk = x.detach().clone().requires_grad_(True)
    v = loss(xk, y)
    assert type(v.grad_fn).__name__ == "_DeviceGradientBackward", "the Triton path did not run"
    v.backward()
    return v.detach(), xk.grad


def _assert_close(got, want):
    (v, g), (v0, g0) = got, want
    assert float(v) == pytest.approx(float(v0), rel=2e-6, abs=1e-7)
    assert g.dtype == g0.dtype and g.shape == g0.shape
    assert torch.allclose(g.float(), g0.float(), rtol=0, atol=3e-6 * float(g0.abs().max())), float((g - g0).abs().max())


@needs_interp
@pytest.mark.parametrize("shape", [(2, 4, 7, 6, 5), (2, 3, 9, 10)], ids=["3D", "2D"])
@pytest.mark.parametrize("name", list(METHODS))
def test_every_registry_loss_equals_the_torch_path(name, shape):
    x, y = _data(shape)
    loss = _loss(name, shape)
    want = _torch_value_grad(loss, x, y)
    with interpret_on_cpu():
        got = _kernel_value_grad(loss, x, y)
    _assert_close(got, want)


@needs_interp
def test_dice_sums_with_blocks_sharing_slots(monkeypatch):
    # large volumes have more blocks than Dice-sum slots: several programs add into each slot
    from calibmonai.losses import _triton_kernel

    monkeypatch.setattr(_triton_kernel, "_SLOTS", 2)  # 3 blocks of 512 voxels per image
    shape = (2, 3, 12, 11, 9)  # 1188 voxels: several blocks per image
    x, y = _data(shape, seed=9)
    for name in ("ce_dice", "meep_dice_entropy"):
        loss = _loss(name, shape)
        want = _torch_value_grad(loss, x, y)
        with interpret_on_cpu():
            got = _kernel_value_grad(loss, x, y)
        _assert_close(got, want)


@needs_interp
def test_ties_follow_the_first_index_rule_for_meep_and_the_hinge():
    # integer logits with many ties at the maximum. MEEP's misclassified set (first-index argmax != label) equals
    # the torch path's; the hinge's subgradient at a tie goes to the first argmax class, as in the numba kernel
    # (torch's amax splits it between the tied classes, another valid subgradient)
    g = torch.Generator().manual_seed(1)
    shape = (2, 4, 5, 6, 4)
    x = torch.randint(-1, 2, shape, generator=g).float() * 12.0
    y = torch.randint(0, 4, (2,) + shape[2:], generator=g)
    for name in ("meep_ce_entropy", "meep_dice_kl", "mbls", "mbls_l2"):
        loss = _loss(name, shape)
        if name.startswith("meep"):
            want = _torch_value_grad(loss, x, y)
        else:
            xn = x.clone().requires_grad_(True)
            v = loss(xn, y)  # the numba kernel
            assert type(v.grad_fn).__name__ == "_PrecomputedGradientBackward"
            v.backward()
            want = (v.detach(), xn.grad)
        with interpret_on_cpu():
            got = _kernel_value_grad(loss, x, y)
        _assert_close(got, want)


@needs_interp
def test_target_formats_sum_reduction_no_grad_and_svls_sigma():
    from calibmonai.losses import CrossEntropyLoss, LabelSmoothingLoss, SpatiallyVaryingLabelSmoothingLoss

    shape = (2, 3, 6, 7)
    x, y = _data(shape, scale=3.0, seed=2)
    onehot = torch.nn.functional.one_hot(y[:, 0], 3).movedim(-1, 1).float()
    for loss in (CrossEntropyLoss(reduction="sum"), LabelSmoothingLoss(alpha=0.2), SpatiallyVaryingLabelSmoothingLoss(sigma=0.5)):
        want = _torch_value_grad(loss, x, y)
        with interpret_on_cpu():
            for target in (y, y[:, 0], y.to(torch.uint8), onehot):
                _assert_close(_kernel_value_grad(loss, x, target), want)
            with torch.no_grad():
                v = loss(x, y)
            assert v.grad_fn is None and float(v) == pytest.approx(float(want[0]), rel=2e-6)


@needs_interp
def test_float16_logits_keep_a_float32_gradient_until_backward():
    shape = (1, 4, 6, 5, 4)
    x, y = _data(shape, scale=2.0, seed=3)
    xh = x.half()
    loss = _loss("ce", shape)
    with interpret_on_cpu():
        xk = xh.clone().requires_grad_(True)
        v = loss(xk, y)
        (v * 1024.0).backward()  # a GradScaler-like scale: per-voxel gradients of a mean are below float16's range
    want_v, want_g = _torch_value_grad(loss, xh.float(), y)
    assert v.dtype == torch.float32 and float(v) == pytest.approx(float(want_v), rel=1e-5)
    assert xk.grad.dtype == torch.float16
    assert torch.allclose(xk.grad.float(), want_g * 1024.0, rtol=2e-3, atol=1e-6)


@needs_interp
def test_upstream_gradient_scales_and_a_second_backward_raises():
    shape = (1, 3, 5, 6)
    x, y = _data(shape, seed=4)
    loss = _loss("ls", shape)
    _, g0 = _torch_value_grad(loss, x, y)
    with interpret_on_cpu():
        xk = x.clone().requires_grad_(True)
        v = loss(xk, y)
        (2.5 * v).backward(retain_graph=True)
        assert torch.allclose(xk.grad, 2.5 * g0, atol=3e-6 * float(g0.abs().max()) * 2.5)
        with pytest.raises(RuntimeError, match="one backward pass"):
            v.backward()


@needs_interp
def test_bad_input_raises_the_reference_messages():
    shape = (1, 3, 4, 5)
    x, y = _data(shape, seed=5)
    bad_y = y.clone()
    bad_y[0, 0, 1, 2] = 3
    nan_x = x.clone()
    nan_x[0, 1, 2, 3] = float("nan")
    for name in ("ce", "ce_dice", "meep_ce_kl", "nacl"):
        loss = _loss(name, shape)
        with interpret_on_cpu():
            with pytest.raises(ValueError, match=r"\[0, 2\].*\[0, 3\]"):
                loss(x, bad_y)
            with pytest.raises(ValueError, match="non-finite"):
                loss(nan_x, y)


@needs_interp
def test_where_the_kernels_do_not_apply_the_torch_path_runs():
    shape = (1, 3, 4, 5)
    x, y = _data(shape, seed=6)
    with interpret_on_cpu():
        assert triton_softmax_loss(x.double(), y, FusedTerms(ce=1.0)) is None  # float64: torch path
        assert triton_softmax_loss(x, y, FusedTerms(ce=1.0), "none") is None
        assert triton_softmax_loss(x[:, :, 0], y[:, :, 0], FusedTerms(svls=1.0)) is None  # SVLS on 1D
        assert triton_softmax_loss(x, y, FusedTerms(focal=1.0, focal_gamma=2.5)) is None
        set_triton_enabled(False)
        try:
            assert triton_softmax_loss(x, y, FusedTerms(ce=1.0)) is None
            v = _loss("ce", shape)(x.clone().requires_grad_(True), y)
            assert type(v.grad_fn).__name__ != "_DeviceGradientBackward"
        finally:
            set_triton_enabled(True)
    # outside interpret_on_cpu CPU tensors never take the Triton path
    assert triton_softmax_loss(x, y, FusedTerms(ce=1.0)) is None


def _hinge_at_the_margin_case():
    # logits (0, 10, 20), label 2, margin 10, weight 1: the hinge is active for class 0, exactly at its edge for
    # class 1 (ReLU's gradient 0 there): gradient (p - onehot) + (-1/3, 0, +1/3)
    x = torch.tensor([0.0, 10.0, 20.0]).view(1, 3, 1, 1)
    y = torch.tensor([[[2]]])
    p = torch.softmax(x.double(), 1).view(3)
    want = (p - torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)) + torch.tensor([-1 / 3, 0.0, 1 / 3], dtype=torch.float64)
    return x, y, want


def _absent_class_case(device="cpu"):
    # class 2 in no label, probability 0 (logit -200): its Dice is 1 - 1e-5 / 1e-5 = 0 with MONAI's smoothing
    x, y = _data((2, 3, 9, 8), seed=4, device=device)
    y = y % 2
    x[:, 2] = -200.0
    return x, y


@needs_interp
def test_hinge_exactly_at_the_margin_and_dice_of_an_absent_class():
    from calibmonai.losses import MarginLabelSmoothingLoss

    x, y, want = _hinge_at_the_margin_case()
    with interpret_on_cpu():
        _, g = _kernel_value_grad(MarginLabelSmoothingLoss(margin=10.0, alpha=1.0), x, y)
    assert torch.allclose(g.view(3).double(), want, atol=1e-6), g.view(3)
    x, y = _absent_class_case()
    for name in ("dice", "ce_dice", "mbls_dice", "meep_dice_kl"):
        loss = _loss(name, tuple(x.shape))
        want_vg = _torch_value_grad(loss, x, y)
        with interpret_on_cpu():
            _assert_close(_kernel_value_grad(loss, x, y), want_vg)


@needs_cuda
def test_cuda_ties_hinge_edge_and_absent_class():
    # the interpreter ignores tl.argmax's tie_break_left (numpy's nanargmax decides there): ties must be checked on
    # the compiled kernels. Integer logits with many ties at the maximum, as the interpreter test above.
    g = torch.Generator().manual_seed(1)
    shape = (2, 4, 5, 6, 4)
    x = (torch.randint(-1, 2, shape, generator=g).float() * 12.0).cuda()
    y = torch.randint(0, 4, (2,) + shape[2:], generator=g).cuda()
    for name in ("meep_ce_entropy", "meep_dice_kl", "mbls", "mbls_l2"):
        loss = _loss(name, shape)
        if name.startswith("meep"):
            want = _torch_value_grad(loss, x, y)
        else:  # the hinge's subgradient at a tie goes to the first argmax class, as the numba kernel's
            xn = x.cpu().clone().requires_grad_(True)
            v = loss(xn, y.cpu())
            v.backward()
            want = (v.detach().cuda(), xn.grad.cuda())
        _assert_close(_kernel_value_grad(loss, x, y), want)
    from calibmonai.losses import MarginLabelSmoothingLoss

    x, y, want = _hinge_at_the_margin_case()
    _, g = _kernel_value_grad(MarginLabelSmoothingLoss(margin=10.0, alpha=1.0), x.cuda(), y.cuda())
    assert torch.allclose(g.view(3).double().cpu(), want, atol=1e-6), g.view(3)
    x, y = _absent_class_case("cuda")
    for name in ("dice", "ce_dice", "mbls_dice", "meep_dice_kl"):
        loss = _loss(name, tuple(x.shape))
        _assert_close(_kernel_value_grad(loss, x, y), _torch_value_grad(loss, x, y))


@needs_cuda
@pytest.mark.parametrize("name", list(METHODS))
def test_cuda_registry_losses_equal_the_torch_path(name):
    shape = (2, 4, 20, 18, 16)
    x, y = _data(shape, device="cuda")
    loss = _loss(name, shape)
    _assert_close(_kernel_value_grad(loss, x, y), _torch_value_grad(loss, x, y))


@needs_cuda
def test_cuda_amp_training_step_runs_the_kernel_and_scales_gradients():
    shape = (2, 4, 16, 16, 16)
    net = torch.nn.Conv3d(1, 4, 3, padding=1).cuda()
    img = torch.randn((2, 1) + shape[2:], device="cuda")
    _, y = _data(shape, device="cuda")
    loss = _loss("mbls", shape)
    scaler = torch.amp.GradScaler("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        out = net(img)
        v = loss(out, y)
    assert type(v.grad_fn).__name__ == "_DeviceGradientBackward" and v.dtype == torch.float32
    scaler.scale(v).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


_COMPILE_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from calibmonai.losses import _triton_kernel as L
from calibmonai.metrics import _triton_histogram as M

def compile_for_sm90(fn, sig, consts):
    src = ASTSource(fn=fn, signature={**sig, **{k: "constexpr" for k in consts}}, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})

i32, f32 = "i32", "fp32"
hsig = dict(p_ptr="*fp32", y_ptr="*i64", mask_ptr="*u8", top_ptr="*fp32", cls_ptr="*fp32", sc_ptr="*fp32", chk_ptr="*fp64",
            N=i32, n_blocks=i32, n_slots=i32, s_pb=i32, s_pc=i32, s_pn=i32, s_yb=i32, s_yn=i32, s_mb=i32, s_mn=i32)
for mode, softmax, float_labels in [(1, False, False), (2, True, True)]:
    sig = dict(hsig, y_ptr="*fp32" if float_labels else "*i64")
    compile_for_sm90(M._histogram_kernel, sig, dict(C=5, CP=8, NB=15, NBP=16, BLOCK=M._block(8, 16), MODE=mode, BG=0,
                     SOFTMAX=softmax, CLASSWISE=True, WITH_NLL=True, USE_MASK=mode == 2, FLOAT_LABELS=float_labels))
psig = dict(z_ptr="*fp32", y_ptr="*i64", sums_ptr="*fp32", stats_ptr="*fp32", S=i32, n_blocks=i32, n_slots=i32, s_zb=i32, s_zc=i32, s_yb=i32)
compile_for_sm90(L._prepass_kernel, psig, dict(C=4, CP=4, BLOCK=L._block(4, False)))
lsig = dict(z_ptr="*fp16", y_ptr="*i64", grad_ptr="*fp32", dice_ptr="*fp32", meep_ptr="*fp32", part_ptr="*fp32", stats_ptr="*fp32",
            S=i32, n_blocks=i32, s_zb=i32, s_zc=i32, s_yb=i32, D=i32, H=i32, W=i32)
lsig.update({k: f32 for k in "c_ce c_unif c_ent c_hinge margin log_eps eps c_soft g1 centre_extra inv_norm c_dist c_focal log_c".split()})
for v in [dict(HINGE=1, MEEP=0, DICE=True, SOFT=0, FOCAL=-1, ENT=False, THREE_D=1),
          dict(HINGE=2, MEEP=2, DICE=False, SOFT=0, FOCAL=3, ENT=True, THREE_D=1),
          dict(HINGE=0, MEEP=1, DICE=False, SOFT=1, FOCAL=-1, ENT=False, THREE_D=1),
          dict(HINGE=0, MEEP=0, DICE=False, SOFT=2, FOCAL=-1, ENT=False, THREE_D=0)]:
    compile_for_sm90(L._loss_kernel, lsig, dict(C=4, CP=4, BLOCK=L._block(4, v["SOFT"] != 0), WRITE_GRAD=True, **v))
print("compiled")
"""


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TRITON, reason="needs triton")
def test_kernels_compile_for_a_hopper_gpu_without_one():
    # the interpreter does not type-check like the compiler: compile the kernels to sm_90 machine code (Triton
    # ships ptxas), in a fresh process without TRITON_INTERPRET
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0 and "compiled" in out.stdout, out.stderr[-3000:]
