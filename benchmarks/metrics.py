"""ECE + CECE + Brier on one 4-class volume, against MONAI's CalibrationErrorMetric and a torch.sum floor.

Usage: python benchmarks/metrics.py [--size 208] [--repeats 3] [--device cpu|cuda]
Targets: CPU (issue 3): >= 10x faster than MONAI's metric, within 4x of one torch.sum pass over the
probabilities, peak extra memory not above 2x the input tensor. CUDA (issue 12): >= 20x faster than MONAI's
metric on the same GPU, no host sync per chunk, peak extra memory (torch.cuda.max_memory_allocated) not above
2x the input; the ratio to one torch.sum is printed. On CUDA the script also checks that the GPU histograms
equal the CPU kernel's on the same data, and times the torch-only fallback (no Triton) beside the default path.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from monai.metrics import CalibrationErrorMetric

from calibmonai.metrics import CalibrationMetrics


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn, repeats: int, device: torch.device = torch.device("cpu")) -> float:
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def peak_extra_bytes(fn) -> int:
    """Peak growth of the resident memory (sampled every 0.5 ms from /proc/self/statm) while ``fn`` runs."""
    import gc
    import os
    import threading

    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    gc.collect()
    base, peak, done = rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.0005)

    th = threading.Thread(target=sample)
    th.start()
    fn()
    done.set()
    th.join()
    return max(0, peak[0] - base)


def peak_extra_cuda_bytes(fn, device: torch.device) -> int:
    """Peak of the CUDA memory allocated while ``fn`` runs, above what was allocated before it."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - base)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=208, help="cube side; 208^3 = 9.0 M voxels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    args = parser.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch (torch.cuda.is_available() is False).")
    n = args.size
    torch.manual_seed(0)
    probs_cpu = (torch.randn(1, 4, n, n, n) * 3).softmax(1)
    labels_cpu = torch.randint(0, 4, (1, 1, n, n, n), dtype=torch.uint8)
    probs, labels = probs_cpu.to(dev), labels_cpu.to(dev)
    onehot = None
    in_bytes = probs.numel() * probs.element_size()
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, threads {torch.get_num_threads()}"
    print(f"volume 4 x {n}^3 = {n**3 / 1e6:.1f} M voxels, probabilities {in_bytes / 2**20:.0f} MiB, on {where}")

    def ours():
        m = CalibrationMetrics(("ece", "cece", "brier"), foreground="none")
        m(probs, labels)
        return m.aggregate()

    def ours_top_label_only():  # no class-wise histograms: shows what CECE's C scatter updates per voxel cost
        m = CalibrationMetrics(("ece", "brier"), foreground="none")
        m(probs, labels)
        return m.aggregate()

    def monai_metric():
        nonlocal onehot
        if onehot is None:  # MONAI needs one-hot labels: built once, outside the timing
            onehot = torch.nn.functional.one_hot(labels[:, 0].long(), 4).movedim(-1, 1).float()
        m = CalibrationErrorMetric(num_bins=15, include_background=True)
        m(probs, onehot)
        return m.aggregate()

    tiny = CalibrationMetrics(("ece", "cece", "brier"), foreground="none")  # compile the kernels outside the measures
    tiny(probs[..., :4, :4, :4].contiguous(), labels[..., :4, :4, :4].contiguous())
    if dev.type == "cuda":
        peak = peak_extra_cuda_bytes(ours, dev)
        mem_note = "torch.cuda.max_memory_allocated"
    else:
        peak = peak_extra_bytes(ours)  # first, before anything else raises the process's peak
        mem_note = "resident memory"
    t_sum = best_of(lambda: probs.sum(), args.repeats, dev)
    t_ours = best_of(ours, args.repeats, dev)
    t_top = best_of(ours_top_label_only, args.repeats, dev)
    t_monai = best_of(monai_metric, max(1, args.repeats - 2), dev)
    target_monai, target_floor = (20, None) if dev.type == "cuda" else (10, 4)
    floor_note = f" (target <= {target_floor})" if target_floor else " (printed)"
    print(f"torch.sum floor          {t_sum * 1e3:9.2f} ms")
    print(f"calibmonai ECE+CECE+Brier{t_ours * 1e3:9.2f} ms   {t_ours / t_sum:6.1f}x the floor{floor_note}")
    print(f"  of which ECE+Brier only{t_top * 1e3:9.2f} ms   {t_top / t_sum:6.1f}x the floor (no class-wise histograms)")
    print(f"MONAI CalibrationError   {t_monai * 1e3:9.2f} ms   calibmonai is {t_monai / t_ours:5.1f}x faster (target >= {target_monai})")
    print(f"peak extra memory        {peak / 2**20:9.1f} MiB  {peak / in_bytes:6.2f}x the input (target <= 2; {mem_note})")
    if dev.type == "cuda":
        from calibmonai._triton import HAVE_TRITON, triton_enabled

        if HAVE_TRITON and os.environ.get("CALIBMONAI_TRITON", "1") != "0" and not triton_enabled():
            print("NOTE: the Triton kernel failed (see the warning above): the calibmonai figures are the torch pass")
        _cuda_extras(probs, labels, probs_cpu, labels_cpu, args.repeats, t_sum, t_monai)


def _cuda_extras(probs, labels, probs_cpu, labels_cpu, repeats, t_sum, t_monai) -> None:
    """The torch-only device path (no Triton), and the GPU histograms against the CPU kernel's."""
    from calibmonai._triton import HAVE_TRITON, set_triton_enabled
    from calibmonai.metrics import compute_calibration_histograms

    from calibmonai.metrics import calibration_errors

    dev = probs.device
    gpu = compute_calibration_histograms(probs, labels, foreground="none")
    cpu = compute_calibration_histograms(probs_cpu, labels_cpu, foreground="none")
    counts = ("top_count", "top_correct", "cls_count", "cls_hit", "n")
    diff_counts = max(float((getattr(gpu, k).cpu() - getattr(cpu, k)).abs().max()) for k in counts)
    eg, ec = calibration_errors(gpu), calibration_errors(cpu)
    diff_metrics = max(float((eg[k].cpu() - ec[k]).abs().max()) for k in ("ece", "cece", "brier"))
    print(f"GPU vs CPU kernel        max |count diff| {diff_counts:g}, max |metric diff| {diff_metrics:.2e} (same results)")
    print(f"host syncs per call      {_count_syncs(lambda: compute_calibration_histograms(probs, labels, foreground='none'))} "
          "(torch.cuda sync-debug warnings during compute_calibration_histograms: the one read-back of the checks)")
    print(f"Triton installed         {HAVE_TRITON} (the default CUDA path uses it when installed)")
    set_triton_enabled(False)
    try:
        def torch_only():
            m = CalibrationMetrics(("ece", "cece", "brier"), foreground="none")
            m(probs, labels)
            return m.aggregate()

        t_torch = best_of(torch_only, repeats, dev)
        peak = peak_extra_cuda_bytes(torch_only, dev)
    finally:
        set_triton_enabled(True)
    in_bytes = probs.numel() * probs.element_size()
    print(
        f"torch-only device path   {t_torch * 1e3:9.2f} ms   {t_torch / t_sum:6.1f}x the floor, {t_monai / t_torch:5.1f}x faster than MONAI, "
        f"peak {peak / in_bytes:.2f}x the input (the fallback without Triton)"
    )


def _count_syncs(fn) -> int:
    """Number of synchronising CUDA calls ``fn`` makes (torch's sync-debug mode warns once per call)."""
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


if __name__ == "__main__":
    main()
