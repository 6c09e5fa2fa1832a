"""One-pass, multi-threaded CPU kernel (numba) filling the calibration histograms of one case.

The voxels go through in blocks of 512. The per-voxel work (softmax for logits, confidence, the label's
probability, Brier, NLL, selection, bin indices) runs as vectorised loops over the block; only the histogram
updates are scalar. Those are packed: one int64 per bin holds the fixed-point sum of the probabilities
(``2**24`` units, bits 0-33), the voxel count (bits 34-43) and the count of hits (label == class, or a correct
top-label prediction; bits 44-53), so each voxel costs ``C + 1`` read-modify-writes (one per class for the
class-wise histograms, one for the top-label histogram) instead of ``3C + 3``. The packed histograms are
unpacked into float64 after every block (at most 512 voxels each, so no field overflows).

The prediction is the argmax of the probabilities with the first-index tie rule (``numpy.argmax``,
``torch.argmax``, and the segmentation of the evaluation): a voxel whose probabilities tie at the maximum is
predicted as the lowest tied class, so it is correct only when that class is its label.

The fixed-point sums round each probability to ``2**-24`` (exact for float32 values >= 0.5, at most
``3e-8`` off below), far inside the tolerance of any ECE; values a little below 0 (accepted within
``prob_tol``) count as 0 in the class-wise sums.
"""

from __future__ import annotations

import numpy as np

from calibmonai._vector_math import FASTMATH, HAVE_NUMBA, announce_compile, kernel_threads

__all__ = ["HAVE_NUMBA", "case_histograms"]

SEL_ALL, SEL_LABEL, SEL_LABEL_OR_PRED = 0, 1, 2
BLOCK = 512

if HAVE_NUMBA:
    from numba import njit, prange

    from calibmonai._vector_math import log_block, softmax_block

    _F0 = np.float32(0.0)
    _F1 = np.float32(1.0)
    _FIX = np.float32(16777216.0)  # 2**24
    _CNT = np.int64(1) << np.int64(34)
    _HIT = np.int64(1) << np.int64(44)
    _SUM_MASK = (np.int64(1) << np.int64(34)) - np.int64(1)
    _CNT_MASK = np.int64(0x3FF)

    @njit(fastmath=FASTMATH, inline="always", cache=True)
    def _flush(packed, count, psum, hits):  # pragma: no cover - jitted
        for i in range(packed.size):
            v = packed[i]
            if v != 0:
                psum[i] += np.float64(v & _SUM_MASK) / 16777216.0
                count[i] += np.float64((v >> np.int64(34)) & _CNT_MASK)
                hits[i] += np.float64(v >> np.int64(44))
                packed[i] = 0

    @njit(parallel=True, fastmath=FASTMATH, cache=True)
    def _kernel(probs, labels, mask, use_mask, num_bins, mode, bg, softmax, classwise, with_nll, prob_tol, n_threads):  # pragma: no cover - jitted
        C, N = probs.shape
        nblk = (N + BLOCK - 1) // BLOCK
        n_chunks = max(1, min(nblk, n_threads * 8))
        per = (nblk + n_chunks - 1) // n_chunks
        t_top = np.zeros((n_chunks, 3, num_bins))
        t_cls = np.zeros((n_chunks, 3, C, num_bins))
        t_sc = np.zeros((n_chunks, 6))  # n, nll, brier, brier_n, fg_brier, fg_n
        t_chk = np.zeros((n_chunks, 4))  # values outside [-tol, 1+tol], voxels with |sum-1| > tol, label_min, label_max
        ptol = np.float32(prob_tol)
        t_bad = np.zeros(n_chunks, dtype=np.int64)  # blocks with a non-finite value
        nbf = np.float32(num_bins)
        a0 = np.float32(mode == 0)  # selection modes as 0/1 weights: the selection loop stays branch-free
        a1 = np.float32(mode == 1)
        a2 = np.float32(mode == 2)
        top_bin = num_bins - 1
        for ch in prange(n_chunks):
            P = np.empty((C, BLOCK), np.float32)
            BI = np.empty((C, BLOCK), np.int32)  # bin of p_k
            INC = np.empty((C, BLOCK), np.int64)  # packed increment of p_k's bin
            m = np.empty(BLOCK, np.float32)
            s = np.empty(BLOCK, np.float32)
            mn = np.empty(BLOCK, np.float32)
            tmp = np.empty(BLOCK, np.float32)
            py = np.empty(BLOCK, np.float32)
            sel = np.empty(BLOCK, np.float32)
            lab = np.empty(BLOCK, np.int32)
            tb = np.empty(BLOCK, np.int32)
            pa = np.empty(BLOCK, np.int32)  # the prediction: first argmax of the probabilities
            tinc = np.empty(BLOCK, np.int64)
            ibuf = np.empty(BLOCK, np.int32)
            fview = ibuf.view(np.float32)
            ptop = np.zeros(num_bins, np.int64)
            pcls = np.zeros((C, num_bins), np.int64)
            top = np.zeros((3, num_bins))
            cls = np.zeros((3, C, num_bins))
            cnt = nll = br = br_n = fg_br = fg_n = 0.0
            n_out = 0.0
            n_off = 0.0
            lmin, lmax = 1 << 62, -(1 << 62)
            bad = 0
            for blk in range(ch * per, min(nblk, (ch + 1) * per)):
                i0 = blk * BLOCK
                n = min(BLOCK, N - i0)
                # labels: range and a safe copy
                lb = labels[i0 : i0 + n]
                bl_lo = lb[0]
                bl_hi = lb[0]
                for j in range(n):
                    v = lb[j]
                    bl_lo = min(bl_lo, v)
                    bl_hi = max(bl_hi, v)
                    lab[j] = np.int32(v) if (v >= 0) & (v < C) else np.int32(0)
                lmin = min(lmin, np.int64(bl_lo))
                lmax = max(lmax, np.int64(bl_hi))
                # probabilities of the block (softmax of the logits, or a float32 copy)
                chk = _F0
                if softmax:
                    chk += softmax_block(probs, i0, n, m, tb, s, P, tmp, ibuf, fview)  # tb: argmax scratch
                    for j in range(n):
                        s[j] = _F1 / s[j]
                        m[j] = s[j]  # the confidence: exp(0) / s
                    for k in range(C):
                        Pk = P[k]
                        for j in range(n):
                            Pk[j] = Pk[j] * s[j]
                else:
                    # range and sum checks as counts (min/max reductions do not vectorise under IEEE rules);
                    # the caller measures the offending values only when a count is not 0
                    p0 = probs[0, i0 : i0 + n]
                    P0 = P[0]
                    for j in range(n):
                        v = np.float32(p0[j])
                        P0[j] = v
                        s[j] = v
                        m[j] = v
                        mn[j] = v
                    for k in range(1, C):
                        pk = probs[k, i0 : i0 + n]
                        Pk = P[k]
                        for j in range(n):
                            v = np.float32(pk[j])
                            Pk[j] = v
                            s[j] += v
                            m[j] = max(m[j], v)
                            mn[j] = min(mn[j], v)
                    out = _F0
                    off = _F0
                    for j in range(n):
                        chk += s[j]
                        out += np.float32(mn[j] < -ptol) + np.float32(m[j] > _F1 + ptol)
                        off += np.float32(abs(s[j] - _F1) > ptol)
                    n_out += out
                    n_off += off
                if not np.isfinite(chk):
                    bad += 1
                    continue
                # the prediction: the first argmax of the probabilities (a strict '>' keeps the lowest tied class;
                # an upward scan with selects vectorises, a downward one does not); mn is free scratch here
                for j in range(n):
                    pa[j] = np.int32(0)
                    mn[j] = P[0, j]
                for k in range(1, C):
                    Pk = P[k]
                    k32 = np.int32(k)
                    for j in range(n):
                        v = Pk[j]
                        big = v > mn[j]
                        pa[j] = k32 if big else pa[j]
                        mn[j] = v if big else mn[j]
                # per voxel: confidence m (the max, from the loop above), label probability, Brier, selection
                for j in range(n):
                    py[j] = _F0
                    s[j] = _F0  # sum of squares
                for k in range(C):
                    Pk = P[k]
                    k32 = np.int32(k)
                    for j in range(n):
                        v = Pk[j]
                        py[j] += v * np.float32(lab[j] == k32)
                        s[j] += v * v
                bsum = _F0
                bn = _F0
                fsum = _F0
                fn = _F0
                csum = _F0
                b32 = np.int32(bg)
                if use_mask:
                    mk = mask[i0 : i0 + n]
                    for j in range(n):
                        tmp[j] = np.float32(mk[j])
                else:
                    for j in range(n):
                        tmp[j] = _F1
                for j in range(n):
                    w = tmp[j]
                    brier = s[j] - np.float32(2.0) * py[j] + _F1
                    fg = np.float32(lab[j] != b32)
                    bsum += w * brier
                    bn += w
                    fsum += w * fg * brier
                    fn += w * fg
                    sw = w * (a0 + a1 * fg + a2 * max(fg, np.float32(pa[j] != b32)))
                    sel[j] = sw
                    csum += sw
                br += bsum
                br_n += bn
                fg_br += fsum
                fg_n += fn
                cnt += csum
                if csum == _F0:
                    continue
                if with_nll:
                    for j in range(n):
                        tmp[j] = max(py[j], np.float32(1e-12))
                    log_block(tmp, s, ibuf, fview, n)
                    ns = _F0
                    for j in range(n):
                        ns -= sel[j] * s[j]
                    nll += ns
                # bins and packed increments (vectorised), then the scatter (scalar)
                for j in range(n):
                    c = m[j]
                    tb[j] = min(np.int32(c * nbf), np.int32(top_bin))
                    tinc[j] = _CNT + np.int64(c * _FIX + np.float32(0.5)) + (_HIT if pa[j] == lab[j] else np.int64(0))
                if classwise:
                    for k in range(C):
                        Pk = P[k]
                        Bk = BI[k]
                        Ik = INC[k]
                        k32 = np.int32(k)
                        for j in range(n):
                            v = Pk[j]
                            Bk[j] = min(max(np.int32(v * nbf), np.int32(0)), np.int32(top_bin))
                            # max(v, 0): a probability a little below 0 (accepted within prob_tol) must not
                            # borrow from the count field
                            fx = np.int64(max(v, _F0) * _FIX + np.float32(0.5))
                            Ik[j] = _CNT + fx + (_HIT if lab[j] == k32 else np.int64(0))
                for j in range(n):
                    if sel[j] == _F0:
                        continue
                    ptop[tb[j]] += tinc[j]
                    if classwise:
                        for k in range(C):
                            pcls[k, BI[k, j]] += INC[k, j]
                _flush(ptop, top[0], top[1], top[2])
                if classwise:
                    _flush(pcls.ravel(), cls[0].ravel(), cls[1].ravel(), cls[2].ravel())
            t_top[ch] = top
            t_cls[ch] = cls
            t_sc[ch, 0], t_sc[ch, 1], t_sc[ch, 2], t_sc[ch, 3], t_sc[ch, 4], t_sc[ch, 5] = cnt, nll, br, br_n, fg_br, fg_n
            t_chk[ch, 0], t_chk[ch, 1], t_chk[ch, 2], t_chk[ch, 3] = n_out, n_off, lmin, lmax
            t_bad[ch] = bad
        chk = np.empty(4)
        chk[0] = t_chk[:, 0].sum()
        chk[1] = t_chk[:, 1].sum()
        chk[2] = t_chk[:, 2].min()
        chk[3] = t_chk[:, 3].max()
        return t_top.sum(axis=0), t_cls.sum(axis=0), t_sc.sum(axis=0), chk, t_bad.sum()


def case_histograms(
    probs: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray | None,
    num_bins: int,
    mode: int,
    background_index: int,
    softmax: bool,
    classwise: bool,
    with_nll: bool = True,
    prob_tol: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Histograms of one case. ``probs (C, N)`` float32/float64 (or logits with ``softmax``), ``labels (N,)``
    integers, ``mask (N,)`` bool or ``None``; ``with_nll=False`` skips the logarithm when the NLL is not wanted.
    Returns ``top (3, bins)``, ``cls (3, C, bins)``, scalars ``[n, nll, brier, brier_n, fg_brier, fg_n]``,
    checks ``[#values outside [-prob_tol, 1 + prob_tol], #voxels whose sum is off 1 by more than prob_tol,
    label_min, label_max]`` (the counts only without ``softmax``) and the number of blocks holding a non-finite
    value (0 for valid input)."""
    use_mask = mask is not None
    m = mask if use_mask else np.zeros(1, dtype=np.bool_)
    announce_compile(_kernel, "the calibration metrics")
    top, cls, sc, chk, bad = _kernel(
        probs, labels, m, use_mask, num_bins, mode, background_index, softmax, classwise, with_nll, prob_tol, kernel_threads()
    )
    return top, cls, sc, chk, int(bad)
