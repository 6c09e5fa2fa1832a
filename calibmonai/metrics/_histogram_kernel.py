"""One-pass, multi-threaded CPU kernel (numba) filling the calibration histograms of one case.

The torch implementation in :mod:`calibmonai.metrics.calibration` makes a dozen elementwise passes and
temporaries per chunk; this kernel reads each voxel's probabilities once and updates small per-thread
histograms, then sums them. It is used for CPU tensors when numba is importable; both give the same numbers.
"""

from __future__ import annotations

import numpy as np

try:  # numba is a dependency, but keep the package importable without it (the torch path is the fallback)
    import numba
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False

__all__ = ["HAVE_NUMBA", "case_histograms"]

# selection modes
SEL_ALL, SEL_LABEL, SEL_LABEL_OR_PRED = 0, 1, 2


if HAVE_NUMBA:

    @njit(parallel=True, fastmath=False, cache=True)
    def _kernel(probs, labels, mask, use_mask, num_bins, mode, bg, softmax, classwise, with_nll, n_chunks):  # pragma: no cover - jitted
        c, n = probs.shape
        t_top = np.zeros((n_chunks, 3, num_bins))
        t_cls = np.zeros((n_chunks, 3, c, num_bins))
        t_sc = np.zeros((n_chunks, 6))  # n, nll, brier, brier_n, fg_brier, fg_n
        t_chk = np.zeros((n_chunks, 5))  # p_min, p_max, max |sum-1|, label_min, label_max
        t_bad = np.zeros(n_chunks, dtype=np.int64)  # non-finite values
        step = (n + n_chunks - 1) // n_chunks
        nbf = np.float32(num_bins)
        for t in prange(n_chunks):
            lo = t * step
            hi = min(n, lo + step)
            # chunk-local accumulators: no write to memory shared with another thread inside the loop
            top = np.zeros((3, num_bins))
            cls = np.zeros((3, c, num_bins))
            p = np.empty(c)
            cnt = nll = br = br_n = fg_br = fg_n = 0.0
            pmin, pmax, serr = 1e30, -1e30, 0.0
            lmin, lmax = 1 << 62, -(1 << 62)
            bad = 0
            for i in range(lo, hi):
                lab = labels[i]
                if lab < lmin:
                    lmin = lab
                if lab > lmax:
                    lmax = lab
                if lab < 0 or lab >= c:
                    continue
                if softmax:
                    m = probs[0, i]
                    for k in range(1, c):
                        if probs[k, i] > m:
                            m = probs[k, i]
                    s = 0.0
                    for k in range(c):
                        e = np.exp(probs[k, i] - m)
                        p[k] = e
                        s += e
                    if not np.isfinite(s) or not np.isfinite(m):
                        bad += 1
                        continue
                    for k in range(c):
                        p[k] /= s
                else:
                    s = 0.0
                    for k in range(c):
                        v = probs[k, i]
                        p[k] = v
                        s += v
                        if v < pmin:
                            pmin = v
                        if v > pmax:
                            pmax = v
                    if not np.isfinite(s):
                        bad += 1
                        continue
                    d = abs(s - 1.0)
                    if d > serr:
                        serr = d
                if use_mask and not mask[i]:
                    continue
                conf = p[0]
                sq = 0.0
                for k in range(c):
                    if p[k] > conf:
                        conf = p[k]
                    sq += p[k] * p[k]
                py = p[lab]
                brier = sq - 2.0 * py + 1.0
                br += brier
                br_n += 1.0
                fg = lab != bg
                if fg:
                    fg_br += brier
                    fg_n += 1.0
                if mode == 1:  # SEL_LABEL
                    sel = fg
                elif mode == 2:  # SEL_LABEL_OR_PRED
                    sel = fg or (p[bg] < conf)
                else:
                    sel = True
                if not sel:
                    continue
                cnt += 1.0
                if with_nll:
                    nll += -np.log(max(py, 1e-12))
                cf = np.float32(conf)
                b = min(max(int(cf * nbf), 0), num_bins - 1)
                top[0, b] += 1.0
                top[1, b] += cf
                if py >= conf:
                    top[2, b] += 1.0
                if classwise:
                    for k in range(c):
                        pk = np.float32(p[k])
                        bk = min(max(int(pk * nbf), 0), num_bins - 1)
                        cls[0, k, bk] += 1.0
                        cls[1, k, bk] += pk
                    cls[2, lab, min(max(int(np.float32(py) * nbf), 0), num_bins - 1)] += 1.0
            t_top[t] = top
            t_cls[t] = cls
            t_sc[t, 0], t_sc[t, 1], t_sc[t, 2], t_sc[t, 3], t_sc[t, 4], t_sc[t, 5] = cnt, nll, br, br_n, fg_br, fg_n
            t_chk[t, 0], t_chk[t, 1], t_chk[t, 2], t_chk[t, 3], t_chk[t, 4] = pmin, pmax, serr, lmin, lmax
            t_bad[t] = bad
        chk = np.empty(5)
        chk[0] = t_chk[:, 0].min()
        chk[1] = t_chk[:, 1].max()
        chk[2] = t_chk[:, 2].max()
        chk[3] = t_chk[:, 3].min()
        chk[4] = t_chk[:, 4].max()
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
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Histograms of one case. ``probs (C, N)`` float32 (or logits with ``softmax``), ``labels (N,)`` integers,
    ``mask (N,)`` bool or ``None``; ``with_nll=False`` skips the logarithm when the NLL is not wanted. Returns ``top (3, bins)``, ``cls (3, C, bins)``, scalars
    ``[n, nll, brier, brier_n, fg_brier, fg_n]``, checks ``[p_min, p_max, max|sum-1|, label_min, label_max]``
    and the number of non-finite inputs."""
    n_chunks = max(1, min(64, numba.get_num_threads() * 4, probs.shape[1] // 4096 + 1))
    use_mask = mask is not None
    m = mask if use_mask else np.zeros(1, dtype=np.bool_)
    top, cls, sc, chk, bad = _kernel(probs, labels, m, use_mask, num_bins, mode, background_index, softmax, classwise, with_nll, n_chunks)
    return top, cls, sc, chk, int(bad)
