"""Independent numpy reference implementations used by the tests (never imported by the package)."""

from __future__ import annotations

import itertools

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def take_label(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """a: (B, C, *S), y: (B, *S) -> a[b, y[b, s], s]"""
    return np.take_along_axis(a, y[:, None], axis=1)[:, 0]


def ce(z, y):
    return -take_label(log_softmax(z), y).mean()


def mbls(z, y, margin, alpha, penalty="l1"):
    d = z.max(axis=1, keepdims=True) - z
    h = np.maximum(d - margin, 0.0)
    if penalty == "l2":
        h = h**2
    return ce(z, y) + alpha * h.mean()


def ecp(z, y, beta):
    p, lp = softmax(z), log_softmax(z)
    return ce(z, y) - beta * (-p * lp).mean()


def ls(z, y, alpha):
    lp = log_softmax(z)
    return ((1 - alpha) * -take_label(lp, y) + alpha * (-lp).mean(axis=1)).mean()


def svls_kernel(dims, sigma):
    k = np.zeros((3,) * dims)
    for off in itertools.product(range(3), repeat=dims):
        k[off] = np.exp(-sum((o - 1) ** 2 for o in off) / (2 * sigma**2))
    c = (1,) * dims
    k[c] = k.sum() - k[c]
    return k / k.sum()


def svls(z, y, sigma):
    b, c = z.shape[:2]
    dims = z.ndim - 2
    k = svls_kernel(dims, sigma)
    onehot = np.moveaxis(np.eye(c)[y], -1, 1)
    padded = np.pad(onehot, [(0, 0), (0, 0)] + [(1, 1)] * dims, mode="edge")
    q = np.zeros_like(onehot)
    for off in itertools.product(range(3), repeat=dims):
        sl = tuple(slice(o, o + n) for o, n in zip(off, z.shape[2:]))
        q += k[off] * padded[(slice(None), slice(None)) + sl]
    return -(q * log_softmax(z)).sum(axis=1).mean(), q


def meep_term(z, y, regularizer, eps=1e-8):
    p = softmax(z)
    lp = np.log(np.clip(p, eps, None))
    wrong = z.argmax(axis=1) != y
    if not wrong.any():
        return 0.0
    if regularizer == "entropy":
        v = -(p * lp).sum(axis=1)
    else:
        v = -lp.mean(axis=1) - np.log(z.shape[1])
    return v[wrong].mean()


def dice_loss(z, y, smooth=1e-5, include_background=True):
    """MONAI DiceLoss(softmax=True, to_onehot_y=True) with its defaults: per (batch, class), then mean;
    ``include_background=False`` drops class 0 from the mean (the MbLS + Dice reference code)."""
    c = z.shape[1]
    p = softmax(z)
    g = np.moveaxis(np.eye(c)[y], -1, 1)
    axes = tuple(range(2, z.ndim))
    inter = (p * g).sum(axis=axes)
    denom = p.sum(axis=axes) + g.sum(axis=axes)
    per = 1.0 - (2 * inter + smooth) / (denom + smooth)
    return (per if include_background else per[:, 1:]).mean()


def mbls_dice(z, y, margin, alpha, include_background=False):
    d = z.max(axis=1, keepdims=True) - z
    return ce(z, y) + dice_loss(z, y, include_background=include_background) + alpha * np.maximum(d - margin, 0).mean()


def _bin_of(v, lo, hi, last):
    return (v >= lo) & ((v <= hi) if last else (v < hi))


def ece(p, y, nb, sel, correct=None):
    """top-label ECE of one case; p (C, N), y (N,), sel (N,) bool. Explicit loop over bins. ``correct`` (N,)
    defaults to numpy's argmax (first index on ties) == y."""
    correct = (p.argmax(0) == y) if correct is None else correct
    conf, correct = p.max(0)[sel], correct[sel]
    n = conf.size
    if n == 0:
        return float("nan")
    total = 0.0
    for b in range(nb):
        inb = _bin_of(conf, b / nb, (b + 1) / nb, b == nb - 1)
        if inb.any():
            total += abs(correct[inb].mean() - conf[inb].mean()) * inb.sum() / n
    return total


def cece(p, y, nb, sel, include_background=True):
    c = p.shape[0]
    if not sel.any():
        return float("nan")
    per = []
    for k in range(c if include_background else 1, c) if not include_background else range(c):
        pk, hit = p[k][sel], (y == k)[sel].astype(float)
        n = pk.size
        e = 0.0
        for b in range(nb):
            inb = _bin_of(pk, b / nb, (b + 1) / nb, b == nb - 1)
            if inb.any():
                e += abs(hit[inb].mean() - pk[inb].mean()) * inb.sum() / n
        per.append(e)
    return float(np.mean(per))


def brier(p, y, sel):
    if not sel.any():
        return float("nan")
    onehot = np.eye(p.shape[0])[y].T
    return float(((p - onehot) ** 2).sum(0)[sel].mean())


def nll(p, y, sel):
    if not sel.any():
        return float("nan")
    return float(-np.log(np.clip(p[y, np.arange(y.size)], 1e-12, None))[sel].mean())


# ---- numpy transcriptions of the authors' public code (MbLS/NACL evaluation, MEEP training), written for
# tests/test_reference_conventions.py: they follow the reference formulas, including where calibmonai differs ----


def authors_ece(p, y, nb=15):
    """Top-label ECE as the MbLS/NACL code's ``ECELoss``: p (C, N) probabilities of the evaluated voxels, y (N,);
    prediction = first index of the max; bins (lo, hi]."""
    conf, acc = p.max(0), (p.argmax(0) == y).astype(float)
    edges = np.linspace(0.0, 1.0, nb + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inb = (conf > lo) & (conf <= hi)
        if inb.any():
            total += abs(conf[inb].mean() - acc[inb].mean()) * inb.mean()
    return total


def authors_cece(p, y, nb=15):
    """Class-wise ECE as the MbLS/NACL code's ``ClasswiseECELoss``: classes 0 .. max(y) (not all C); bins (lo, hi]."""
    edges = np.linspace(0.0, 1.0, nb + 1)
    per = []
    for k in range(int(y.max()) + 1):
        pk, hit = p[k], (y == k).astype(float)
        e = 0.0
        for lo, hi in zip(edges[:-1], edges[1:]):
            inb = (pk > lo) & (pk <= hi)
            if inb.any():
                e += abs(pk[inb].mean() - hit[inb].mean()) * inb.mean()
        per.append(e)
    return float(np.mean(per))


def authors_mbls_l2(z, y, margin, alpha):
    """MbLS code's ``LogitMarginL2``: CE + alpha * mean ReLU((d - m)^2), squared *before* the ReLU (two-sided)."""
    d = z.max(axis=1, keepdims=True) - z
    return ce(z, y) + alpha * np.maximum((d - margin) ** 2, 0.0).mean()


def _binary_ce_per_class(t, p, eps=1e-7):
    """Keras ``binary_crossentropy`` along the class axis (1): mean over classes of the per-class binary CE."""
    pc = np.clip(p, eps, 1.0 - eps)
    return -(t * np.log(pc) + (1.0 - t) * np.log(1.0 - pc)).mean(axis=1)


def authors_meep_ce(z, y, lam, regularizer, eps=1e-7):
    """MEEP's reference loss with its CE base (written for binary tasks): per-class binary CE
    ``- lam * mean over misclassified voxels of mean_k h(p_k)`` (entropy), or
    ``+ lam * mean over misclassified voxels of mean_k(-log p_k)`` (KL, without the ``- log K``)."""
    p = softmax(z)
    onehot = np.moveaxis(np.eye(z.shape[1])[y], -1, 1)
    base = _binary_ce_per_class(onehot, p, eps).mean()
    wrong = p.argmax(axis=1) != y
    if regularizer == "entropy":
        reg = _binary_ce_per_class(p, p, eps)  # the average of per-class binary entropies
        return base - lam * reg[wrong].sum() / wrong.sum()
    kl = -np.log(np.clip(p, eps, 1.0)).mean(axis=1)
    return base + lam * kl[wrong].sum() / wrong.sum()
