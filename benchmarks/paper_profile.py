"""Time of the embedded bundle's profile ``paper`` (``calibmonai demo --profile paper --full true``; issue 11 asks for its GPU
and CPU time): data preparation, and for each method its training (set-up with the dataset cache, first epoch,
seconds per training epoch, first and later validation epochs) and its evaluation on the test subjects.

Usage: python benchmarks/paper_profile.py [--device cuda|cpu] [--epochs 40] [--methods ce,mbls:margin=5,...]
           [--data DIR] [--full] [--set KEY=VALUE ...] [--json FILE]

Without ``--full`` each method trains ``--epochs`` epochs (a multiple of the profile's ``val_interval``, so that the
share of validation epochs is the profile's and the last epoch's weights that evaluation reads are written), and
the profile's time is *projected* to its full schedule (``projected_seconds``): set-up, the first epoch and the first
validation epoch as measured (they carry the one-off costs: cuDNN autotuning, kernel compilation), the other training
and validation epochs at the mean of their measured kind, and the evaluation, summed over the methods, plus the data
preparation; ``--epochs`` should cover at least two validations (the default 40 does). ``--full`` trains the full schedule (the run of
``calibmonai demo --profile paper --full true``, with the same numbers measured instead of projected). The printout says which figures are projected.

The runs use the bundle as ``calibmonai demo --profile paper --full true`` does (its configs composed with
``bundle_tools.config_files``, the method's loss arguments from ``calibmonai.demo``), with ``device`` set from
``--device``, its AMP default (on with CUDA) and outputs in a temporary folder. ``--set`` overrides any other
config key (YAML value; used by the tests for a tiny network).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

import torch
import yaml


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b::c=[4, 8]"]`` -> ``{"a": 1, "b::c": [4, 8]}`` (values read as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SystemExit(f"--set takes KEY=VALUE, got {item!r}.")
        out[key] = yaml.safe_load(value)
    return out


def projected_seconds(setup: float, epoch_times: list[float], evaluation: float, full_epochs: int, val_interval: int = 0) -> float:
    """Seconds of the full schedule of ``full_epochs`` epochs, projected from the measured ``epoch_times`` (epochs
    1, 2, ... of a shorter run with the same ``val_interval``; 0: no validation epochs).

    Epoch 1 and the first validation epoch carry one-off costs (cuDNN autotuning, the numba or Triton compilation of
    the loss and metric kernels at their first call: tens of seconds on a fresh machine, against well under a second
    per epoch on a GPU): each is counted once, as measured. Every other epoch of the full schedule is projected from
    the later epochs of its kind: training-only epochs from the mean of the measured training-only epochs after the
    first, validation epochs from the mean of the measured validation epochs after the first (with one validation
    measured, that one stands for all: an over-estimate where it compiled kernels; measure at least two). A kind
    with no later epoch measured takes its first. Total: set-up + those epochs + evaluation.
    """
    if not epoch_times:
        raise ValueError("no epoch was timed.")
    vi = max(0, int(val_interval))
    train, val = epoch_kinds(epoch_times, vi)
    n_val = full_epochs // vi if vi else 0
    n_train = full_epochs - n_val
    if n_val and not val:
        raise ValueError(f"no validation epoch was timed (validation every {vi} epochs, {len(epoch_times)} timed).")
    total = setup + evaluation
    if n_train:
        if not train:
            raise ValueError(f"no training-only epoch was timed (validation every {vi} epochs).")
        total += train[0] + later_mean(train) * (n_train - 1)
    if n_val:
        total += val[0] + later_mean(val) * (n_val - 1)
    return total


def epoch_kinds(epoch_times: list[float], val_interval: int) -> tuple[list[float], list[float]]:
    """The times of the training-only epochs and of the validation epochs, each in order (epochs counted from 1, as
    ignite does; the bundle's ``ValidationHandler`` validates when ``epoch % val_interval == 0``; 0: none)."""
    train: list[float] = []
    val: list[float] = []
    for epoch, t in enumerate(epoch_times, 1):
        (val if val_interval > 0 and epoch % val_interval == 0 else train).append(t)
    return train, val


def later_mean(times: list[float]) -> float:
    """Mean of the epochs after the first (the first alone where it is the only one); NaN for none."""
    later = times[1:] or times[:1]
    return sum(later) / len(later) if later else float("nan")


def time_method(spec: str, bundle: str, data: str, runs: str, epochs: int, dev: torch.device, sets: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one method of the profile; seconds of set-up, of each epoch, and of the evaluation."""
    from ignite.engine import Events

    from calibmonai.bundle_tools import bundle_parser, config_files
    from calibmonai.demo import _method_spec

    method, loss_overrides = _method_spec(spec)
    overrides = {"dataset_dir": data, "runs_dir": runs, "epochs": epochs, "device": f"$torch.device('{dev}')", **sets, **loss_overrides}
    files = config_files(bundle, method, "profiles/paper.yaml")
    parser = bundle_parser(files, **overrides)
    parser.get_parsed_content("initialize")
    t0 = time.perf_counter()
    trainer = parser.get_parsed_content("train#trainer")  # builds the cached dataset, the network, the evaluator
    _sync(dev)
    setup = time.perf_counter() - t0
    stamps: list[float] = []

    @trainer.on(Events.EPOCH_COMPLETED)  # attached after the bundle's handlers: the epoch's validation included
    def _stamp(_engine) -> None:
        _sync(dev)
        stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    parser.get_parsed_content("training")
    _sync(dev)
    training = time.perf_counter() - t0
    epoch_times = [b - a for a, b in zip([t0] + stamps[:-1], stamps)]
    t0 = time.perf_counter()
    bundle_parser(config_files(bundle, method, "profiles/paper.yaml", "evaluate.yaml"), **overrides).get_parsed_content("evaluate")
    _sync(dev)
    evaluation = time.perf_counter() - t0
    return {"method": spec, "setup_s": setup, "training_s": training, "epoch_s": epoch_times, "evaluation_s": evaluation,
            "amp": bool(parser.get_parsed_content("amp"))}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from calibmonai.bundle_tools import bundle_parser, config_files
    from calibmonai.demo import PROFILE_METHODS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--epochs", type=int, default=40, help="epochs trained per method (a multiple of val_interval; default 40)")
    p.add_argument("--full", action="store_true", help="train the profile's full schedule (nothing projected)")
    p.add_argument("--methods", default=",".join(PROFILE_METHODS["paper"]), help="comma-separated, as calibmonai demo takes them")
    p.add_argument("--bundle", default="mni_tissue_seg2d")
    p.add_argument("--data", default="", help="the profile's prepared task (default: prepared, and timed, in a temporary folder)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="any other config override")
    p.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch (torch.cuda.is_available() is False).")
    sets = parse_sets(args.sets)
    profile = bundle_parser(config_files(args.bundle, "ce", "profiles/paper.yaml"), **sets)
    full_epochs = int(profile.get_parsed_content("epochs"))
    val_interval = int(profile.get_parsed_content("val_interval"))
    epochs = full_epochs if args.full else args.epochs
    if epochs < 1 or epochs % val_interval:
        raise SystemExit(f"--epochs {epochs} must be a positive multiple of val_interval ({val_interval}): evaluation reads the "
                         "weights written at the last validation, and the projection assumes the profile's share of validation epochs.")  # fmt: skip
    if not args.full and epochs < 2 * val_interval:
        print(f"[note] --epochs {epochs} covers one validation: its one-off costs (kernel compilation) are projected onto every "
              f"validation; --epochs {2 * val_interval} or more separates them.", flush=True)  # fmt: skip
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({os.cpu_count()} cores), torch threads {torch.get_num_threads()}"
    print(f"profile paper of {args.bundle}: {len(methods)} method(s), {epochs} of {full_epochs} epochs each, validation every "
          f"{val_interval}; torch {torch.__version__}, {where}", flush=True)  # fmt: skip
    t_all = time.perf_counter()
    word = "measured" if args.full else "projected"
    rows: list[dict[str, Any]] = []
    prepare_s = 0.0

    def figures(complete: bool) -> dict[str, Any]:
        """The figures so far; written to ``--json`` after each method, so a run stopped by a time limit keeps them."""
        total = prepare_s + sum(r["projected_s"] for r in rows)
        out = {"device": where, "torch": torch.__version__, "amp": rows[0]["amp"] if rows else False, "epochs_trained": epochs,
               "full_epochs": full_epochs, "val_interval": val_interval, "projected": not args.full, "prepare_s": prepare_s,
               "methods": rows, "total_s": total, "wall_s": time.perf_counter() - t_all, "complete": complete}  # fmt: skip
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
        return out

    with tempfile.TemporaryDirectory(prefix="calibmonai-paper-") as tmp:
        data = args.data
        if not data:
            from calibmonai.data import prepare_mni_tissue

            data = os.path.join(tmp, "data")
            t0 = time.perf_counter()
            prepare_mni_tissue(data, progress=False, **dict(profile.get_parsed_content("prepare_kwargs")))
            prepare_s = time.perf_counter() - t0
            print(f"[prepare] the profile's task in {prepare_s:.1f} s", flush=True)
        for spec in methods:
            r = time_method(spec, args.bundle, data, os.path.join(tmp, "runs"), epochs, dev, sets)
            r["projected_s"] = projected_seconds(r["setup_s"], r["epoch_s"], r["evaluation_s"], full_epochs, val_interval)
            rows.append(r)
            print(f"[{spec}] set-up {r['setup_s']:.1f} s, {epochs} epochs {r['training_s']:.1f} s, evaluation {r['evaluation_s']:.1f} s; "
                  f"{full_epochs} epochs {word}: {r['projected_s'] / 60:.1f} min", flush=True)  # fmt: skip
            figures(complete=False)
    print(f"\n{'method':<18}{'set-up s':>9}{'epoch 1':>9}{'epoch s':>9}{'1st val':>9}{'val s':>8}{'eval s':>8}"
          f"{f'{full_epochs} epochs, {word}':>24}")  # fmt: skip
    for r in rows:
        train, val = epoch_kinds(r["epoch_s"], val_interval)
        first = r["epoch_s"][0]
        print(f"{r['method']:<18}{r['setup_s']:>9.1f}{first:>9.2f}{later_mean(train):>9.3f}{(val or [float('nan')])[0]:>9.2f}"
              f"{later_mean(val):>8.3f}{r['evaluation_s']:>8.1f}{r['projected_s'] / 60:>20.1f} min")  # fmt: skip
    print("(epoch s, val s: mean of the training-only and of the validation epochs after the first of each kind, whose "
          "one-off costs -- cuDNN autotuning, kernel compilation -- are counted once)")
    out = figures(complete=True)
    print(f"profile paper, {len(methods)} method(s) x {full_epochs} epochs, data preparation included: {out['total_s'] / 60:.1f} min {word} "
          f"on {where}, AMP {out['amp']} (this run took {out['wall_s'] / 60:.1f} min)")  # fmt: skip
    return out

if __name__ == "__main__":
    main()
    sys.exit(0)
