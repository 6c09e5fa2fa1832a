"""Misuse of the Python API gives a ValueError naming the argument and the fix (found by an audit; each case
failed before with a torch/Python traceback or a silently wrong value)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from calibmonai.calibration import LocalTemperatureScaling, PlattScaling, StratifiedVoxelSampler, TemperatureScaling, load_calibrator
from calibmonai.losses import get_loss
from calibmonai.metrics import CalibrationMetrics, compute_calibration_histograms


def test_get_loss_names_the_hyper_parameters():
    with pytest.raises(ValueError, match=r"method 'mbls' takes no hyper-parameter 'margn'. Did you mean 'margin'\? Its hyper-parameters: margin, alpha"):
        get_loss("mbls", margn=5)
    with pytest.raises(ValueError, match=r"method 'focal': .*unexpected keyword argument 'gama'"):
        get_loss("focal", gama=2)
    assert get_loss("mbls", margin=5).margin == 5.0  # a taken hyper-parameter still builds the loss


def _probs(seed=0, shape=(2, 3, 6, 5)):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(shape, generator=g), 1), torch.randint(0, shape[1], (shape[0], 1) + shape[2:], generator=g)


def test_metric_arguments_are_checked():
    p, y = _probs()
    metric = CalibrationMetrics(("ece",))
    with pytest.raises(ValueError, match="y must be a tensor of labels .* got NoneType"):
        metric(p)
    with pytest.raises(ValueError, match=r"got ndarray \(numpy: torch.as_tensor\(y\)\)"):
        compute_calibration_histograms(p, y.numpy())
    for bad in (3, -1, 1.0):
        with pytest.raises(ValueError, match=r"background_index must be a class index in \[0, 2\]"):
            compute_calibration_histograms(p, y, background_index=bad)
    assert compute_calibration_histograms(p, y, background_index=np.int64(2)).top_count.sum() > 0  # numpy ints are fine
    for bins in (2.5, 0, True):
        with pytest.raises(ValueError, match="num_bins must be an integer >= 1"):
            CalibrationMetrics(num_bins=bins)


def test_hard_predictions_and_a_second_softmax_warn():
    p, y = _probs()
    hard = torch.nn.functional.one_hot(p.argmax(1), 3).movedim(-1, 1).float()
    with pytest.warns(UserWarning, match="only hard 0/1 probabilities"):
        CalibrationMetrics(("ece",))(hard, y)
    with pytest.warns(UserWarning, match="softmax=True on y_pred that already look like probabilities"):
        CalibrationMetrics(("ece",), softmax=True)(p, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right inputs warn about nothing
        CalibrationMetrics(("ece",))(p, y)
        CalibrationMetrics(("ece",), softmax=True)(torch.log(p) * 3, y)


def test_calibrator_inputs_are_checked(tmp_path):
    ts = TemperatureScaling(3)
    with pytest.raises(ValueError, match=r"TemperatureScaling.fit takes a VoxelSample \(StratifiedVoxelSampler"):
        ts.fit(torch.randn(10, 3))
    with pytest.raises(ValueError, match="takes a VoxelSample"):
        PlattScaling(3).fit(torch.randn(10, 3))
    z = torch.randn(1, 3, 4, 4)
    z[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"the logits hold 1 non-finite value\(s\)"):
        ts(z)
    sampler = StratifiedVoxelSampler(3, 100)
    with pytest.raises(ValueError, match="labels must be class indices; got non-integer values such as 0.5"):
        sampler.add(torch.randn(1, 3, 2, 2), torch.tensor([[[0.0, 0.5], [1.0, 2.0]]]))
    sampler.add(torch.randn(1, 3, 2, 2), torch.tensor([[[0.0, 1.0], [1.0, 2.0]]]))  # integer-valued floats are labels
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="cannot be loaded safely as a calibmonai calibrator"):
        load_calibrator(empty)


def test_lts_items_are_checked():
    lts = LocalTemperatureScaling(3, spatial_dims=2, features=4)
    z, x, y = torch.randn(3, 8, 8), torch.randn(1, 8, 8), torch.randint(0, 3, (8, 8))
    with pytest.raises(ValueError, match=r"LTS item 1: expected logits \(3, \*spatial\).*got \(3, 8, 8\), \(1, 8, 8\), \(1, 8, 8\) \(a channel-first label"):
        lts.fit([(z, x, y), (z, x, y[None])], epochs=1)
    with pytest.raises(ValueError, match=r"LTS item 0: labels must lie in \[0, 2\], got \[0, 7\]"):
        lts.fit([(z, x, y.masked_fill(y == 1, 7)), (z, x, y)], epochs=1)
    bad = z.clone()
    bad[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="LTS item 0: the logits hold non-finite values"):
        lts.fit([(bad, x, y), (z, x, y)], epochs=1)
    with pytest.raises(ValueError, match=r"LTS item 0: expected logits \(3, \*spatial\)"):
        LocalTemperatureScaling(3, spatial_dims=3, features=4).fit([(z, x, y), (z, x, y)], epochs=1)
    assert "best_epoch" in lts.fit([(z, x, y), (z, x, y)], epochs=1)


def test_empty_batches_negative_focal_gamma_and_a_folder_as_calibrator_file(tmp_path):
    for name in ("ce", "mbls", "focal"):
        with pytest.raises(ValueError, match=r"input holds no voxel \(an empty batch or spatial size\), shape \(0, 3, 4, 4\)"):
            get_loss(name)(torch.randn(0, 3, 4, 4), torch.zeros(0, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="focal: gamma must be a number >= 0"):
        get_loss("focal", gamma=-1)
    with pytest.raises(ValueError, match=r"is a folder: give the calibrator's file name, e.g. .*calibrator_ts.pt"):
        TemperatureScaling(3).save(tmp_path)
    assert list(tmp_path.iterdir()) == [] and not os.path.exists(f"{tmp_path}.tmp")  # nothing written, no <folder>.tmp
