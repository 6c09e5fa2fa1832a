"""Optional Triton support for the CUDA kernels of the losses and metrics.

Triton (https://triton-lang.org, shipped with the CUDA builds of PyTorch) compiles the GPU kernels of
:mod:`calibmonai.losses._triton_kernel` and :mod:`calibmonai.metrics._triton_histogram`. Without it, or
with ``CALIBMONAI_TRITON=0``, CUDA tensors run the torch implementations; CPU tensors never use Triton
(they have the numba kernels).

The kernels also run on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1`` set before ``triton``
is first imported), which is how the tests check them on machines without a GPU; :func:`interpreting` says
whether that mode is on.

A kernel that fails to compile or launch on the user's GPU or Triton version (an error of the kernel, not of the
input) does not stop training: :func:`run_or_fall_back` warns once, switches Triton off for the process and lets the
caller run its torch implementation (same values, slower).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from typing import Any, Callable

import torch

__all__ = ["HAVE_TRITON", "triton_enabled", "set_triton_enabled", "interpreting", "runs_triton", "device_of", "run_or_fall_back"]

HAVE_TRITON = importlib.util.find_spec("triton") is not None
_STATE = {"enabled": os.environ.get("CALIBMONAI_TRITON", "1") != "0"}


def set_triton_enabled(enabled: bool) -> None:
    """Switch the Triton kernels on or off for this process (off: CUDA tensors run the torch code)."""
    _STATE["enabled"] = bool(enabled)


def triton_enabled() -> bool:
    """Whether the Triton kernels may run: the package is importable and the switch is on."""
    return HAVE_TRITON and _STATE["enabled"]


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    if not HAVE_TRITON:
        return False
    try:
        from triton import knobs

        return bool(knobs.runtime.interpret)
    except ImportError:  # pragma: no cover - triton < 3.3
        return os.environ.get("TRITON_INTERPRET", "0") == "1"


def runs_triton(*tensors: torch.Tensor, allow_cpu: bool = False) -> bool:
    """Whether a Triton kernel can run on ``tensors``: the Triton path enabled and all of them on one CUDA
    device, or (``allow_cpu``, for tests) on the CPU under the interpreter."""
    if not triton_enabled() or not tensors:
        return False
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        return False
    dev = devices.pop()
    return dev.type == "cuda" or (allow_cpu and dev.type == "cpu" and interpreting())


def device_of(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Context in which a Triton launch runs on ``tensor``'s GPU (Triton launches on the *current* CUDA device,
    which need not be the tensor's, e.g. ``cuda:1`` tensors while ``cuda:0`` is current)."""
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def run_or_fall_back(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` (a Triton path that returns ``None`` where it does not apply); when it fails with an
    error of the kernel itself (Triton's compiler, a launch on this GPU), warn, switch Triton off for this process
    (:func:`set_triton_enabled`) and return ``None``, so the caller runs its torch implementation.

    Input errors (``ValueError``, with the torch implementation's messages) and running out of GPU memory (the torch
    path would need memory too) are raised as they are. Under Triton's interpreter (the tests) every error is
    raised: a kernel bug must fail its test, not hide behind the torch path.
    """
    if interpreting():
        return fn(*args, **kwargs)
    try:
        return fn(*args, **kwargs)
    except (ValueError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as e:
        set_triton_enabled(False)
        warnings.warn(
            f"calibmonai: the Triton kernel of {what} failed ({type(e).__name__}: {str(e)[:300]}); Triton is now off in "
            f"this process and the torch implementation runs instead (same values, slower). Set CALIBMONAI_TRITON=0 "
            f"to start without it, and please report the error with your GPU, torch and triton versions.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
