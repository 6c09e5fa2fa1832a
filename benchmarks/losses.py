"""Forward+backward time of every calibmonai loss as a ratio to plain ``F.cross_entropy``, same run.

Usage: python benchmarks/losses.py [--repeats 5] [--small] [--reference]
Target (issue 2): every loss <= 1.3x CE.

Float32 CPU logits take the fused one-pass kernel (calibmonai.losses.fused); ``--reference`` times the torch
implementations instead (the path for CUDA, float64 and ``reduction="none"``).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from calibmonai.losses import METHODS, get_loss
from calibmonai.losses.fused import set_fused_enabled


def _time(fn, x, y, repeats: int) -> float:
    fn(x, y).backward()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        x.grad = None
        t0 = time.perf_counter()
        fn(x, y).backward()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="quarter-size inputs (quick check)")
    parser.add_argument("--reference", action="store_true", help="time the torch implementations (fused path off)")
    args = parser.parse_args()
    set_fused_enabled(not args.reference)
    shapes = {"3D": (2, 4, 96, 96, 96), "2D": (16, 4, 224, 224)}
    if args.small:
        shapes = {"3D": (2, 4, 48, 48, 48), "2D": (4, 4, 224, 224)}
    path = "torch reference implementations" if args.reference else "fused CPU kernel where it applies"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, best of {args.repeats}, {path}")
    for tag, shape in shapes.items():
        torch.manual_seed(0)
        x = torch.randn(shape, requires_grad=True)
        y = torch.randint(0, shape[1], (shape[0], 1) + shape[2:])
        def plain_ce(a, b):
            return F.cross_entropy(a, b[:, 0])

        _time(plain_ce, x, y, args.repeats)  # first timings of a process run cold: discard
        base = _time(plain_ce, x, y, args.repeats)
        print(f"\n{tag} logits {shape}: F.cross_entropy fwd+bwd {base * 1e3:.1f} ms")
        print(f"{'method':<20}{'ms':>10}{'x CE':>8}  target <= 1.3")
        for name in METHODS:
            loss = get_loss(name, num_classes=shape[1], spatial_dims=len(shape) - 2)
            t = _time(loss, x, y, args.repeats)
            flag = "" if t / base <= 1.3 else "  over"
            print(f"{name:<20}{t * 1e3:>10.1f}{t / base:>8.2f}{flag}")
        again = _time(plain_ce, x, y, args.repeats)
        print(f"(F.cross_entropy re-timed at the end: {again * 1e3:.1f} ms; ratios use the first)")


if __name__ == "__main__":
    main()
