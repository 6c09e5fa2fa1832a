"""Seconds per scan of a bundle's inference workflow (its ``inference.yaml`` through ``monai.bundle.ConfigParser``):
read, preprocess, network, postprocess (inverse transforms, probability maps) and write, end to end, and the
network's own share.

Usage: python benchmarks/inference.py [--device cuda|cpu] [--bundle mni_tissue_seg2d] [--method mbls]
           [--backbone unet] [--input_dir DIR] [--repeats 2] [--amp auto|true|false]
Figure for issue 12: seconds per scan on one GPU (printed; no target).

The network's weights are random (a checkpoint written to a temporary run folder): speed does not depend on
them. The scans are ``--input_dir`` or, by default, the images of a small copy of the embedded MNI task written
to a temporary folder first (not timed). The workflow runs ``initialize`` (the checkpoint loader) and then its
evaluator over every scan once untimed (warm-up: cuDNN autotuning, first-call costs), then ``--repeats`` times
timed with ``overwrite``; outputs go to a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time

import torch


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def inference_parser(args, input_dir: str, runs_dir: str, output_dir: str):
    from calibmonai.bundle_tools import bundle_dir, bundle_parser, config_files

    overrides = {
        "bundle_root": str(bundle_dir(args.bundle).resolve()),
        "runs_dir": runs_dir,
        "input_dir": input_dir,
        "output_dir": output_dir,
        "overwrite": True,
        "device": f"$torch.device('{args.device}')",
    }
    if args.amp != "auto":
        overrides["amp"] = args.amp == "true"
    files = config_files(args.bundle, args.method, backbone=args.backbone or None, workflow="inference.yaml")
    return bundle_parser(files, **overrides)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bundle", default="mni_tissue_seg2d")
    parser.add_argument("--method", default="mbls")
    parser.add_argument("--backbone", default="")
    parser.add_argument("--input_dir", default="", help="scans to segment (default: the images of a small embedded task)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes over the scans (the best is printed)")
    parser.add_argument("--amp", default="auto", choices=("auto", "true", "false"), help="auto: the bundle's own setting")
    args = parser.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch (torch.cuda.is_available() is False).")
    with tempfile.TemporaryDirectory(prefix="calibmonai-bench-") as tmp:
        input_dir = args.input_dir
        if not input_dir:
            from calibmonai.data import prepare_mni_tissue

            t = time.perf_counter()
            data = os.path.join(tmp, "data")
            prepare_mni_tissue(data, num_subjects=6, split=(4, 1, 1), progress=False)
            input_dir = os.path.join(data, "images")
            print(f"[prepare] small embedded task (6 subjects) in {time.perf_counter() - t:.1f} s (not timed)")
        cfg = inference_parser(args, input_dir, os.path.join(tmp, "runs"), os.path.join(tmp, "out"))
        # a random-weight checkpoint where the workflow looks for the trained one
        ckpt = cfg.get_parsed_content("ckpt_path")
        os.makedirs(os.path.dirname(ckpt), exist_ok=True)
        torch.save(cfg.get_parsed_content("network_def", lazy=False).state_dict(), ckpt)
        cfg.get_parsed_content("initialize")
        evaluator = cfg.get_parsed_content("evaluator")
        n_scans = len(evaluator.dataset.data)
        amp = bool(cfg.get_parsed_content("amp"))
        where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, threads {torch.get_num_threads()}"
        print(f"bundle {args.bundle}, method {args.method}, backbone {args.backbone or 'unet'}, {where}, AMP {amp}, {n_scans} scans")
        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet):  # the engine prints one progress line per scan
            evaluator.run()  # warm-up pass
        best = float("inf")
        for _ in range(max(1, args.repeats)):
            _sync(dev)
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(quiet):
                summary = evaluator.run()
            _sync(dev)
            best = min(best, time.perf_counter() - t0)
        if len(summary.done) != n_scans:
            raise SystemExit(f"only {len(summary.done)} of {n_scans} scans were segmented: {summary.failed}")
        # the network's share: the inferer on one preprocessed scan already on the device
        item = dict(evaluator.dataset.data[0])
        image = torch.as_tensor(evaluator.dataset.transform(item)["image"])[None].float().to(dev)
        network, inferer = cfg.get_parsed_content("network"), cfg.get_parsed_content("inferer")
        t_net = float("inf")
        for _ in range(3):
            _sync(dev)
            t0 = time.perf_counter()
            with torch.no_grad(), torch.autocast(dev.type, enabled=amp):
                inferer(image, network)
            _sync(dev)
            t_net = min(t_net, time.perf_counter() - t0)
    print(f"scan shape after preprocessing {tuple(image.shape[2:])}")
    print(f"inference workflow (read, preprocess, network, postprocess, write) {best / n_scans:8.3f} s per scan")
    print(f"  of which the network (inferer on a scan already on the device)    {t_net:8.3f} s per scan")


if __name__ == "__main__":
    sys.exit(main())
