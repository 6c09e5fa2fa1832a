"""One-pass CPU kernels (numba) for the softmax-based calibration losses: value and gradient together.

Every loss of this package is a function of the log-probabilities ``l = log softmax(z)`` of each voxel (the
MbLS hinge too: ``max_j z_j - z_k = max_j l_j - l_k``). For such a loss, with ``a_k = dL/dl_k``, the gradient
with respect to the logits is ``dL/dz_k = a_k - p_k * sum_j a_j``. The kernel reads each voxel's logits once,
computes the softmax with a vectorised ``exp``/``log``, accumulates the loss and writes ``dL/dz``, so that the
backward pass costs nothing more (``torch.nn.functional.cross_entropy`` runs separate log-softmax, NLL and
their backward kernels for the same work). The torch implementations in the loss modules stay the reference
(and the path for other devices, dtypes and ``reduction="none"``).

The terms, each with its coefficient (0 switches it off), per voxel ``i`` with label ``y``:

- ``c_ce * (-l_y)``                                     cross-entropy
- ``c_unif * mean_k(-l_k)``                             uniform target (label smoothing)
- ``c_ent * sum_k p_k l_k``                             minus entropy (confidence penalty)
- ``c_hinge * sum_k ReLU(max_j l_j - l_k - margin)^q``  MbLS, ``q`` = 1 or 2
- on misclassified voxels only (the first-index argmax of ``z`` is not ``y``: a voxel whose logits tie at the
  maximum is predicted as its lowest tied class), with ``lc = max(l, log eps)``:
  ``c_meep * sum_k exp(lc_k) lc_k`` (MEEP entropy) or ``c_meep * (-mean_k lc_k - log K)`` (MEEP KL)
- Dice: ``a_k += p_k * g[b, k, y == k]`` with ``g = dDice/dp`` from the Dice sums of a first pass (``g = 0`` for
  a class left out of the Dice mean, e.g. the background of MbLS + Dice).
- soft targets ``c_soft * sum_k (-q_k l_k)`` (SVLS), ``q`` from :func:`svls_targets`.
- on the logits, not through the softmax: ``c_dist * sum_k |z_k - q_k|`` (NACL, ``q`` from
  :func:`neighbour_targets`, mean filter, zero padding).
- focal: ``-c_focal (1 - p_y)^gamma l_y`` (MONAI ``FocalLoss`` with softmax), integer ``gamma`` 0..4.
"""

from __future__ import annotations

import numpy as np

from calibmonai._vector_math import FASTMATH, HAVE_NUMBA

if HAVE_NUMBA:
    from numba import njit, prange

    from calibmonai._vector_math import log_block as _log_block
    from calibmonai._vector_math import softmax_block

__all__ = ["HAVE_NUMBA", "BLOCK", "loss_kernel", "dice_prepass", "svls_targets", "neighbour_targets"]

BLOCK = 512  # voxels per block: every scratch row stays in L1/L2

if HAVE_NUMBA:
    _F0 = np.float32(0.0)
    _F1 = np.float32(1.0)

    @njit(fastmath=FASTMATH, inline="always", cache=True)
    def _labels_block(y, b, s0, n, C, lab):  # pragma: no cover - jitted
        """Copy one block of labels into ``lab`` (int32), count those outside ``[0, C)`` and map them to 0."""
        yb = y[b, s0 : s0 + n]
        bad = 0
        for j in range(n):
            v = yb[j]
            out = (v < 0) | (v >= C)
            bad += 1 if out else 0
            lab[j] = 0 if out else np.int32(v)
        return bad

    @njit(cache=True)
    def _chunks(n_blocks, n_threads):  # pragma: no cover - jitted
        n_chunks = max(1, min(n_blocks, n_threads * 8))
        return n_chunks, (n_blocks + n_chunks - 1) // n_chunks

    @njit(parallel=True, fastmath=FASTMATH, cache=True)
    def dice_prepass(z, y, n_threads):  # pragma: no cover - jitted
        """First pass for Dice-based losses and MEEP: per ``(b, c)`` the sums ``[sum p y, sum p, sum y]`` of the
        softmax, the number of misclassified voxels (first-index argmax of ``z`` not ``y``), out-of-range labels and
        the logits' checksum."""
        B, C, S = z.shape
        nb = (S + BLOCK - 1) // BLOCK
        n_chunks, per = _chunks(B * nb, n_threads)
        sums = np.zeros((n_chunks, B, C, 3))
        stats = np.zeros((n_chunks, 3))  # wrong, bad labels, checksum
        for ch in prange(n_chunks):
            m = np.empty(BLOCK, np.float32)
            s = np.empty(BLOCK, np.float32)
            tmp = np.empty(BLOCK, np.float32)
            E = np.empty((C, BLOCK), np.float32)
            am = np.empty(BLOCK, np.int32)
            lab = np.empty(BLOCK, np.int32)
            ibuf = np.empty(BLOCK, np.int32)
            fview = ibuf.view(np.float32)
            for blk in range(ch * per, min(B * nb, (ch + 1) * per)):
                b = blk // nb
                s0 = (blk % nb) * BLOCK
                n = min(BLOCK, S - s0)
                stats[ch, 1] += _labels_block(y, b, s0, n, C, lab)
                stats[ch, 2] += softmax_block(z[b], s0, n, m, am, s, E, tmp, ibuf, fview)
                for j in range(n):
                    s[j] = _F1 / s[j]
                for k in range(C):
                    Ek = E[k]
                    k32 = np.int32(k)
                    ip = _F0
                    sp = _F0
                    sy = _F0
                    for j in range(n):
                        p = Ek[j] * s[j]
                        yk = np.float32(lab[j] == k32)  # arithmetic, not a select: vectorises
                        sp += p
                        ip += p * yk
                        sy += yk
                    sums[ch, b, k, 0] += ip
                    sums[ch, b, k, 1] += sp
                    sums[ch, b, k, 2] += sy
                wrong = _F0
                for j in range(n):
                    wrong += np.float32(am[j] != lab[j])  # am: the first argmax of the logits
                stats[ch, 0] += wrong
        return sums.sum(axis=0), stats.sum(axis=0)

    @njit(parallel=True, fastmath=FASTMATH, cache=True)
    def loss_kernel(
        z, y, grad, write_grad, n_threads, c_ce, c_unif, c_ent, c_hinge, margin, hinge_sq, c_meep, meep_mode, log_eps, dice_g, use_dice, c_soft, soft, c_dist, c_focal, focal_gamma
    ):  # pragma: no cover - jitted
        """Loss value (sum of the terms over the voxels, float64) and, when ``write_grad``, ``grad = dL/dz``.

        Args:
            z: logits ``(B, C, S)`` float32, C-contiguous; ``y``: labels ``(B, S)`` of any integer type.
            grad: output ``(B, C, S)`` float32 (ignored unless ``write_grad``).
            meep_mode: 0 none, 1 entropy, 2 KL. ``dice_g``: ``(B, C, 2)`` dDice/dp for ``y != k`` and ``y == k``.
            soft: soft targets ``q (B, C, S)`` for the term ``c_soft * sum_k -q_k l_k`` (SVLS) or
                ``c_dist * sum_k |z_k - q_k|`` (NACL, on the logits), or a dummy; it may be ``grad`` itself (each
                block of ``q`` is read before the same block of ``grad`` is written).
            c_focal, focal_gamma: focal term ``-c_focal (1 - p_y)^gamma l_y``, integer ``gamma`` in 0..4.

        Returns:
            ``(loss, stats)`` with ``stats = [bad labels, logits checksum]``.
        """
        B, C, S = z.shape
        nb = (S + BLOCK - 1) // BLOCK
        n_chunks, per = _chunks(B * nb, n_threads)
        loss = np.zeros(n_chunks)
        stats = np.zeros((n_chunks, 2))
        cu = np.float32(c_unif / C)
        f_ce = np.float32(c_ce)
        f_soft = np.float32(c_soft)
        use_soft = c_soft != 0.0 or c_dist != 0.0
        f_dist = np.float32(c_dist)
        use_dist = c_dist != 0.0
        f_foc = np.float32(c_focal)
        use_focal = c_focal != 0.0
        gam = np.float32(focal_gamma)
        f_ent = np.float32(c_ent)
        f_h = np.float32(c_hinge)
        f_m = np.float32(c_meep)
        f_mk = np.float32(c_meep / C)
        mrg = np.float32(margin)
        leps = np.float32(log_eps)
        eps = np.float32(np.exp(log_eps))
        logc = np.float32(np.log(C))
        for ch in prange(n_chunks):
            m = np.empty(BLOCK, np.float32)
            s = np.empty(BLOCK, np.float32)
            lse = np.empty(BLOCK, np.float32)
            tmp = np.empty(BLOCK, np.float32)
            A = np.empty(BLOCK, np.float32)
            H = np.empty(BLOCK, np.float32)
            wr = np.empty(BLOCK, np.float32)
            E = np.empty((C, BLOCK), np.float32)
            am = np.empty(BLOCK, np.int32)
            lab = np.empty(BLOCK, np.int32)
            ibuf = np.empty(BLOCK, np.int32)
            fview = ibuf.view(np.float32)
            acc = 0.0
            for blk in range(ch * per, min(B * nb, (ch + 1) * per)):
                b = blk // nb
                s0 = (blk % nb) * BLOCK
                n = min(BLOCK, S - s0)
                stats[ch, 0] += _labels_block(y, b, s0, n, C, lab)
                stats[ch, 1] += softmax_block(z[b], s0, n, m, am, s, E, tmp, ibuf, fview)
                _log_block(s, lse, ibuf, fview, n)
                for j in range(n):
                    lse[j] += m[j]
                    s[j] = _F1 / s[j]
                    A[j] = _F0
                    H[j] = _F0
                if meep_mode != 0:
                    for j in range(n):
                        wr[j] = np.float32(am[j] != lab[j])  # am: the first argmax of the logits
                blk_loss = _F0
                # per class: E[k] becomes p_k, a_k = dL/dl_k (less the hinge) goes to grad[k]; A = sum_k a_k without
                # the hinge (which sums to 0); H = the hinge's share, added to the argmax class below
                for k in range(C):
                    zk = z[b, k, s0 : s0 + n]
                    Ek = E[k]
                    k32 = np.int32(k)
                    g0 = np.float32(dice_g[b, k, 0]) if use_dice else _F0
                    g1 = np.float32(dice_g[b, k, 1]) if use_dice else _F0
                    qk = soft[b, k, s0 : s0 + n] if use_soft else soft[0, 0, 0:1]
                    # arithmetic on 0/1 floats rather than selects, so that the loop vectorises
                    for j in range(n):
                        lp = zk[j] - lse[j]
                        p = Ek[j] * s[j]
                        yk = np.float32(lab[j] == k32)
                        lv = _F0
                        # cross-entropy and uniform target
                        w = cu + f_ce * yk
                        if use_soft:
                            w += f_soft * qk[j]
                        extra = _F0  # gradient terms directly on the logits (not through the softmax)
                        if use_dist:
                            dz = zk[j] - qk[j]
                            lv += f_dist * abs(dz)
                            extra = f_dist * (np.float32(dz > _F0) - np.float32(dz < _F0))
                        a = -w
                        lv -= w * lp
                        if use_focal:
                            o = _F1 - p
                            if focal_gamma == 0:
                                pw, pw1 = _F1, _F0
                            elif focal_gamma == 1:
                                pw, pw1 = o, _F1
                            elif focal_gamma == 2:
                                pw, pw1 = o * o, o
                            elif focal_gamma == 3:
                                pw, pw1 = o * o * o, o * o
                            else:
                                pw, pw1 = o * o * o * o, o * o * o
                            fy = f_foc * yk
                            lv -= fy * pw * lp
                            a -= fy * (pw - gam * pw1 * p * lp)
                        # minus entropy
                        plp = p * lp
                        lv += f_ent * plp
                        a += f_ent * (p + plp)
                        # MEEP on misclassified voxels (probabilities clamped at eps)
                        if meep_mode != 0:
                            lc = max(lp, leps)
                            on = np.float32(lp > leps)
                            if meep_mode == 1:
                                pc = on * p + (_F1 - on) * eps
                                lv += wr[j] * f_m * pc * lc
                                a += wr[j] * f_m * on * p * (_F1 + lc)
                            else:
                                lv -= wr[j] * f_mk * lc
                                a -= wr[j] * f_mk * on
                        # Dice
                        a += p * (g0 + (g1 - g0) * yk)
                        A[j] += a
                        # MbLS hinge
                        d = m[j] - zk[j] - mrg
                        h = max(d, _F0)
                        if hinge_sq:
                            lv += f_h * h * h
                            ah = np.float32(2.0) * f_h * h
                        else:
                            lv += f_h * h
                            ah = f_h * np.float32(d > _F0)
                        H[j] += ah
                        blk_loss += lv
                        Ek[j] = p
                        tmp[j] = a - ah + extra  # a_k, finished below
                    if write_grad:
                        gk = grad[b, k, s0 : s0 + n]
                        for j in range(n):
                            gk[j] = tmp[j]
                if meep_mode == 2:
                    nw = _F0
                    for j in range(n):
                        nw += wr[j]
                    blk_loss -= nw * f_m * logc
                acc += blk_loss
                if write_grad:
                    for k in range(C):
                        gk = grad[b, k, s0 : s0 + n]
                        Ek = E[k]
                        k32 = np.int32(k)
                        for j in range(n):
                            gk[j] = gk[j] - Ek[j] * A[j] + H[j] * np.float32(am[j] == k32)
            loss[ch] = acc
        return loss.sum(), stats.sum(axis=0)

    @njit(parallel=True, fastmath=FASTMATH, cache=True)
    def neighbour_targets(y, out, g1, three_d, replicate, centre_extra, inv_norm, n_threads):  # pragma: no cover - jitted
        """Soft labels ``out (B, C, D*H*W)`` of labels ``y (B, D, H, W)`` (2D: ``D = 1``, ``three_d`` False) under a
        separable 3x3(x3) kernel ``G = g x g (x g)``, ``g = (g1, 1, g1)``, plus ``centre_extra`` on the centre,
        times ``inv_norm``; neighbours outside the image are clamped (``replicate``) or zero.

        Rows of ``W`` voxels: the 3 (2D) or 9 (3D) neighbouring rows are summed per class, then the row is
        convolved with ``g``. :func:`svls_targets` and NACL's mean filter are the two users.
        """
        B, D, H, W = y.shape
        C = out.shape[1]
        f1 = np.float32(g1)
        extra = np.float32(centre_extra)
        inv = np.float32(inv_norm)
        rows = B * D * H
        n_chunks = max(1, min(rows, n_threads * 8))
        per = (rows + n_chunks - 1) // n_chunks
        dr = 1 if three_d else 0
        for ch in prange(n_chunks):
            R = np.empty((C, W + 2), np.float32)
            for row in range(ch * per, min(rows, (ch + 1) * per)):
                b = row // (D * H)
                d = (row // H) % D
                h = row % H
                R[:, :] = _F0
                for dd in range(-dr, dr + 1):
                    if not replicate and (d + dd < 0 or d + dd >= D):
                        continue
                    d2 = min(max(d + dd, 0), D - 1)
                    wd = f1 if dd != 0 else _F1
                    for dh in range(-1, 2):
                        if not replicate and (h + dh < 0 or h + dh >= H):
                            continue
                        h2 = min(max(h + dh, 0), H - 1)
                        wt = wd * (f1 if dh != 0 else _F1)
                        yr = y[b, d2, h2, :]
                        for k in range(C):
                            k32 = np.int32(k)
                            Rk = R[k]
                            for x in range(W):
                                Rk[x + 1] += wt * np.float32(yr[x] == k32)
                yc = y[b, d, h, :]
                base = (d * H + h) * W
                for k in range(C):
                    k32 = np.int32(k)
                    Rk = R[k]
                    Rk[0] = Rk[1] if replicate else _F0
                    Rk[W + 1] = Rk[W] if replicate else _F0
                    o = out[b, k, base : base + W]
                    for x in range(W):
                        o[x] = (f1 * (Rk[x] + Rk[x + 2]) + Rk[x + 1] + extra * np.float32(yc[x] == k32)) * inv

    @njit(cache=True)
    def svls_targets(y, out, g1, three_d, n_threads):  # pragma: no cover - jitted
        """SVLS soft labels ``out (B, C, D*H*W)`` of labels ``y (B, D, H, W)`` (2D: ``D = 1``, ``three_d`` False).

        The SVLS kernel is the separable Gaussian ``G = g x g (x g)``, ``g = (g1, 1, g1)``, with its centre weight
        1 replaced by the sum ``T - 1`` of the others (``T = (1 + 2 g1)^dims``), normalised by ``2T - 2``:
        ``q_k = (G * onehot_k + (T - 2) onehot_k) / (2T - 2)``. Replicate padding = clamped neighbour indices.
        Rows of ``W`` voxels: the 3 (2D) or 9 (3D) neighbouring rows are summed per class, then the row is
        convolved with ``g``.
        """
        T = (1.0 + 2.0 * g1) ** (3 if three_d else 2)
        neighbour_targets(y, out, g1, three_d, True, T - 2.0, 1.0 / (2.0 * T - 2.0), n_threads)
