"""Vectorised ``exp`` and ``log`` for numba kernels, on blocks of float32 values.

numba calls the scalar libm ``expf``/``logf`` (no vector math library is bundled), which stops LLVM from
vectorising a loop that calls them; these polynomial versions (Cephes ``expf``, and an ``atanh`` series for
``log``, both about 1 ulp) vectorise. The power of two is read and written through an int32 view of a float32
scratch buffer, the one bit-cast numba offers.

The kernels that inline these are cached by numba (``cache=True``), and numba's cache does not notice edits to
this file: after changing it, delete the ``*.nbi``/``*.nbc`` files under ``calibmonai/losses/__pycache__`` and
``calibmonai/metrics/__pycache__`` (a fresh install or clone has none).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

try:
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False

__all__ = ["HAVE_NUMBA", "FASTMATH", "exp_block", "log_block", "softmax_block", "kernel_threads"]

# IEEE rules kept (no 'nnan'/'ninf'): the kernels must see NaN/Inf to report them
FASTMATH = {"reassoc", "contract", "arcp", "nsz", "afn"}



def kernel_threads() -> int:
    """Make the numba kernels use as many threads as torch (``torch.set_num_threads``), capped at numba's pool;
    returns that number. numba's setting is per calling thread, so this is called before each kernel."""
    import numba
    import torch

    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return n


if HAVE_NUMBA:
    _LOG2E = np.float32(1.4426950408889634)
    _LN2_HI = np.float32(0.693359375)
    _LN2_LO = np.float32(-2.12194440e-4)
    _LN2 = np.float32(0.6931471805599453)
    _SQRT2 = np.float32(1.4142135623730951)
    _F0 = np.float32(0.0)
    _F1 = np.float32(1.0)

    @njit(fastmath=FASTMATH, inline="always", cache=True)
    def exp_block(x, out, ibuf, fview, n):  # pragma: no cover - jitted
        """``out[:n] = exp(x[:n])`` for ``x <= 0`` (Cephes ``expf`` polynomial, about 1 ulp), vectorised:
        the power of two is built in the integer view ``ibuf`` of the float buffer ``fview``."""
        for j in range(n):
            v = max(x[j], np.float32(-87.0))
            e = np.floor(v * _LOG2E + np.float32(0.5))
            f = v - e * _LN2_HI - e * _LN2_LO
            p = np.float32(1.9875691500e-4)
            p = p * f + np.float32(1.3981999507e-3)
            p = p * f + np.float32(8.3334519073e-3)
            p = p * f + np.float32(4.1665795894e-2)
            p = p * f + np.float32(1.6666665459e-1)
            p = p * f + np.float32(5.0000001201e-1)
            out[j] = p * f * f + f + _F1
            ibuf[j] = (np.int32(e) + np.int32(127)) << np.int32(23)
        for j in range(n):
            out[j] = out[j] * fview[j]

    @njit(fastmath=FASTMATH, inline="always", cache=True)
    def log_block(s, out, ibuf, fview, n):  # pragma: no cover - jitted
        """``out[:n] = log(s[:n])`` for normal positive ``s`` (exponent from the bits, ``atanh`` series on the
        mantissa in ``[sqrt(2)/2, sqrt(2))``, about 1 ulp), vectorised."""
        for j in range(n):
            fview[j] = s[j]
        for j in range(n):
            bits = ibuf[j]
            out[j] = np.float32((bits >> np.int32(23)) - np.int32(127))
            ibuf[j] = (bits & np.int32(0x7FFFFF)) | np.int32(0x3F800000)
        for j in range(n):
            m = fview[j]
            big = m > _SQRT2
            m = m * np.float32(0.5) if big else m
            e = out[j] + (_F1 if big else _F0)
            t = (m - _F1) / (m + _F1)
            t2 = t * t
            r = t2 * (np.float32(1.0 / 7.0) + t2 * np.float32(1.0 / 9.0))
            r = t2 * (np.float32(1.0 / 3.0) + t2 * (np.float32(0.2) + r))
            out[j] = e * _LN2 + np.float32(2.0) * t * (_F1 + r)

    @njit(fastmath=FASTMATH, inline="always", cache=True)
    def softmax_block(z, s0, n, m, am, s, E, tmp, ibuf, fview):  # pragma: no cover - jitted
        """For the voxels ``s0 .. s0+n`` of logits ``z (C, N)``: the max ``m``, the first argmax ``am``,
        ``E[k] = exp(z_k - m)`` and ``s = sum_k E[k]`` (float32 scratch rows); returns the block sum of the
        logits, non-finite when a logit is."""
        C = z.shape[0]
        z0 = z[0, s0 : s0 + n]
        chk = _F0
        for j in range(n):
            v = np.float32(z0[j])
            m[j] = v
            am[j] = 0
            s[j] = _F0
            chk += v
        for k in range(1, C):
            zk = z[k, s0 : s0 + n]
            for j in range(n):
                v = np.float32(zk[j])
                chk += v
                big = v > m[j]
                am[j] = k if big else am[j]
                m[j] = v if big else m[j]
        for k in range(C):
            zk = z[k, s0 : s0 + n]
            for j in range(n):
                tmp[j] = np.float32(zk[j]) - m[j]
            Ek = E[k]
            exp_block(tmp, Ek, ibuf, fview, n)
            for j in range(n):
                s[j] += Ek[j]
        return chk

    @njit(cache=True)
    def exp_values(x, out):  # pragma: no cover - jitted
        """``out = exp(x)`` for a whole float32 array ``x <= 0`` (the block function on one block; for tests)."""
        ibuf = np.empty(x.size, np.int32)
        exp_block(x, out, ibuf, ibuf.view(np.float32), x.size)

    @njit(cache=True)
    def log_values(s, out):  # pragma: no cover - jitted
        """``out = log(s)`` for a whole float32 array of normal positive values (for tests)."""
        ibuf = np.empty(s.size, np.int32)
        log_block(s, out, ibuf, ibuf.view(np.float32), s.size)


_ANNOUNCED: set[str] = set()


def announce_compile(dispatchers: Any, what: str) -> None:
    """Before a numba kernel's first call in this process, say so in one line when it has to be compiled (no entry in
    numba's on-disk cache yet): the first call then takes tens of seconds, and a silent pause looks like a hang."""
    if what in _ANNOUNCED:
        return
    _ANNOUNCED.add(what)
    for d in dispatchers if isinstance(dispatchers, (list, tuple)) else [dispatchers]:
        if getattr(d, "signatures", None):
            continue
        cache = getattr(d, "_cache", None)
        index = getattr(getattr(cache, "_cache_file", None), "_index_path", None)
        if index is None or not os.path.exists(index):
            from calibmonai.progress import progress

            progress(f"[calibmonai] compiling the numba kernels of {what} (first use only; cached for later runs) ...")
            return
