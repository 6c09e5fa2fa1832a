"""Images/s of a bundle's training, run from its train config through ``monai.bundle.ConfigParser``, against a
hand-written PyTorch loop with the same network, loss, optimiser, batch and AMP on data already on the device.

Usage: python benchmarks/training.py [--device cuda|cpu] [--iterations 60] [--warmup 10] [--method mbls]
           [--bundle mni_tissue_seg2d] [--backbone unet] [--dataset_dir DIR] [--amp auto|true|false]
Target (issue 12): the bundle's images/s >= 0.9x the hand loop's, on one GPU.

The bundle part is the bundle's own ``train#trainer`` (its data pipeline, loader, handlers, AMP setting) with
these overrides only: ``device``, ``amp``, ``dataset_dir``/``runs_dir`` (a temporary folder), ``epochs 1``,
no validation (``val_interval`` beyond the run) and enough ``volume_repeats`` for the iterations. It runs
``initialize`` first, as ``monai.bundle run`` does. Images are counted from each batch; the clock starts after
``--warmup`` iterations (cuDNN autotuning, kernel compilation) and the device is synchronised at both ends.

The hand loop takes the last batch the bundle's loader produced, moves it to the device once, and runs
``zero_grad / autocast forward + loss / GradScaler backward + step`` on it with a fresh network and optimiser
built from the same config entries (``network_def``, ``loss``, ``lr``). Last, the bundle's loader runs alone (no
network) for the same number of batches: printed as a diagnosis (a loader slower than the hand loop's step is what
a thread loader cannot hide).

Without ``--dataset_dir`` a small copy of the embedded MNI task (6 subjects) is written to a temporary folder
first (not timed; about 15-40 s).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _plain(x):
    """A MONAI MetaTensor as a plain tensor (the hand loop carries no metadata)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def _batch_tensor(batch, key: str) -> torch.Tensor:
    """``key`` of a batch: a collated dict, or the list of per-image dicts MONAI's engines decollate it into."""
    if isinstance(batch, dict):
        return _plain(batch[key])
    return torch.stack([_plain(item[key]) for item in batch])


def training_parser(args, dataset_dir: str, runs_dir: str, volume_repeats: int):
    from calibmonai.bundle_tools import bundle_dir, bundle_parser, config_files

    overrides = {
        "bundle_root": str(bundle_dir(args.bundle).resolve()),
        "dataset_dir": dataset_dir,
        "runs_dir": runs_dir,
        "device": f"$torch.device('{args.device}')",
        "epochs": 1,
        "val_interval": 10**9,
        "volume_repeats": volume_repeats,
        "tensorboard": False,
    }
    if args.amp != "auto":
        overrides["amp"] = args.amp == "true"
    return bundle_parser(config_files(args.bundle, args.method, backbone=args.backbone or None), **overrides)


def run_bundle(parser, warmup: int, iterations: int, dev: torch.device) -> tuple[float, int, dict]:
    """Seconds and images of ``iterations`` training iterations of the bundle after ``warmup`` ones, and the
    last batch."""
    from monai.engines import SupervisedTrainer
    from monai.engines.utils import IterationEvents  # noqa: F401 - MONAI's engine events are registered on import
    from ignite.engine import Events

    if "initialize" in parser:
        parser.get_parsed_content("initialize")
    trainer: SupervisedTrainer = parser.get_parsed_content("train#trainer")
    clock = {"t0": None, "t1": None, "images": 0, "batch": None}
    stop_at = warmup + iterations

    @trainer.on(Events.ITERATION_COMPLETED)
    def _count(engine) -> None:
        it = engine.state.iteration
        if it == warmup:
            _sync(dev)
            clock["t0"] = time.perf_counter()
        elif it > warmup:
            batch = engine.state.batch
            clock["images"] += int(batch["image"].shape[0]) if isinstance(batch, dict) else len(batch)
        if it == stop_at:
            _sync(dev)
            clock["t1"] = time.perf_counter()
            clock["batch"] = engine.state.batch
            engine.terminate()

    n_batches = len(trainer.data_loader)
    if n_batches < stop_at:
        raise SystemExit(f"the bundle's loader yields {n_batches} batches per epoch, fewer than {stop_at}: raise volume_repeats.")
    trainer.run()
    if clock["t1"] is None:
        raise SystemExit(f"the bundle's trainer stopped after {trainer.state.iteration} iterations, before {stop_at}.")
    return clock["t1"] - clock["t0"], clock["images"], clock["batch"]


def run_loader(parser, warmup: int, iterations: int, dev: torch.device) -> float:
    """Seconds of ``iterations`` batches of the bundle's own training loader alone (no network), after ``warmup``
    ones, waiting for each batch's tensors on the device: the time the data pipeline needs per step, for the
    diagnosis when the bundle falls behind the hand loop."""
    loader = parser.get_parsed_content("train#dataloader")
    t0 = None
    for i, batch in enumerate(loader):
        if i == warmup:
            _sync(dev)
            t0 = time.perf_counter()
        if i == warmup + iterations:
            _sync(dev)
            return time.perf_counter() - t0
    raise SystemExit(f"the bundle's loader yields {i + 1} batches per epoch, fewer than {warmup + iterations + 1}: raise volume_repeats.")


def run_hand_loop(parser, batch: dict, warmup: int, iterations: int, dev: torch.device, amp: bool) -> tuple[float, int]:
    """Seconds and images of ``iterations`` steps of a plain PyTorch loop on one batch already on the device."""
    net = parser.get_parsed_content("network_def", lazy=False).to(dev)
    loss_fn = parser.get_parsed_content("loss", lazy=False)
    opt = torch.optim.Adam(net.parameters(), lr=float(parser.get_parsed_content("lr")))
    image, label = (_batch_tensor(batch, k).to(dev) for k in ("image", "label"))
    scaler = torch.amp.GradScaler(dev.type, enabled=amp and dev.type == "cuda")
    net.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, enabled=amp and dev.type == "cuda"):
            out = net(image)
            loss = loss_fn(out, label)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(warmup):
        step()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(iterations):
        step()
    _sync(dev)
    return time.perf_counter() - t0, iterations * int(image.shape[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iterations", type=int, default=None, help="timed iterations (default 60 on CUDA, 4 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations first (default 10 on CUDA, 1 on CPU)")
    parser.add_argument("--bundle", default="mni_tissue_seg2d")
    parser.add_argument("--method", default="mbls")
    parser.add_argument("--backbone", default="")
    parser.add_argument("--dataset_dir", default="", help="a prepared task (default: a small embedded one in a temporary folder)")
    parser.add_argument("--amp", default="auto", choices=("auto", "true", "false"), help="auto: the bundle's own setting")
    args = parser.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch (torch.cuda.is_available() is False).")
    cuda = dev.type == "cuda"
    iterations = args.iterations or (60 if cuda else 4)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    with tempfile.TemporaryDirectory(prefix="calibmonai-bench-") as tmp:
        dataset_dir = args.dataset_dir
        if not dataset_dir:
            from calibmonai.data import prepare_mni_tissue

            t = time.perf_counter()
            dataset_dir = os.path.join(tmp, "data")
            prepare_mni_tissue(dataset_dir, num_subjects=6, split=(4, 1, 1), progress=False)
            print(f"[prepare] small embedded task (6 subjects) in {time.perf_counter() - t:.1f} s (not timed)")
        from calibmonai.data import load_datalist

        n_train = len(load_datalist(dataset_dir, "training"))
        probe = training_parser(args, dataset_dir, os.path.join(tmp, "runs"), 1)
        volumes_per_batch = max(1, int(probe["batch_size"]) // int(probe["slices_per_volume"]))
        repeats = math.ceil((warmup + iterations + 1) * volumes_per_batch / n_train) + 1
        cfg = training_parser(args, dataset_dir, os.path.join(tmp, "runs"), repeats)
        amp = bool(cfg.get_parsed_content("amp"))
        where = torch.cuda.get_device_name(dev) if cuda else f"CPU, threads {torch.get_num_threads()}"
        print(f"bundle {args.bundle}, method {args.method}, backbone {args.backbone or 'unet'}, {where}, AMP {amp}, "
              f"{warmup} warm-up + {iterations} timed iterations")
        t_bundle, n_bundle, batch = run_bundle(cfg, warmup, iterations, dev)
        t_hand, n_hand = run_hand_loop(cfg, batch, warmup, iterations, dev, amp)
        t_loader = run_loader(cfg, warmup, iterations, dev)
    ips_bundle, ips_hand = n_bundle / t_bundle, n_hand / t_hand
    shape = tuple(_batch_tensor(batch, "image").shape)
    print(f"batch {shape}")
    print(f"bundle training (ConfigParser, train#trainer) {ips_bundle:10.1f} images/s  {t_bundle / iterations * 1e3:8.2f} ms/iteration")
    print(f"hand-written loop, data on the device          {ips_hand:10.1f} images/s  {t_hand / iterations * 1e3:8.2f} ms/iteration")
    print(f"bundle / hand loop                             {ips_bundle / ips_hand:10.2f}x (target >= 0.9)")
    ms_loader, ms_bundle, ms_hand = (t / iterations * 1e3 for t in (t_loader, t_bundle, t_hand))
    print(f"  diagnosis: the bundle's data loader alone {ms_loader:8.2f} ms/batch ({ms_loader / ms_hand:.2f}x the hand loop's step); "
          f"the rest of the bundle's step over the hand loop's {ms_bundle - ms_hand:8.2f} ms")


if __name__ == "__main__":
    sys.exit(main())
