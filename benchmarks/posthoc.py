"""Fit time and peak memory of TS, Platt and isotonic calibration for 10 M and 50 M validation voxels (4 classes).

Usage: python benchmarks/posthoc.py [--voxels 10e6 50e6] [--sample-size 200000]
The voxels are streamed in batches of 1 M through the class-stratified sampler (as the calibrate workflow does):
peak memory must not grow with the voxel count beyond the sample size.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import torch

from calibmonai.calibration import IsotonicCalibration, PlattScaling, StratifiedVoxelSampler, TemperatureScaling


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn):
    base, peak, done = rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.001)

    th = threading.Thread(target=sample)
    th.start()
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    done.set()
    th.join()
    return out, elapsed, max(0, peak[0] - base)


def stream(n_voxels: int, sample_size: int, batch: int = 1_000_000, c: int = 4):
    g = torch.Generator().manual_seed(0)
    sampler = StratifiedVoxelSampler(c, sample_size, seed=0)
    done = 0
    while done < n_voxels:
        n = min(batch, n_voxels - done)
        z = torch.randn(n, c, generator=g) * 2
        y = torch.multinomial(torch.softmax(z, 1), 1, generator=g)[:, 0]
        sampler.add((z * 3).T.reshape(1, c, n, 1), y.reshape(1, 1, n, 1))
        done += n
    return sampler.sample()


def run_one(n: int, sample_size: int) -> str:
    sample, t_stream, m_stream = measure(lambda: stream(n, sample_size))
    cells = []
    for cls in (TemperatureScaling, PlattScaling, IsotonicCalibration):
        cal = cls(4)
        _, t_fit, m_fit = measure(lambda: cal.fit(sample))
        cells.append(f"{t_fit:>14.2f} {m_fit / 2**20:>9.1f}")
    t = TemperatureScaling(4).fit(sample)["temperature"]
    return f"{n / 1e6:>7.0f}M {t_stream:>16.1f} {m_stream / 2**20:>9.1f} | " + " | ".join(cells) + f" | T={t:.3f} (true 3.0)"


def main(argv: list[str] | None = None) -> None:
    import subprocess
    import sys

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--voxels", type=float, nargs="+", default=[10e6, 50e6])
    parser.add_argument("--sample-size", type=int, default=200_000)
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.single:
        print(run_one(int(args.voxels[0]), args.sample_size))
        return
    print(f"sample size {args.sample_size}, 4 classes, threads {torch.get_num_threads()}; each row in a fresh process; "
          "peak MiB = growth of resident memory during that step")  # fmt: skip
    print(f"{'voxels':>8} {'stream+sample s':>16} {'peak MiB':>9} | " + " | ".join(f"{n:>8} fit s  peak MiB" for n in ("TS", "Platt", "isotonic")))
    for v in args.voxels:
        cmd = [sys.executable, __file__, "--single", "--voxels", str(v), "--sample-size", str(args.sample_size)]
        print(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
