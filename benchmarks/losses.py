"""Forward+backward time of every calibmonai loss as a ratio to plain ``F.cross_entropy``, same run.

Usage: python benchmarks/losses.py [--repeats 5] [--small] [--reference] [--device cpu|cuda]
Target (issue 2, CPU; issue 12, CUDA): every loss <= 1.3x CE.

Float32 CPU logits take the fused one-pass numba kernel and CUDA logits the fused Triton kernels
(calibmonai.losses.fused, calibmonai.losses._triton_kernel); ``--reference`` times the torch implementations
instead. On CUDA the shapes are 2x4x96^3 and 2x4x160^3, each loss is timed on both paths (Triton and torch) in
the same run, and the peak CUDA memory of one forward+backward (``torch.cuda.max_memory_allocated``, above the
logits and labels) is printed beside ``F.cross_entropy``'s.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from calibmonai.losses import METHODS, get_loss
from calibmonai.losses.fused import fused_disabled, set_fused_enabled


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def _time(fn, x, y, repeats: int) -> float:
    fn(x, y).backward()  # warm-up (and, on CUDA, the kernels' compilation)
    best = float("inf")
    for _ in range(repeats):
        x.grad = None
        _sync(x)
        t0 = time.perf_counter()
        fn(x, y).backward()
        _sync(x)
        best = min(best, time.perf_counter() - t0)
    return best


def _peak(fn, x, y) -> int:
    """Peak CUDA memory of one forward+backward above what is allocated before it (the logits, labels)."""
    x.grad = None
    torch.cuda.synchronize(x.device)
    base = torch.cuda.memory_allocated(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    fn(x, y).backward()
    torch.cuda.synchronize(x.device)
    x.grad = None
    return torch.cuda.max_memory_allocated(x.device) - base


def plain_ce(a, b):
    return F.cross_entropy(a, b[:, 0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="quarter-size inputs (quick check)")
    parser.add_argument("--reference", action="store_true", help="time the torch implementations (fused path off)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--methods", default="", help="comma-separated subset of the methods (default: all)")
    args = parser.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch (torch.cuda.is_available() is False).")
    set_fused_enabled(not args.reference)
    names = [m for m in args.methods.split(",") if m] or list(METHODS)
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; available: {', '.join(METHODS)}")
    if dev.type == "cuda":
        shapes = {"3D 96^3": (2, 4, 96, 96, 96), "3D 160^3": (2, 4, 160, 160, 160)}
        if args.small:
            shapes = {"3D 48^3": (2, 4, 48, 48, 48), "3D 80^3": (2, 4, 80, 80, 80)}
    else:
        shapes = {"3D": (2, 4, 96, 96, 96), "2D": (16, 4, 224, 224)}
        if args.small:
            shapes = {"3D": (2, 4, 48, 48, 48), "2D": (4, 4, 224, 224)}
    if dev.type == "cuda":
        from calibmonai._triton import triton_enabled

        fast = "fused Triton kernels" if triton_enabled() and not args.reference else "torch implementations (no Triton)"
        where = torch.cuda.get_device_name(dev)
    else:
        fast = "torch reference implementations" if args.reference else "fused CPU kernel where it applies"
        where = f"CPU, threads {torch.get_num_threads()}"
    print(f"torch {torch.__version__}, {where}, best of {args.repeats}, {fast}")
    for tag, shape in shapes.items():
        torch.manual_seed(0)
        x = torch.randn(shape, device=dev, requires_grad=True)
        y = torch.randint(0, shape[1], (shape[0], 1) + shape[2:], device=dev)
        _time(plain_ce, x, y, args.repeats)  # first timings of a process run cold: discard
        base = _time(plain_ce, x, y, args.repeats)
        print(f"\n{tag} logits {shape}: F.cross_entropy fwd+bwd {base * 1e3:.2f} ms")
        if dev.type == "cuda":
            base_mem = _peak(plain_ce, x, y)
            print(f"(peak memory of F.cross_entropy fwd+bwd {base_mem / 2**20:.0f} MiB)")
            print(f"{'method':<20}{'ms':>9}{'x CE':>7}{'torch ms':>10}{'x CE':>7}{'peak MiB':>10}{'torch MiB':>10}  target <= 1.3")
        else:
            print(f"{'method':<20}{'ms':>10}{'x CE':>8}  target <= 1.3")
        for name in names:
            loss = get_loss(name, num_classes=shape[1], spatial_dims=len(shape) - 2)
            t = _time(loss, x, y, args.repeats)
            flag = "" if t / base <= 1.3 else "  over"
            if dev.type == "cuda" and fast.startswith("fused") and not triton_enabled():
                flag += "  (the Triton kernel failed, see the warning: torch path timed)"
            if dev.type == "cuda":
                mem = _peak(loss, x, y)
                with fused_disabled():
                    t_ref = _time(loss, x, y, args.repeats)
                    mem_ref = _peak(loss, x, y)
                print(f"{name:<20}{t * 1e3:>9.2f}{t / base:>7.2f}{t_ref * 1e3:>10.2f}{t_ref / base:>7.2f}{mem / 2**20:>10.0f}{mem_ref / 2**20:>10.0f}{flag}")
            else:
                print(f"{name:<20}{t * 1e3:>10.1f}{t / base:>8.2f}{flag}")
        again = _time(plain_ce, x, y, args.repeats)
        print(f"(F.cross_entropy re-timed at the end: {again * 1e3:.2f} ms; ratios use the first)")
        del x, y
        if dev.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
