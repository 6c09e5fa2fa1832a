"""ECE + CECE + Brier on one 4-class volume, against MONAI's CalibrationErrorMetric and a torch.sum floor.

Usage: python benchmarks/metrics.py [--size 208] [--repeats 3]
Targets (issue 3): >= 10x faster than MONAI's metric, within 4x of one torch.sum pass over the
probabilities, peak extra memory not above 2x the input tensor.
"""

from __future__ import annotations

import argparse
import time

import torch
from monai.metrics import CalibrationErrorMetric

from calibmonai.metrics import CalibrationMetrics


def best_of(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=208, help="cube side; 208^3 = 9.0 M voxels")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.size
    torch.manual_seed(0)
    probs = (torch.randn(1, 4, n, n, n) * 3).softmax(1)
    labels = torch.randint(0, 4, (1, 1, n, n, n), dtype=torch.uint8)
    onehot = None
    in_bytes = probs.numel() * probs.element_size()
    print(f"volume 4 x {n}^3 = {n**3 / 1e6:.1f} M voxels, probabilities {in_bytes / 2**20:.0f} MiB, threads {torch.get_num_threads()}")

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

    tiny = CalibrationMetrics(("ece", "cece", "brier"), foreground="none")  # compile the numba kernel outside the measures
    tiny(probs[..., :4, :4, :4].contiguous(), labels[..., :4, :4, :4].contiguous())
    peak = peak_extra_bytes(ours)  # first, before anything else raises the process's peak
    t_sum = best_of(lambda: probs.sum(), args.repeats)
    t_ours = best_of(ours, args.repeats)
    t_top = best_of(ours_top_label_only, args.repeats)
    t_monai = best_of(monai_metric, max(1, args.repeats - 2))
    print(f"torch.sum floor          {t_sum * 1e3:9.1f} ms")
    print(f"calibmonai ECE+CECE+Brier{t_ours * 1e3:9.1f} ms   {t_ours / t_sum:6.1f}x the floor (target <= 4)")
    print(f"  of which ECE+Brier only{t_top * 1e3:9.1f} ms   {t_top / t_sum:6.1f}x the floor (no class-wise histograms)")
    print(f"MONAI CalibrationError   {t_monai * 1e3:9.1f} ms   calibmonai is {t_monai / t_ours:5.1f}x faster (target >= 10)")
    print(f"peak extra memory        {peak / 2**20:9.1f} MiB  {peak / in_bytes:6.2f}x the input (target <= 2)")


if __name__ == "__main__":
    main()
