"""Device backend of the calibration histograms: a pass over the voxels with no host synchronisation.

:func:`compute_calibration_histograms` sends tensors that are not on the CPU (CUDA, and any other device
torch supports) here. The per-voxel work is the same as the numba CPU kernel's
(:mod:`calibmonai.metrics._histogram_kernel`): confidence ``max_k p_k``, prediction ``argmax_k p_k`` (the
*first* index of the maximum on ties; "correct" is ``argmax == label``), the label's probability, Brier, NLL,
the voxel selection and the bin indices ``min(int(v * bins), bins - 1)`` of float32 values. Two
implementations fill the same accumulators:

- a Triton kernel (:mod:`calibmonai.metrics._triton_histogram`) for CUDA tensors when Triton is installed:
  one read of the probabilities, per-block histograms reduced in registers and added into a bounded number of
  partial-sum slots;
- torch operations otherwise: the per-bin sums are ``index_add_`` scatters into float64 histograms, the
  voxels in slices of ``chunk_voxels`` (bounding the temporary memory) launched back to back. On CUDA each
  histogram has ``_REPLICAS`` copies, picked by voxel index, so that the atomic adds of a slice do not all
  land on the same few addresses; the copies are summed at the end.

Neither waits for the device per slice: the input checks (label range, non-integer labels, probability range
and sums, non-finite values) are tensor reductions, read back once, after the pass, with one ``.tolist()``.
Bad values are clamped into range for the pass (so that no gather or scatter goes out of bounds) and the
reference ``ValueError`` is raised afterwards. Per-block sums are float32 (at most a few thousand voxels),
everything across blocks float64.
"""

from __future__ import annotations

import math

import torch

from calibmonai.losses.utils import non_integral
from calibmonai.metrics.calibration import CalibrationHistograms, _check_values

__all__ = ["device_histograms", "DEVICE_CHUNK_VOXELS", "SELECTION_MODES"]

DEVICE_CHUNK_VOXELS = 1 << 20  # about 40 * C bytes of temporaries per voxel: 160 MiB for 4 classes
SELECTION_MODES = {"none": 0, "label": 1, "label_or_pred": 2}  # the numba kernel's SEL_ALL, SEL_LABEL, SEL_LABEL_OR_PRED
_REPLICAS = 64  # copies of each histogram on CUDA (spreads the atomic adds of index_add_)
# the checks ``chk (7,)``: label min, label max, probability min, max, max |sum - 1|, non-finite values,
# non-integer labels


def _labels_chunk(lab: torch.Tensor, c: int, chk: torch.Tensor) -> torch.Tensor:
    """int64 labels clamped to ``[0, C)`` for the pass; range and integer checks folded into ``chk``."""
    if lab.dtype == torch.bool:
        lab = lab.to(torch.uint8)
    if lab.is_floating_point():
        bad = non_integral(lab)
        chk[6] += bad.sum()
        lab = torch.where(bad, torch.zeros_like(lab), lab)
    if lab.numel():
        lo, hi = torch.aminmax(lab)
        chk[0] = torch.minimum(chk[0], lo.double())
        chk[1] = torch.maximum(chk[1], hi.double())
    if lab.is_floating_point():
        lab = lab.clamp(-1.0, float(c))
    return lab.long().clamp_(0, c - 1)


def _torch_pass(
    probs_all: torch.Tensor, labels_all: torch.Tensor, mask_all: torch.Tensor | None, num_bins: int, mode: int,
    softmax: bool, classwise: bool, bg: int, with_nll: bool, chunk_voxels: int, replicas: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Accumulators ``top (B, 3, bins)``, ``cls (B, 3, C, bins)``, ``sc (B, 6)`` (float64) and ``chk (7,)``;
    ``replicas``: copies of each histogram (default ``_REPLICAS`` on CUDA, 1 elsewhere)."""
    b, c, n_vox = probs_all.shape
    dev = probs_all.device
    f64 = torch.float64
    nb1 = num_bins + 1  # one dump bin per histogram for the voxels outside the selection
    reps = replicas or (_REPLICAS if dev.type == "cuda" else 1)
    top = torch.zeros(b * reps * nb1, 3, dtype=f64, device=dev)  # count, sum of confidence, correct
    cls = torch.zeros(b * c * reps * nb1, 2, dtype=f64, device=dev)  # count, sum of p_k
    hit = torch.zeros(b * c * reps * nb1, dtype=f64, device=dev)
    sc = torch.zeros(b, 6, dtype=f64, device=dev)  # n, nll, brier, brier_n, fg_brier, fg_n
    chk = torch.zeros(7, dtype=f64, device=dev)  # filled on the device: no host-to-device copy
    chk[0:4:2] = math.inf
    chk[1:4:2] = -math.inf
    case = torch.arange(b, device=dev, dtype=torch.int32).view(b, 1)
    chan = torch.arange(b * c, device=dev, dtype=torch.int32).view(b, c, 1)
    step = max(1, int(chunk_voxels))
    for start in range(0, n_vox, step):
        stop = min(n_vox, start + step)
        n = stop - start
        x = probs_all[:, :, start:stop]
        if softmax:
            chk[5] += (~torch.isfinite(x)).sum()
            p = torch.softmax(x.float(), dim=1)
        else:
            p = x.float()
            chk[5] += torch.isnan(p).sum()
            lo, hi = torch.aminmax(p)
            chk[2] = torch.minimum(chk[2], lo.double())
            chk[3] = torch.maximum(chk[3], hi.double())
            chk[4] = torch.maximum(chk[4], (p.sum(1) - 1.0).abs().amax().double())
        lab = _labels_chunk(labels_all[:, start:stop], c, chk)
        conf, pred = p.max(dim=1)  # the first index of the maximum on ties, as torch.argmax
        p_y = p.gather(1, lab.unsqueeze(1)).squeeze(1)
        fg = lab != bg
        keep = torch.ones_like(fg) if mask_all is None else mask_all[:, start:stop]
        brier = ((p * p).sum(1) - 2.0 * p_y + 1.0).double()
        keep_f = keep.double()
        fg_keep = (keep & fg).double()
        if mode == 1:
            sel = keep & fg
        elif mode == 2:
            sel = keep & (fg | (pred != bg))
        else:
            sel = keep
        sel_f = sel.double()
        parts = [sel_f.sum(1), torch.zeros_like(sc[:, 0]), (brier * keep_f).sum(1), keep_f.sum(1), (brier * fg_keep).sum(1), fg_keep.sum(1)]
        if with_nll:
            parts[1] = (-torch.log(p_y.clamp_min(1e-12)).double() * sel_f).sum(1)
        sc += torch.stack(parts, dim=1)
        # replica of each voxel (by index), then its histogram row; unselected voxels go to the dump bin
        rep = (torch.arange(start, stop, device=dev, dtype=torch.int32) % reps).view(1, n)
        tb = (conf * num_bins).to(torch.int32).clamp_(0, num_bins - 1)
        idx = torch.where(sel, tb, num_bins) + (case * reps + rep) * nb1
        src = torch.stack([torch.ones_like(conf), conf, (pred == lab).to(conf.dtype)], dim=-1).double()
        top.index_add_(0, idx.reshape(-1), src.reshape(-1, 3))
        if classwise:
            cb = (p * num_bins).to(torch.int32).clamp_(0, num_bins - 1)
            cidx = torch.where(sel.unsqueeze(1), cb, num_bins) + (chan * reps + rep.unsqueeze(0)) * nb1
            src = torch.stack([torch.ones_like(p), p], dim=-1).double()
            cls.index_add_(0, cidx.reshape(-1), src.reshape(-1, 2))
            # each voxel is a hit only for its own label's class: the label's bin
            hidx = cidx.gather(1, lab.unsqueeze(1))
            hit.index_add_(0, hidx.reshape(-1), torch.ones(hidx.numel(), dtype=f64, device=dev))
    top = top.view(b, reps, nb1, 3).sum(1)[:, :num_bins].permute(0, 2, 1)
    cls = torch.cat([cls.view(b, c, reps, nb1, 2), hit.view(b, c, reps, nb1, 1)], dim=-1).sum(2)
    cls = cls[:, :, :num_bins].permute(0, 3, 1, 2)
    return top, cls, sc, chk


def device_histograms(
    probs_all: torch.Tensor, labels_all: torch.Tensor, mask_all: torch.Tensor | None, hist: CalibrationHistograms,
    num_bins: int, foreground: str, softmax: bool, classwise: bool, background_index: int, prob_tol: float,
    with_nll: bool = True, chunk_voxels: int = DEVICE_CHUNK_VOXELS, impl: str = "auto",
) -> CalibrationHistograms:  # fmt: skip
    """Fill ``hist`` from ``probs_all (B, C, N)`` (probabilities, or logits with ``softmax``), ``labels_all
    (B, N)`` and ``mask_all (B, N)`` bool or ``None``, on the tensors' device, with one host synchronisation.

    Args:
        hist: zeroed histograms of ``B`` cases (filled in place and returned).
        impl: ``"triton"`` (the Triton kernel: CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``),
            ``"torch"`` (torch operations, any device) or ``"auto"`` (Triton for CUDA tensors where it is
            installed and enabled, see :mod:`calibmonai._triton`).
        chunk_voxels: voxels per slice of the torch implementation (its temporary memory is about
            ``40 * C * chunk_voxels`` bytes).
        The other arguments are those of :func:`calibmonai.metrics.compute_calibration_histograms`.

    Raises:
        ValueError: for an unknown ``impl``, and the input errors of ``compute_calibration_histograms``.
    """
    from calibmonai._triton import run_or_fall_back, runs_triton

    if impl not in ("auto", "triton", "torch"):
        raise ValueError(f"impl must be 'auto', 'triton' or 'torch', got {impl!r}.")
    if foreground not in SELECTION_MODES:
        raise ValueError(f"foreground must be one of {tuple(SELECTION_MODES)}, got {foreground!r}.")
    b, c, n_vox = probs_all.shape
    mode = SELECTION_MODES[foreground]
    tensors = (probs_all, labels_all) + (() if mask_all is None else (mask_all,))
    use_triton = impl == "triton" or (impl == "auto" and runs_triton(*tensors))
    if use_triton:
        if not runs_triton(*tensors, allow_cpu=True):
            raise ValueError(
                f"impl='triton' needs the triton package and CUDA tensors (or TRITON_INTERPRET=1 for CPU ones), "
                f"got tensors on {probs_all.device}."
            )
        from calibmonai.metrics._triton_histogram import triton_histograms

        args = (probs_all, labels_all, mask_all, num_bins, mode, softmax, classwise, background_index, with_nll)
        # impl="auto": a failure of the kernel on this GPU switches Triton off and the torch pass runs instead
        out = triton_histograms(*args) if impl == "triton" else run_or_fall_back("the calibration metrics", triton_histograms, *args)
        use_triton = out is not None
        if use_triton:
            top, cls, sc, chk = out
    if not use_triton:
        top, cls, sc, chk = _torch_pass(probs_all, labels_all, mask_all, num_bins, mode, softmax, classwise, background_index, with_nll, chunk_voxels)
    hist.top_count.copy_(top[:, 0])
    hist.top_conf.copy_(top[:, 1])
    hist.top_correct.copy_(top[:, 2])
    if classwise:
        hist.cls_count.copy_(cls[:, 0])
        hist.cls_prob.copy_(cls[:, 1])
        hist.cls_hit.copy_(cls[:, 2])
    for i, t in enumerate((hist.n, hist.nll_sum, hist.brier_sum, hist.brier_n, hist.brier_fg_sum, hist.brier_fg_n)):
        t.copy_(sc[:, i])
    lab_lo, lab_hi, p_lo, p_hi, s_err, n_bad, n_nonint = chk.tolist()  # the one host synchronisation
    if n_nonint:
        raise ValueError("y holds class indices, but some values are not integers (or not finite).")
    if n_vox == 0:
        lab_lo, lab_hi, p_lo, p_hi = 0.0, 0.0, 0.0, 1.0
    _check_values(c, lab_lo, lab_hi, softmax, p_lo, p_hi, s_err, prob_tol, int(n_bad))
    return hist
