"""A Triton kernel that fails on the user's GPU (compiler or launch error) does not stop the work: one warning,
Triton switched off for the process, the torch implementation's values (calibmonai._triton.run_or_fall_back).

No GPU here: the Triton paths are entered with CPU tensors and made to fail; the values are compared with the torch
implementation computed independently.
"""

import warnings

import pytest
import torch

from calibmonai import _triton
from calibmonai.losses import fused_disabled, get_loss
from calibmonai.metrics.calibration import CalibrationHistograms
from calibmonai.metrics._torch_backend import device_histograms

pytest.importorskip("triton")


class _CompilerError(RuntimeError):
    """stands for triton.compiler.errors.CompilationError / a launch failure"""


def _failing(*args, **kwargs):
    raise _CompilerError("PassManager::run failed")


@pytest.fixture
def on_a_gpu(monkeypatch):
    """Triton on, not interpreting (as on a GPU); the switch restored afterwards."""
    monkeypatch.setitem(_triton._STATE, "enabled", True)
    monkeypatch.setattr(_triton, "interpreting", lambda: False)
    return monkeypatch


def _data(b=2, c=3, shape=(6, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((b, c) + shape, generator=g) * 4, torch.randint(0, c, (b, 1) + shape, generator=g)


def test_a_failing_loss_kernel_falls_back_to_the_torch_loss(on_a_gpu):
    from calibmonai.losses import _triton_kernel

    class FailingLaunch:  # the kernel's launch fails, as a compiler error on an unsupported GPU would
        def __getitem__(self, grid):
            return _failing

    on_a_gpu.setattr(_triton_kernel, "_loss_kernel", FailingLaunch())
    on_a_gpu.setattr(_triton_kernel, "runs_triton", lambda *t, **k: _triton.triton_enabled())  # as for CUDA tensors
    x, y = _data()
    loss = get_loss("mbls", num_classes=3, spatial_dims=2)
    x0 = x.clone().requires_grad_(True)
    with fused_disabled():
        want = loss(x0, y)
    want.backward()
    x1 = x.clone().requires_grad_(True)
    with _triton_kernel.interpret_on_cpu(), pytest.warns(RuntimeWarning, match="Triton kernel of the fused losses failed.*PassManager"):
        got = loss(x1, y)
    got.backward()
    assert not _triton.triton_enabled()  # off for the rest of the process: one warning, not one per step
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    assert torch.allclose(x1.grad, x0.grad, atol=1e-6)
    with _triton_kernel.interpret_on_cpu(), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert float(loss(x, y)) == pytest.approx(float(want), rel=1e-6)  # no second warning


def _histograms(z, y, impl):
    b, c = z.shape[:2]
    hist = CalibrationHistograms.zeros(b, c, 10, z.device)
    return device_histograms(z.reshape(b, c, -1), y.reshape(b, -1), None, hist, 10, "none", True, True, 0, 1e-3, True, impl=impl)


def test_a_failing_metric_kernel_falls_back_to_the_torch_pass(on_a_gpu):
    from calibmonai.metrics import _triton_histogram

    z, y = _data(seed=1)
    want = _histograms(z, y, "torch")
    on_a_gpu.setattr(_triton, "runs_triton", lambda *t, **k: True)  # as for CUDA tensors
    on_a_gpu.setattr(_triton_histogram, "triton_histograms", _failing)
    with pytest.warns(RuntimeWarning, match="Triton kernel of the calibration metrics failed"):
        got = _histograms(z, y, "auto")
    assert not _triton.triton_enabled()
    for g, w in zip(got.tensors(), want.tensors()):
        assert torch.equal(g, w)


def test_asked_for_explicitly_the_metric_kernel_error_is_raised(on_a_gpu):
    from calibmonai.metrics import _triton_histogram

    z, y = _data(seed=2)
    on_a_gpu.setattr(_triton, "runs_triton", lambda *t, **k: True)
    on_a_gpu.setattr(_triton_histogram, "triton_histograms", _failing)
    with pytest.raises(_CompilerError):
        _histograms(z, y, "triton")
    assert _triton.triton_enabled()


@pytest.mark.parametrize("error", [ValueError("labels out of range"), torch.cuda.OutOfMemoryError("CUDA out of memory")])
def test_input_errors_and_out_of_memory_are_raised_not_hidden(on_a_gpu, error):
    def fail(*args):
        raise error

    with pytest.raises(type(error), match=str(error)):
        _triton.run_or_fall_back("the fused losses", fail)
    assert _triton.triton_enabled()


def test_under_the_interpreter_a_kernel_error_fails_loudly(monkeypatch):
    # the tests run the kernels under Triton's interpreter: a kernel bug must fail them, not hide behind torch
    monkeypatch.setitem(_triton._STATE, "enabled", True)
    monkeypatch.setattr(_triton, "interpreting", lambda: True)
    with pytest.raises(_CompilerError):
        _triton.run_or_fall_back("the fused losses", _failing)
    assert _triton.triton_enabled()


def test_a_path_that_does_not_apply_returns_none_without_a_warning(on_a_gpu):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _triton.run_or_fall_back("the fused losses", lambda: None) is None
    assert _triton.triton_enabled()
