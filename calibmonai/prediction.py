"""Running a trained network: load its checkpoint, predict logits on a whole image, turn them into probabilities.

Shared by evaluation, post-hoc calibration and inference (which otherwise would import each other).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

__all__ = ["load_checkpoint", "predict_logits", "to_probabilities"]


def load_checkpoint(network: torch.nn.Module, checkpoint: str, device: Any) -> torch.nn.Module:
    """Load a MONAI ``CheckpointSaver`` file (a state dict, or ``{"model": state_dict}``) with ``map_location``."""
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"no trained checkpoint at {checkpoint}: run the 'training' workflow of this run first.")
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    network.load_state_dict(state)
    return network.to(device).eval()


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
