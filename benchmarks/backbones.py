"""Footprint of every backbone fragment (bundles/backbones/): parameters, peak memory and seconds per training step.

Usage: python benchmarks/backbones.py [--repeats 3] [--threads N] [--device cpu|cuda] [--backbones unet,unetr]
       [--settings 2d,3d] [--markdown]

Each backbone is built from its fragment on top of ``bundles/mni_tissue_seg2d/configs/train.yaml`` exactly as a run
builds it (``ConfigParser``, the fragment's own widths), and trained with the MbLS loss and Adam on random data:

- ``2d``: the 2D bundle's patch 96 x 112 (``image_size``), batch 16 (``batch_size``);
- ``3d``: ``spatial_dims: 3``, patch 64^3, batch 2 (the WMH bundle's patch, the 3D bundles' ``batch_size``);
- ``la``: ``spatial_dims: 3``, patch 144 x 144 x 80, batch 2 (the left-atrium bundle's patch).

Every (backbone, setting) runs in a fresh Python process, so its memory is its own. Printed per row:

- parameters (trainable);
- peak memory of a training step: on CPU the peak resident set size of the process during its first training step
  (``VmHWM``, reset just before through ``/proc/self/clear_refs``) minus its resident size after building the
  network, the optimiser and the batch, i.e. activations, gradients, Adam's moments and the allocator's slack of
  one forward + backward + step. ``tracemalloc`` cannot measure this (it
  sees Python's allocator only, not the tensors' memory). On CUDA: ``torch.cuda.max_memory_allocated`` above the
  memory allocated before the step (network, batch);
- seconds per training step (forward, MbLS loss, backward, Adam step): the median of ``--repeats`` steps after
  one warm-up step, with ``--threads`` torch threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
#: the issue's order: the default first, then the convolutional variants, then the transformer hybrids
ORDER = ["unet", "resunet", "attention_unet", "unetpp", "unetr", "swin_unetr"]
SETTINGS = {
    "2d": {"spatial_dims": 2, "patch": [96, 112], "batch": 16},
    "3d": {"spatial_dims": 3, "patch": [64, 64, 64], "batch": 2},  # wmh_seg3d's patch
    "la": {"spatial_dims": 3, "patch": [144, 144, 80], "batch": 2},  # left_atrium_seg3d's patch
    # the 2D dataset bundles' image sizes (batch 16 slices each; one input channel)
    "2d64": {"spatial_dims": 2, "patch": [64, 64], "batch": 16},  # hippocampus_seg2d
    "2d192": {"spatial_dims": 2, "patch": [192, 192], "batch": 16},  # flare21_seg2d, promise12_seg2d
    "2d224": {"spatial_dims": 2, "patch": [224, 224], "batch": 16},  # acdc_seg2d
    "2d240": {"spatial_dims": 2, "patch": [240, 240], "batch": 16},  # mrbrains18_seg2d, brats19_seg2d
    "2d256": {"spatial_dims": 2, "patch": [256, 256], "batch": 16},  # busi_seg2d
}


def _rss_bytes() -> int:
    """Current resident set size (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS (Linux >= 4.0, ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    """Peak resident set size since the last :func:`_reset_peak_rss` (``VmHWM``), else since the process started."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build(backbone: str, setting: str) -> torch.nn.Module:
    """The network of ``bundles/backbones/<backbone>.yaml`` composed on the 2D bundle, at ``setting``'s size."""
    from calibmonai.bundle_tools import bundle_parser, config_files

    s = SETTINGS[setting]
    files = config_files("mni_tissue_seg2d", "mbls", backbone=backbone)
    parser = bundle_parser(files, spatial_dims=s["spatial_dims"], image_size=list(s["patch"]), patch_size=list(s["patch"]))
    return parser.get_parsed_content("network_def")


def measure(backbone: str, setting: str, device: str, repeats: int, threads: int) -> dict:
    """One (backbone, setting) in this process: parameters, peak memory of a step, seconds per step."""
    from calibmonai.losses import get_loss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    s = SETTINGS[setting]
    dev = torch.device(device)
    net = build(backbone, setting).to(dev).train()
    loss_fn = get_loss("mbls", 4, s["spatial_dims"], margin=10.0, alpha=0.1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(s["batch"], 1, *s["patch"], device=dev)
    y = torch.randint(0, 4, (s["batch"], 1, *s["patch"]), device=dev)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        step()
        peak = torch.cuda.max_memory_allocated(dev) - base
    else:
        if not _reset_peak_rss():
            raise RuntimeError("cannot reset the peak-RSS mark (/proc/self/clear_refs): the CPU memory figure needs Linux >= 4.0")
        base = _rss_bytes()
        step()  # the first step also allocates Adam's moments
        peak = _peak_rss_bytes() - base
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {
        "backbone": backbone, "setting": setting, "params": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "peak_mib": peak / 2**20, "s_per_step": statistics.median(times), "threads": threads, "device": device,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    from calibmonai.bundle_tools import backbone_names

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--backbones", default="", help="comma-separated subset (default: every fragment)")
    parser.add_argument("--settings", default="2d,3d", help=f"comma-separated, of {', '.join(SETTINGS)}")
    parser.add_argument("--markdown", action="store_true", help="print the table in Markdown")
    parser.add_argument("--worker", nargs=2, metavar=("BACKBONE", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(*args.worker, device=args.device, repeats=args.repeats, threads=args.threads)))
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch (torch.cuda.is_available() is False).")
    names = [b for b in args.backbones.split(",") if b] or sorted(backbone_names(), key=lambda b: (ORDER + [b]).index(b))
    unknown = sorted(set(names) - set(backbone_names()))
    if unknown:
        raise SystemExit(f"unknown backbone(s) {unknown}; available: {', '.join(backbone_names())}")
    settings = [s for s in args.settings.split(",") if s]
    if set(settings) - set(SETTINGS):
        raise SystemExit(f"--settings: choose from {', '.join(SETTINGS)}, got {args.settings!r}")
    memory = "torch.cuda.max_memory_allocated" if args.device.startswith("cuda") else "peak RSS growth"
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), device {args.device}; "
          f"median of {args.repeats} steps; memory: {memory}", flush=True)  # fmt: skip
    rows = []
    for setting in settings:
        for b in names:
            cmd = [sys.executable, __file__, "--worker", b, setting, "--device", args.device, "--repeats", str(args.repeats),
                   "--threads", str(args.threads)]  # fmt: skip
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if r.returncode != 0:
                print(f"{b} {setting}: failed\n{r.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(row)
            s = SETTINGS[setting]
            size = "x".join(map(str, s["patch"]))
            if not args.markdown:
                print(f"{b:15s} {setting} {size:9s} batch {s['batch']:2d}  params {row['params'] / 1e6:7.3f} M  "
                      f"peak {row['peak_mib']:8.0f} MiB  {row['s_per_step']:7.3f} s/step", flush=True)  # fmt: skip
    if args.markdown:
        print("| backbone | input (batch) | parameters | peak memory (MiB) | s / training step |")
        print("| --- | --- | ---: | ---: | ---: |")
        for row in rows:
            s = SETTINGS[row["setting"]]
            size = " x ".join(map(str, s["patch"]))
            print(f"| {row['backbone']} | {s['spatial_dims']}D {size} ({s['batch']}) | {row['params'] / 1e6:.2f} M | "
                  f"{row['peak_mib']:.0f} | {row['s_per_step']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
