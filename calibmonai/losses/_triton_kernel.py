"""Fused Triton kernels (CUDA) for the softmax-based calibration losses: value and gradient in one pass.

The GPU counterpart of :mod:`calibmonai.losses._fused_kernel` (numba, CPU), with the same terms (see that
module's docstring for the formulas) and the same identity: every loss is a function of
``l = log softmax(z)``, so with ``a_k = dL/dl_k`` the gradient is ``dL/dz_k = a_k - p_k sum_j a_j`` (plus the
MbLS hinge's share on the first argmax and NACL's term on the logits). Each program reads one block of voxels
of one image as a ``(classes, BLOCK)`` tile, once, and writes the loss's partial sum and the gradient tile;
``F.cross_entropy`` runs log-softmax, NLL and their two backward kernels for the same work.

- Dice and MEEP need whole-image sums first (``sum p y``, ``sum p``, ``sum y`` per image and class; the
  number of misclassified voxels): a first kernel writes them per block, torch reduces them on the device and
  the second kernel reads the resulting coefficients from device memory, so nothing waits for the host.
- SVLS and NACL soft targets are computed inside the kernel from the 9 (2D) or 27 (3D) neighbouring labels of
  each voxel (replicate padding for SVLS, zeros for NACL's mean filter), with no soft-label tensor.
- The prediction of MEEP's "misclassified" and of the hinge is the first-index argmax of the logits.
- Bad input (labels outside ``[0, C)``, non-finite logits) is counted by the kernels and checked once, after
  the pass, by one ``.tolist()``; the torch reference then raises its ``ValueError``.

The gradient is kept in float32 (for float16/bfloat16 logits too: the per-voxel gradients of a mean are tiny,
below float16's range before the ``GradScaler`` scale is applied in backward) and cast to the logits' dtype in
backward. Like the CPU path, one backward pass per forward (``set_fused_enabled(False)`` for more).

Without Triton (or with ``CALIBMONAI_TRITON=0``) :func:`triton_softmax_loss` returns ``None`` and the loss runs
its torch implementation. The kernels run on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``
before ``triton`` is imported) inside :func:`interpret_on_cpu`, which is how they are tested without a GPU.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch.autograd.function import once_differentiable

from calibmonai._triton import HAVE_TRITON, device_of, runs_triton

__all__ = ["triton_softmax_loss", "interpret_on_cpu"]

if HAVE_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _prepass_kernel(
        z_ptr, y_ptr, sums_ptr, stats_ptr, S, n_blocks, n_slots, s_zb, s_zc, s_yb,
        C: tl.constexpr, CP: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        """Per block: ``[sum p y, sum p, sum y]`` per class, added into one of ``n_slots`` slots of the image, and
        ``[misclassified, bad labels, non-finite]``."""
        pid = tl.program_id(0)
        b = tl.program_id(1)
        row = b * n_blocks + pid
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        vm = offs < S
        cls = tl.arange(0, CP)
        cm = cls < C
        m2 = cm[:, None] & vm[None, :]
        z = tl.load(z_ptr + b.to(tl.int64) * s_zb + cls[:, None].to(tl.int64) * s_zc + offs[None, :], mask=m2, other=0.0).to(tl.float32)
        inf = float("inf")
        nonfinite = tl.sum(tl.sum((m2 & ((z != z) | (tl.abs(z) == inf))).to(tl.float32), axis=1), axis=0)
        zm = tl.where(cm[:, None], z, -inf)
        zmax = tl.max(zm, axis=0)
        am = tl.argmax(zm, axis=0, tie_break_left=True)
        e = tl.exp(zm - zmax[None, :])
        p = e / tl.sum(e, axis=0)[None, :]
        lab = tl.load(y_ptr + b.to(tl.int64) * s_yb + offs, mask=vm, other=0)
        badlab = vm & ((lab < 0) | (lab >= C))
        labi = tl.where(badlab, 0, lab).to(tl.int32)
        oh = (cls[:, None] == labi[None, :]) & vm[None, :]
        base = sums_ptr + (b * n_slots + pid % n_slots) * (3 * CP)
        tl.atomic_add(base + cls, tl.sum(tl.where(oh, p, 0.0), axis=1), sem="relaxed")
        tl.atomic_add(base + CP + cls, tl.sum(tl.where(m2, p, 0.0), axis=1), sem="relaxed")
        tl.atomic_add(base + 2 * CP + cls, tl.sum(oh.to(tl.float32), axis=1), sem="relaxed")
        tl.store(stats_ptr + row * 3, tl.sum((vm & (am != labi)).to(tl.float32), axis=0))
        tl.store(stats_ptr + row * 3 + 1, tl.sum(badlab.to(tl.float32), axis=0))
        tl.store(stats_ptr + row * 3 + 2, nonfinite)

    @triton.jit
    def _loss_kernel(
        z_ptr, y_ptr, grad_ptr, dice_ptr, meep_ptr, part_ptr, stats_ptr,
        S, n_blocks, s_zb, s_zc, s_yb, D, H, W,
        c_ce, c_unif, c_ent, c_hinge, margin, log_eps, eps, c_soft, g1, centre_extra, inv_norm, c_dist, c_focal, log_c,
        C: tl.constexpr, CP: tl.constexpr, BLOCK: tl.constexpr, WRITE_GRAD: tl.constexpr, HINGE: tl.constexpr,
        MEEP: tl.constexpr, DICE: tl.constexpr, SOFT: tl.constexpr, THREE_D: tl.constexpr, FOCAL: tl.constexpr,
        ENT: tl.constexpr,
    ):  # fmt: skip
        """Loss partial sum per block and ``grad = dL/dz`` (float32, ``(B, C, S)`` contiguous).

        HINGE: 0 off, 1 L1, 2 squared. MEEP: 0 off, 1 entropy, 2 KL (its coefficient read from ``meep_ptr``).
        DICE: read ``dDice/dp`` ``(B, C, 2)`` from ``dice_ptr``. SOFT: 0 off, 1 SVLS (soft cross-entropy,
        replicate padding), 2 NACL (``|z - q|``, zero padding); ``q`` from the neighbours' labels. FOCAL: the
        integer gamma, -1 off. ENT: the minus-entropy term.
        """
        pid = tl.program_id(0)
        b = tl.program_id(1)
        row = b * n_blocks + pid
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        vm = offs < S
        cls = tl.arange(0, CP)
        cm = cls < C
        m2 = cm[:, None] & vm[None, :]
        tile = b.to(tl.int64) * s_zb + cls[:, None].to(tl.int64) * s_zc + offs[None, :]
        z = tl.load(z_ptr + tile, mask=m2, other=0.0).to(tl.float32)
        inf = float("inf")
        nonfinite = tl.sum(tl.sum((m2 & ((z != z) | (tl.abs(z) == inf))).to(tl.float32), axis=1), axis=0)
        zm = tl.where(cm[:, None], z, -inf)
        zmax = tl.max(zm, axis=0)
        am = tl.argmax(zm, axis=0, tie_break_left=True)
        e = tl.exp(zm - zmax[None, :])
        s = tl.sum(e, axis=0)
        lse = zmax + tl.log(s)
        lp = z - lse[None, :]
        p = e / s[None, :]
        y_row = y_ptr + b.to(tl.int64) * s_yb
        lab = tl.load(y_row + offs, mask=vm, other=0)
        badlab = vm & ((lab < 0) | (lab >= C))
        labi = tl.where(badlab, 0, lab).to(tl.int32)
        yk = (cls[:, None] == labi[None, :]).to(tl.float32)
        w = c_unif + c_ce * yk
        if SOFT != 0:
            # soft targets from the neighbours' labels: separable weights (1 at offset 0, g1 at +-1)
            hw = H * W
            dd0 = offs // hw
            hh0 = (offs // W) % H
            ww0 = offs % W
            q = tl.zeros([CP, BLOCK], dtype=tl.float32)
            for i in tl.static_range(1 - THREE_D, 2 + THREE_D):  # depth offsets -1..1 in 3D, 0 only in 2D
                for j in tl.static_range(3):
                    for k in tl.static_range(3):
                        nd = dd0 + (i - 1)
                        nh = hh0 + (j - 1)
                        nw = ww0 + (k - 1)
                        if SOFT == 1:  # replicate padding: clamp
                            nd = tl.minimum(tl.maximum(nd, 0), D - 1)
                            nh = tl.minimum(tl.maximum(nh, 0), H - 1)
                            nw = tl.minimum(tl.maximum(nw, 0), W - 1)
                            inb = vm
                        else:  # zero padding: skip
                            inb = vm & (nd >= 0) & (nd < D) & (nh >= 0) & (nh < H) & (nw >= 0) & (nw < W)
                        wt = 1.0
                        if i != 1:
                            wt = wt * g1
                        if j != 1:
                            wt = wt * g1
                        if k != 1:
                            wt = wt * g1
                        ln = tl.load(y_row + nd * hw + nh * W + nw, mask=inb, other=-1).to(tl.int32)
                        q += tl.where((cls[:, None] == ln[None, :]) & inb[None, :], wt, 0.0)
            q = (q + centre_extra * yk) * inv_norm
            if SOFT == 1:
                w += c_soft * q
        lv = -w * lp
        a = -w
        extra = tl.zeros([CP, BLOCK], dtype=tl.float32)
        if SOFT == 2:
            dz = z - q
            lv += c_dist * tl.abs(dz)
            extra = c_dist * ((dz > 0.0).to(tl.float32) - (dz < 0.0).to(tl.float32))
        if FOCAL >= 0:
            o = 1.0 - p
            pw = tl.full([CP, BLOCK], 1.0, tl.float32)
            pw1 = tl.zeros([CP, BLOCK], dtype=tl.float32)
            for _ in tl.static_range(FOCAL):
                pw1 = pw
                pw = pw * o
            fy = c_focal * yk
            lv -= fy * pw * lp
            a -= fy * (pw - FOCAL * pw1 * p * lp)
        if ENT:
            plp = p * lp
            lv += c_ent * plp
            a += c_ent * (p + plp)
        voxel_extra = tl.zeros([BLOCK], dtype=tl.float32)
        if MEEP != 0:
            c_meep = tl.load(meep_ptr)
            wr = (vm & (am != labi)).to(tl.float32)[None, :]
            lc = tl.maximum(lp, log_eps)
            on = (lp > log_eps).to(tl.float32)
            if MEEP == 1:
                pc = on * p + (1.0 - on) * eps
                lv += wr * c_meep * pc * lc
                a += wr * c_meep * on * p * (1.0 + lc)
            else:
                lv -= wr * (c_meep / C) * lc
                a -= wr * (c_meep / C) * on
                voxel_extra = -(vm & (am != labi)).to(tl.float32) * c_meep * log_c
        if DICE:
            g_base = dice_ptr + (b * C + cls) * 2
            g0 = tl.load(g_base, mask=cm, other=0.0)
            gd = tl.load(g_base + 1, mask=cm, other=0.0) - g0
            a += p * (g0[:, None] + gd[:, None] * yk)
        a = tl.where(m2, a, 0.0)
        lv = tl.where(m2, lv, 0.0)
        if HINGE != 0:
            d = zmax[None, :] - z - margin
            h = tl.maximum(d, 0.0)
            if HINGE == 2:
                lv += tl.where(m2, c_hinge * h * h, 0.0)
                ah = 2.0 * c_hinge * h
            else:
                lv += tl.where(m2, c_hinge * h, 0.0)
                ah = c_hinge * (d > 0.0).to(tl.float32)
            ah = tl.where(m2, ah, 0.0)
        else:
            ah = tl.zeros([CP, BLOCK], dtype=tl.float32)
        voxel_extra = tl.where(vm, voxel_extra, 0.0)
        tl.store(part_ptr + row, tl.sum(tl.sum(lv, axis=0) + voxel_extra, axis=0))
        tl.store(stats_ptr + row * 2, tl.sum(badlab.to(tl.float32), axis=0))
        tl.store(stats_ptr + row * 2 + 1, nonfinite)
        if WRITE_GRAD:
            a_sum = tl.sum(a, axis=0)
            h_sum = tl.sum(ah, axis=0)
            g = a - ah + extra - p * a_sum[None, :] + h_sum[None, :] * (cls[:, None] == am[None, :]).to(tl.float32)
            g_tile = b.to(tl.int64) * (C * S) + cls[:, None].to(tl.int64) * S + offs[None, :]
            tl.store(grad_ptr + g_tile, g, mask=m2)


_CPU = {"on": False}
_SLOTS = 2048  # partial-sum slots per image of the Dice sums (bounded memory whatever the volume and class count)


@contextlib.contextmanager
def interpret_on_cpu() -> Iterator[None]:
    """Inside the block, losses on CPU tensors run the Triton kernels (under ``TRITON_INTERPRET=1``, for tests)
    instead of the numba ones."""
    from calibmonai.losses import fused

    before = fused._STATE.get("triton_on_cpu", False)
    fused._STATE["triton_on_cpu"] = True
    _CPU["on"] = True
    try:
        yield
    finally:
        fused._STATE["triton_on_cpu"] = before
        _CPU["on"] = before


class _DeviceGradient(torch.autograd.Function):
    """The loss value (summed from the kernel's partial sums) whose gradient with respect to ``input`` the
    kernel already wrote; backward scales it by the upstream gradient on the device (no host sync)."""

    @staticmethod
    def forward(ctx, input: torch.Tensor, grad: torch.Tensor, parts: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.grad = grad
        ctx.dtype = input.dtype
        return (parts.sum(dtype=torch.float64) + offset).float()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        from calibmonai.losses.fused import take_stored_grad

        grad = take_stored_grad(ctx)
        scale = grad_output.to(grad.dtype)
        out = grad.mul_(scale) if ctx.dtype == grad.dtype else (grad * scale).to(ctx.dtype)
        return out, None, None, None


def _dice_terms(sums: torch.Tensor, weight: float, include_background: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """MONAI ``DiceLoss`` value (smooth 1e-5, mean over images and kept classes) and ``dDice/dp`` ``(B, C, 2)``
    for ``y != k`` / ``y == k``, as :func:`calibmonai.losses.fused._dice`, on the device."""
    inter, psum, ysum = sums[..., 0], sums[..., 1], sums[..., 2]
    num = 2.0 * inter + 1e-5
    den = psum + ysum + 1e-5
    keep = torch.ones(inter.shape[1], dtype=sums.dtype, device=sums.device)
    if not include_background:
        keep[0] = 0.0
    n_terms = inter.shape[0] * max(1, inter.shape[1] - (0 if include_background else 1))
    value = ((1.0 - num / den) * keep).sum() * (weight / n_terms)
    scale = (weight / n_terms) * keep.view(1, -1, 1)
    g = torch.stack([num / den**2, (num - 2.0 * den) / den**2], dim=-1) * scale
    return value, g.float().contiguous()


def _block(c_pad: int, soft: bool) -> int:
    """Voxels per program: a ``(classes, voxels)`` tile of about 2048 values (1024 with soft targets, which hold
    a second tile), about 16 registers per tile and thread at 4 warps: the dozen live tiles stay in registers."""
    return max(16, min(1024, triton.next_power_of_2(max(1, (1024 if soft else 2048) // c_pad))))


def triton_softmax_loss(input: torch.Tensor, target: torch.Tensor, terms, reduction: str = "mean") -> torch.Tensor | None:
    """The loss ``terms`` (a :class:`calibmonai.losses.fused.FusedTerms`) of softmax(``input``) against
    ``target`` from the Triton kernels, or ``None`` where they do not apply (no Triton, CPU tensors outside
    :func:`interpret_on_cpu`, float64 logits, ``reduction="none"``, a focal gamma other than 0..4, SVLS/NACL on
    other than 2D/3D, empty input): the caller then runs its torch implementation.

    Raises:
        ValueError: for bad logits or targets, with the torch implementation's messages.
    """
    from calibmonai.losses.fused import _labels
    from calibmonai.losses.utils import check_logits, to_class_indices

    if reduction not in ("mean", "sum") or not isinstance(input, torch.Tensor) or not isinstance(target, torch.Tensor):
        return None
    if not runs_triton(input, target, allow_cpu=_CPU["on"]):
        return None
    if input.dtype not in (torch.float32, torch.float16, torch.bfloat16) or input.ndim < 3:
        return None
    soft = 1 if terms.svls else (2 if terms.nacl else 0)
    if (soft and input.ndim not in (4, 5)) or (terms.focal and terms.focal_gamma not in (0, 1, 2, 3, 4)):
        return None
    check_logits(input, check_finite=False)
    b, c = input.shape[:2]
    spatial = tuple(input.shape[2:])
    y = _labels(input, target).as_subclass(torch.Tensor).contiguous()
    z = input.detach().as_subclass(torch.Tensor)
    z = (z if z.is_contiguous() else z.contiguous()).view(b, c, -1)
    n_vox = z.shape[2]
    if n_vox == 0 or b == 0:
        return None
    dev = z.device
    cp = triton.next_power_of_2(c)
    block = _block(cp, bool(soft))
    n_blocks = triton.cdiv(n_vox, block)
    grid = (n_blocks, b)
    f32 = torch.float32
    need_grad = input.requires_grad and torch.is_grad_enabled()
    grad = torch.empty((b, c, n_vox), dtype=f32, device=dev) if need_grad else torch.empty(1, dtype=f32, device=dev)
    dice_g = torch.empty(1, dtype=f32, device=dev)
    c_meep = torch.zeros(1, dtype=f32, device=dev)
    offset = torch.zeros((), dtype=torch.float64, device=dev)
    checks = []
    if terms.meep or terms.dice:
        n_slots = min(n_blocks, _SLOTS)
        sums = torch.zeros((b * n_slots, 3, cp), dtype=f32, device=dev)
        pstats = torch.empty((b * n_blocks, 3), dtype=f32, device=dev)
        with device_of(z):
            _prepass_kernel[grid](z, y, sums, pstats, n_vox, n_blocks, n_slots, z.stride(0), z.stride(1), y.stride(0), C=c, CP=cp, BLOCK=block)
        pst = pstats.sum(0, dtype=torch.float64)
        checks.append(pst[1:])
        if terms.meep:
            wrong = pst[0]
            c_meep = torch.where(wrong > 0, terms.meep / wrong.clamp_min(1.0), 0.0).float().reshape(1)
        if terms.dice:
            tot = sums.view(b, n_slots, 3, cp).sum(1, dtype=torch.float64)[..., :c].permute(0, 2, 1)  # (B, C, 3)
            offset, dice_g = _dice_terms(tot, terms.dice, getattr(terms, "dice_background", True))
    per_voxel = 1.0 / (b * n_vox) if reduction == "mean" else 1.0
    d, h, w = (1,) + spatial if len(spatial) == 2 else (spatial if len(spatial) == 3 else (1, 1, n_vox))
    g1 = centre = 0.0
    inv_norm = 1.0
    if soft == 1:
        g1 = math.exp(-1.0 / (2.0 * terms.svls_sigma**2))
        t = (1.0 + 2.0 * g1) ** len(spatial)
        centre, inv_norm = t - 2.0, 1.0 / (2.0 * t - 2.0)
    elif soft == 2:
        g1, inv_norm = 1.0, 3.0 ** (-len(spatial))
    hinge = 0 if not terms.hinge else (2 if terms.hinge_sq else 1)
    meep = 0 if not terms.meep else {"entropy": 1, "kl": 2}[terms.meep_mode]
    parts = torch.empty(b * n_blocks, dtype=f32, device=dev)
    stats = torch.empty((b * n_blocks, 2), dtype=f32, device=dev)
    with device_of(z):
        _loss_kernel[grid](
            z, y, grad, dice_g, c_meep, parts, stats,
            n_vox, n_blocks, z.stride(0), z.stride(1), y.stride(0), d, h, w,
            terms.ce * per_voxel, terms.uniform * per_voxel / c, terms.neg_entropy * per_voxel / c, terms.hinge * per_voxel / c,
            terms.margin, math.log(terms.eps), terms.eps, terms.svls * per_voxel, g1, centre, inv_norm,
            terms.nacl * per_voxel / c, terms.focal * per_voxel / c, math.log(c),
            C=c, CP=cp, BLOCK=block, WRITE_GRAD=need_grad, HINGE=hinge, MEEP=meep, DICE=bool(terms.dice), SOFT=soft,
            THREE_D=int(len(spatial) == 3), FOCAL=int(terms.focal_gamma) if terms.focal else -1, ENT=bool(terms.neg_entropy),
        )  # fmt: skip
    checks.append(stats.sum(0, dtype=torch.float64))
    if any(v > 0 for v in torch.cat(checks).tolist()):  # the one host synchronisation
        to_class_indices(input, target)  # raises the reference's ValueError
        return None  # not reached for bad input; a false alarm runs the torch path
    if not need_grad:
        return (parts.sum(dtype=torch.float64) + offset).float()
    return _DeviceGradient.apply(input, grad.view_as(input) if input.is_contiguous() else grad.view((b, c) + spatial), parts, offset)
