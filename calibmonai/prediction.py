"""Running a trained network: load its checkpoint, predict logits on a whole image, turn them into probabilities.

Shared by evaluation, post-hoc calibration and inference (which otherwise would import each other).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

import torch

__all__ = ["load_checkpoint", "check_checkpoint", "stopped_training_warning", "predict_logits", "to_probabilities"]


def _whole_numbers_bare(run: str) -> str:
    """A run name with every whole float written as an integer (``margin5.0`` -> ``margin5``): the spelling of
    runs named before :func:`calibmonai.bundle_tools.run_name` wrote a whole number given for a float as a float."""
    return re.sub(r"(?<=\d)\.0(?=_|$)", "", run)


def _trained_runs_beside(checkpoint: str) -> str:
    """A sentence naming the trained runs beside the run of a missing ``<runs>/<dataset>/<run>/models/<file>``, or
    ``""`` when there is none; a run trained under the former spelling of the wanted one (``margin5`` for
    ``margin5.0``) is named first, with the rename that makes it found."""
    models = os.path.dirname(os.path.abspath(checkpoint))
    run_dir = os.path.dirname(models)
    runs = os.path.dirname(run_dir)
    name = os.path.basename(checkpoint)
    if os.path.basename(models) != "models" or not os.path.isdir(runs):
        return ""
    wanted = os.path.basename(run_dir)
    found = sorted(d for d in os.listdir(runs) if os.path.isfile(os.path.join(runs, d, "models", name)) and d != wanted)
    if not found:
        return ""
    former = [d for d in found if len(d) < len(wanted) and _whole_numbers_bare(d) == _whole_numbers_bare(wanted)]
    if former:
        return (
            f" {os.path.join(runs, former[0])} holds this run under its former name (whole numbers given for a float "
            f"hyper-parameter are now written as floats, e.g. margin5.0): rename that folder to {wanted} to use it."
        )
    shown = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
    return (
        f" Trained runs in {runs}: {shown} (a run's folder is named after its method and hyper-parameters: give the "
        f"same --method, --loss_kwargs and --backbone as its training)."
    )


def _read_state(checkpoint: str, device: Any) -> Any:
    """The network's state dict of a MONAI ``CheckpointSaver`` file (a state dict, or ``{"model": state_dict}``)."""
    if not os.path.isfile(checkpoint):
        where = "" if os.path.isabs(checkpoint) else (
            f" (a path relative to {os.getcwd()}: from another folder, pass --bundle_root <the bundle's folder>)"
        )
        raise FileNotFoundError(f"no trained checkpoint at {checkpoint}{where}: run the 'training' workflow of this run first.{_trained_runs_beside(checkpoint)}")
    try:
        # weights_only: a checkpoint is data (a crafted pickle in a downloaded bundle would otherwise run code)
        state = torch.load(checkpoint, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError, OSError for these
        lines = str(e).strip().splitlines()
        reason = f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__
        raise ValueError(
            f"the checkpoint {checkpoint} cannot be read: it is empty, truncated or corrupt, or holds more than "
            f"tensors and plain values ({reason}). Train the run again or copy the file again."
        ) from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return state


def stopped_training_warning(checkpoint: str) -> str:
    """A sentence when ``checkpoint``'s training has not completed (``resume.pt`` beside it: stopped before its last
    epoch, or still running), else ``""``; the advice to resume only where it can be followed (not for the weights
    an earlier training left in ``models/previous/``)."""
    from calibmonai.run_files import PREVIOUS_DIR, RESUME_FILE

    folder = os.path.dirname(os.path.abspath(checkpoint))
    if not os.path.isfile(os.path.join(folder, RESUME_FILE)):
        return ""
    if os.path.basename(os.path.dirname(folder)) == PREVIOUS_DIR:
        return f"the training that made {checkpoint} had stopped before its last epoch ({RESUME_FILE} beside it)"
    return (
        f"the training of this run has not completed ({RESUME_FILE} beside {os.path.basename(checkpoint)}: it stopped "
        "before its last epoch, or is still running): these are the weights it had reached; run its training again "
        "with --resume true to finish it"
    )


def load_checkpoint(network: torch.nn.Module, checkpoint: str, device: Any) -> torch.nn.Module:
    """Load a MONAI ``CheckpointSaver`` file (a state dict, or ``{"model": state_dict}``) with ``map_location``.

    Raises:
        FileNotFoundError: no file at ``checkpoint``.
        ValueError: the checkpoint was saved from another architecture (naming the first differing tensors).
    """
    from calibmonai.progress import progress

    state = _read_state(checkpoint, device)
    _check_architecture(network, state, checkpoint)
    network.load_state_dict(state)
    progress(f"[weights] {checkpoint}", "calibmonai.prediction")  # which of a run's checkpoints (model.pt, model_final.pt) is used
    warning = stopped_training_warning(checkpoint)
    if warning:
        progress(f"[weights] WARNING: {warning}", "calibmonai.prediction")
    return network.to(device).eval()


def check_checkpoint(network: torch.nn.Module, checkpoint: str) -> None:
    """Raise ``ValueError`` when ``checkpoint``'s weights do not fit ``network`` (see :func:`load_checkpoint`)."""
    _check_architecture(network, _read_state(checkpoint, "cpu"), checkpoint)


def _check_architecture(network: torch.nn.Module, state: Any, checkpoint: str) -> None:
    """Raise ``ValueError`` naming the checkpoint and the first differing tensors when ``state`` was saved from
    another architecture than ``network`` (a training run with other ``network_def``/``backbone`` settings)."""
    if not isinstance(state, dict):
        raise ValueError(f"{checkpoint} holds no state dict (a {type(state).__name__})")
    own = network.state_dict()
    differ = [f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} here" for k, v in state.items()
              if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]  # fmt: skip
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if not (differ or missing or unexpected):
        return
    lines = differ[:3] + [f"missing from the checkpoint: {', '.join(missing[:3])}"] * bool(missing)
    lines += [f"not in this network: {', '.join(unexpected[:3])}"] * bool(unexpected)
    raise ValueError(
        f"{checkpoint} was trained with another network than this config's {type(network).__name__} "
        f"({len(differ)} tensors of other shapes, {len(missing)} missing, {len(unexpected)} unexpected; "
        + "; ".join(lines)
        + "). Give this workflow the network settings the run was trained with (the same --backbone, "
        "--network_def#channels, --in_channels ... overrides)."
    )


def predict_logits(image: Any, network: torch.nn.Module, inferer: Callable, device: Any) -> torch.Tensor:
    """Logits ``(1, C, *spatial)`` on the CPU for one channel-first ``image``, without gradients."""
    with torch.no_grad():
        out = inferer(torch.as_tensor(image).unsqueeze(0).float().to(device), network)
    return torch.as_tensor(out).float().cpu()


def to_probabilities(logits: torch.Tensor, image: Any, calibrator: Callable | None = None) -> torch.Tensor:
    """Softmax of ``logits (1, C, *spatial)``, or the calibrator's probabilities (it may use the image)."""
    with torch.no_grad():
        if calibrator is None:
            return torch.softmax(logits, 1)
        return calibrator(logits, torch.as_tensor(image).unsqueeze(0).float().cpu()).cpu()
