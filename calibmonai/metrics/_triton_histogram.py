"""Triton kernel filling the calibration histograms on a GPU (the CUDA path of ``_torch_backend``).

Each program takes ``BLOCK`` voxels of one case: it reads the probabilities (or logits) once as a
``(classes, BLOCK)`` tile, computes what the numba CPU kernel computes per voxel (softmax, confidence, first
argmax, the label's probability, Brier, NLL, selection, bins) and reduces the block's histograms in registers
with a one-hot ``(bins, BLOCK)`` comparison, one class at a time for the class-wise ones. Every program writes
its float32 partial sums into one of ``_SLOTS`` slots per case (atomic adds, a few per address; with fewer blocks
than slots every slot has one writer and the result is the same on every run); torch sums the slots in float64.
The input checks are per-program minima, maxima and counts, reduced by torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from calibmonai._triton import device_of

__all__ = ["triton_histograms"]

# partial-sum slots per case: programs pid, pid + _SLOTS, ... add into the same slot (float32 atomics, few per
# address), so the buffers stay small (``_SLOTS * 3 * C * bins`` floats per case) whatever the volume and the
# class count, and each slot holds the sum of at most a few hundred blocks
_SLOTS = 2048


@triton.jit
def _histogram_kernel(
    p_ptr, y_ptr, mask_ptr, top_ptr, cls_ptr, sc_ptr, chk_ptr,
    N, n_blocks, n_slots, s_pb, s_pc, s_pn, s_yb, s_yn, s_mb, s_mn,
    C: tl.constexpr, CP: tl.constexpr, NB: tl.constexpr, NBP: tl.constexpr, BLOCK: tl.constexpr,
    MODE: tl.constexpr, BG: tl.constexpr, SOFTMAX: tl.constexpr, CLASSWISE: tl.constexpr, WITH_NLL: tl.constexpr,
    USE_MASK: tl.constexpr, FLOAT_LABELS: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    b = tl.program_id(1)
    row = b * n_blocks + pid  # this program's row of the checks buffer
    slot = b * n_slots + pid % n_slots  # this program's slot of the partial-sum buffers (shared by n_blocks / n_slots)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    vm = offs < N
    cls = tl.arange(0, CP)
    cm = cls < C
    m2 = cm[:, None] & vm[None, :]
    p_base = p_ptr + b.to(tl.int64) * s_pb
    x = tl.load(p_base + cls[:, None].to(tl.int64) * s_pc + offs[None, :] * s_pn, mask=m2, other=0.0).to(tl.float32)
    inf = float("inf")
    if SOFTMAX:
        nonfinite = tl.sum(tl.sum((m2 & ((x != x) | (tl.abs(x) == inf))).to(tl.float32), axis=1), axis=0)
        xm = tl.where(cm[:, None], x, -inf)
        zmax = tl.max(xm, axis=0)
        e = tl.exp(xm - zmax[None, :])
        ssum = tl.sum(e, axis=0)
        inv = 1.0 / ssum
        p = e * inv[None, :]
    else:
        p = tl.where(cm[:, None], x, 0.0)
        nonfinite = tl.sum(tl.sum((m2 & (x != x)).to(tl.float32), axis=1), axis=0)
        p_lo = tl.min(tl.min(tl.where(m2, x, inf), axis=1), axis=0)
        p_hi = tl.max(tl.max(tl.where(m2, x, -inf), axis=1), axis=0)
        s_err = tl.max(tl.where(vm, tl.abs(tl.sum(p, axis=0) - 1.0), 0.0), axis=0)
    pm = tl.where(cm[:, None], p, -inf)
    conf = tl.max(pm, axis=0)
    pred = tl.argmax(pm, axis=0, tie_break_left=True)  # the first index of the maximum
    # labels: checks, then a safe copy in [0, C)
    lab = tl.load(y_ptr + b.to(tl.int64) * s_yb + offs * s_yn, mask=vm, other=0)
    if FLOAT_LABELS:
        labf = lab.to(tl.float64)
        nonint_v = vm & ((labf != tl.floor(labf)) | (tl.abs(labf) == inf))
        nonint = tl.sum(nonint_v.to(tl.float32), axis=0)
        labf = tl.where(nonint_v, 0.0, labf)
    else:
        labf = lab.to(tl.float64)
    lab_lo = tl.min(tl.where(vm, labf, inf), axis=0)
    lab_hi = tl.max(tl.where(vm, labf, -inf), axis=0)
    labi = tl.minimum(tl.maximum(labf, 0.0), C - 1.0).to(tl.int32)
    hit2 = cls[:, None] == labi[None, :]
    p_y = tl.sum(tl.where(hit2, p, 0.0), axis=0)
    correct = pred == labi
    fg = labi != BG
    if USE_MASK:
        mk = tl.load(mask_ptr + b.to(tl.int64) * s_mb + offs * s_mn, mask=vm, other=0)
        keep = vm & (mk != 0)
    else:
        keep = vm
    brier = tl.sum(p * p, axis=0) - 2.0 * p_y + 1.0
    if MODE == 1:
        sel = keep & fg
    elif MODE == 2:
        sel = keep & (fg | (pred != BG))
    else:
        sel = keep
    keep_f = keep.to(tl.float32)
    fgk_f = (keep & fg).to(tl.float32)
    sel_f = sel.to(tl.float32)
    sc_row = sc_ptr + slot * 6
    tl.atomic_add(sc_row + 0, tl.sum(sel_f, axis=0), sem="relaxed")
    if WITH_NLL:
        nll = -tl.log(tl.maximum(p_y, 1e-12))
        tl.atomic_add(sc_row + 1, tl.sum(tl.where(sel, nll, 0.0), axis=0), sem="relaxed")
    tl.atomic_add(sc_row + 2, tl.sum(tl.where(keep, brier, 0.0), axis=0), sem="relaxed")
    tl.atomic_add(sc_row + 3, tl.sum(keep_f, axis=0), sem="relaxed")
    tl.atomic_add(sc_row + 4, tl.sum(tl.where(keep & fg, brier, 0.0), axis=0), sem="relaxed")
    tl.atomic_add(sc_row + 5, tl.sum(fgk_f, axis=0), sem="relaxed")
    chk_row = chk_ptr + row * 7
    tl.store(chk_row + 0, lab_lo)
    tl.store(chk_row + 1, lab_hi)
    if SOFTMAX:
        tl.store(chk_row + 2, 0.0)
        tl.store(chk_row + 3, 1.0)
        tl.store(chk_row + 4, 0.0)
    else:
        tl.store(chk_row + 2, p_lo.to(tl.float64))
        tl.store(chk_row + 3, p_hi.to(tl.float64))
        tl.store(chk_row + 4, s_err.to(tl.float64))
    tl.store(chk_row + 5, nonfinite.to(tl.float64))
    if FLOAT_LABELS:
        tl.store(chk_row + 6, nonint.to(tl.float64))
    else:
        tl.store(chk_row + 6, 0.0)
    # top-label histograms of the block
    bins = tl.arange(0, NBP)
    tb = tl.minimum(tl.maximum((conf * NB).to(tl.int32), 0), NB - 1)
    oh = (bins[:, None] == tb[None, :]) & sel[None, :]
    top_row = top_ptr + slot * (3 * NBP)
    tl.atomic_add(top_row + bins, tl.sum(oh.to(tl.float32), axis=1), sem="relaxed")
    tl.atomic_add(top_row + NBP + bins, tl.sum(tl.where(oh, conf[None, :], 0.0), axis=1), sem="relaxed")
    tl.atomic_add(top_row + 2 * NBP + bins, tl.sum((oh & correct[None, :]).to(tl.float32), axis=1), sem="relaxed")
    if CLASSWISE:
        cls_row = cls_ptr + slot * (3 * C * NBP)
        k_ptr = p_base + offs * s_pn  # advanced by one class per iteration (64-bit pointer arithmetic)
        for k in range(0, C):
            xk = tl.load(k_ptr, mask=vm, other=0.0).to(tl.float32)
            k_ptr += s_pc
            if SOFTMAX:
                pk = tl.exp(xk - zmax) * inv
            else:
                pk = xk
            kb = tl.minimum(tl.maximum((pk * NB).to(tl.int32), 0), NB - 1)
            ohk = (bins[:, None] == kb[None, :]) & sel[None, :]
            base = cls_row + k * NBP
            tl.atomic_add(base + bins, tl.sum(ohk.to(tl.float32), axis=1), sem="relaxed")
            tl.atomic_add(base + C * NBP + bins, tl.sum(tl.where(ohk, pk[None, :], 0.0), axis=1), sem="relaxed")
            tl.atomic_add(base + 2 * C * NBP + bins, tl.sum((ohk & (labi == k)[None, :]).to(tl.float32), axis=1), sem="relaxed")


def _block(c_pad: int, nb_pad: int) -> int:
    """Voxels per program: tiles of about 4096 values (the ``(bins, voxels)`` one-hot is the largest), about 32
    per thread at 4 warps, whatever the class and bin counts."""
    return max(16, min(1024, triton.next_power_of_2(max(1, 4096 // max(c_pad, nb_pad)))))


def triton_histograms(
    probs_all: torch.Tensor, labels_all: torch.Tensor, mask_all: torch.Tensor | None, num_bins: int, mode: int,
    softmax: bool, classwise: bool, bg: int, with_nll: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """The accumulators of ``_torch_backend._torch_pass``: ``top (B, 3, bins)``, ``cls (B, 3, C, bins)``,
    ``sc (B, 6)`` (float64) and the checks ``chk (7,)``, from one kernel launch and a few reductions."""
    b, c, n = probs_all.shape
    dev = probs_all.device
    if probs_all.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        probs_all = probs_all.float()
    labels = labels_all
    if labels.dtype == torch.bool:
        labels = labels.to(torch.uint8)
    mask = mask_all.view(torch.uint8) if mask_all is not None else labels  # a dummy pointer without a mask
    cp = triton.next_power_of_2(c)
    nbp = triton.next_power_of_2(num_bins)
    block = _block(cp, nbp)
    n_blocks = max(1, triton.cdiv(n, block))
    n_slots = min(n_blocks, _SLOTS)
    rows, slots = b * n_blocks, b * n_slots
    f32 = torch.float32
    top = torch.zeros(slots, 3, nbp, dtype=f32, device=dev)
    cls = torch.zeros(slots, 3, c, nbp, dtype=f32, device=dev) if classwise else torch.empty(1, dtype=f32, device=dev)
    sc = torch.zeros(slots, 6, dtype=f32, device=dev)
    chk = torch.empty(rows, 7, dtype=torch.float64, device=dev)
    with device_of(probs_all):
        _histogram_kernel[(n_blocks, b)](
            probs_all, labels, mask, top, cls, sc, chk,
            n, n_blocks, n_slots, probs_all.stride(0), probs_all.stride(1), probs_all.stride(2), labels.stride(0), labels.stride(1),
            mask.stride(0), mask.stride(1),
            C=c, CP=cp, NB=num_bins, NBP=nbp, BLOCK=block, MODE=mode, BG=bg, SOFTMAX=softmax, CLASSWISE=classwise,
            WITH_NLL=with_nll, USE_MASK=mask_all is not None, FLOAT_LABELS=labels.is_floating_point(),
            num_warps=4,
        )  # fmt: skip
    top_h = top.view(b, n_slots, 3, nbp).sum(1, dtype=torch.float64)[..., :num_bins]
    if classwise:
        cls_h = cls.view(b, n_slots, 3, c, nbp).sum(1, dtype=torch.float64)[..., :num_bins]
    else:
        cls_h = torch.zeros(b, 3, c, num_bins, dtype=torch.float64, device=dev)
    sc_h = sc.view(b, n_slots, 6).sum(1, dtype=torch.float64)
    if n == 0:  # no program ran over a voxel: neutral checks
        chk_h = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64, device=dev)
    else:
        chk_h = torch.stack([
            chk[:, 0].amin(), chk[:, 1].amax(), chk[:, 2].amin(), chk[:, 3].amax(), chk[:, 4].amax(), chk[:, 5].sum(), chk[:, 6].sum(),
        ])  # fmt: skip
    return top_h, cls_h, sc_h, chk_h
