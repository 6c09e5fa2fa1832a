"""Behaviours of the post-hoc calibrators pinned with hand-computable values.

Each test fails under a specific wrong variant of the code it covers (found by a mutation audit):

* LTS: the gate mixes ``t = g t_z + (1 - g) t_x`` (not with the branches swapped);
* LTS fit: the state of the epoch with the lowest held-out NLL is kept (not the last epoch's);
* temperature scaling: the grid fallback takes the argmin of the NLL over the grid (not the argmax);
* isotonic: a voxel where every class's map is 0 keeps its uncalibrated softmax (not the all-zero maps).
"""

import math
import random
import re

import pytest
import torch
from torch import nn

import calibmonai.calibration.lts as lts_module
import calibmonai.calibration.temperature as ts_module
from calibmonai.calibration import IsotonicCalibration, LocalTemperatureScaling, TemperatureScaling, VoxelSample


# --------------------------------------------------------------------------- LTS: the gate's mixing of the branches


def _constant_lts(t_z: float, t_x: float, gate_bias: float) -> LocalTemperatureScaling:
    """An LTS model whose every convolution weight is 0: the logit branch outputs ``t_z``, the image branch ``t_x``
    and the gate's pre-sigmoid ``gate_bias`` at every voxel (the hidden layers output relu(0) = 0)."""
    lts = LocalTemperatureScaling(3, spatial_dims=2, image_channels=1, features=4).double()
    with torch.no_grad():
        for m in lts.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
                m.bias.zero_()
        lts.logit_branch[-1].bias.fill_(t_z)
        lts.image_branch[-1].bias.fill_(t_x)
        lts.gate[-1].bias.fill_(gate_bias)
    return lts


def test_lts_gate_weights_logit_branch_by_g_and_image_branch_by_one_minus_g():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64) * 3
    x = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    eps = 1e-3
    # T = relu(g t_z + (1 - g) t_x + 1) + eps with t_z = 1, t_x = 3:
    #   gate bias +20: g = sigmoid(20) = 1 - 2.06e-9 -> T = relu(1 + 1) + 0.001 + 2 (1 - g) = 2.001 (+4e-9)
    #   gate bias -20: g = sigmoid(-20) = 2.06e-9     -> T = relu(3 + 1) + 0.001 - 2 g     = 4.001 (-4e-9)
    # (the swapped mix (1 - g) t_z + g t_x gives 4.001 and 2.001 instead)
    for gate_bias, expected in ((20.0, 2.001), (-20.0, 4.001)):
        lts = _constant_lts(1.0, 3.0, gate_bias)
        assert lts.eps == eps
        t = lts.temperature_map(z, x)
        assert t.shape == (2, 1, 8, 8)
        assert torch.allclose(t, torch.full_like(t, expected), atol=1e-4, rtol=0), (gate_bias, t.flatten()[:3])
        # the calibrated probabilities are softmax(z / T) with that T
        assert torch.allclose(lts(z, x), torch.softmax(z / expected, dim=1), atol=1e-6, rtol=0)
    # negative mixed temperature: relu clips it to 0 and T = eps exactly (t_z = -5, g ~ 1: relu(-5 + 1) = 0)
    t = _constant_lts(-5.0, 3.0, 20.0).temperature_map(z, x)
    assert torch.allclose(t, torch.full_like(t, eps), atol=1e-7, rtol=0)


# --------------------------------------------------------------------------- LTS fit: the best held-out epoch is kept


def _lts_items(n_items: int, hold: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``n_items`` items of the same 8x8 two-class logits (+-5, random signs) and the same image; the training items'
    labels are random coin flips (their NLL falls as T grows), the held-out items' labels are the argmax (their NLL
    log(1 + exp(-10 / T)) rises with T), so training makes the held-out NLL worse from the first epoch on."""
    g = torch.Generator().manual_seed(1)
    sign = torch.randint(0, 2, (8, 8), generator=g) * 2 - 1
    z = torch.stack([5.0 * sign, -5.0 * sign]).double()  # (2, 8, 8): class 0 wins where sign = +1
    x = torch.randn(1, 8, 8, generator=g, dtype=torch.float64)
    argmax = z.argmax(0)
    items = []
    for k in range(n_items):
        y = argmax.clone() if k in hold else torch.randint(0, 2, (8, 8), generator=g)
        items.append((z.clone(), x.clone(), y))
    return items


def test_lts_fit_keeps_the_state_of_the_best_held_out_epoch(monkeypatch):
    n, holdout, seed = 4, 0.25, 0
    # the held-out items, as fit's docstring specifies: the first max(1, round(holdout * n)) of range(n) shuffled by
    # random.Random(seed)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    hold = order[: max(1, round(holdout * n))]
    items = _lts_items(n, hold)
    messages: list[str] = []
    monkeypatch.setattr(lts_module, "progress", lambda message, name="calibmonai": messages.append(message))

    torch.manual_seed(0)
    lts = LocalTemperatureScaling(2, spatial_dims=2, image_channels=1, features=4).double()
    eps = lts.eps
    # untrained: last layers zero-initialised, so T = relu(0 + 1) + eps = 1.001 at every voxel; every held-out voxel
    # has its label's logit 5 and the other -5: NLL = log(1 + exp(-10 / 1.001))
    nll0 = math.log1p(math.exp(-10.0 / (1.0 + eps)))
    report = lts.fit(items, epochs=3, lr=0.05, holdout=holdout, batch_size=2, seed=seed, progress_every=1)

    held_out_by_epoch = [float(m) for msg in messages for m in re.findall(r"held-out NLL ([0-9.]+) \(best", msg)]
    assert len(held_out_by_epoch) == 3, messages
    assert all(v > nll0 + 1e-4 for v in held_out_by_epoch), (nll0, held_out_by_epoch)  # training did make it worse

    assert report["holdout_items"] == 1 and report["train_items"] == 3
    assert report["best_epoch"] == 0
    assert report["holdout_nll_before"] == pytest.approx(nll0, rel=1e-9)
    assert report["holdout_nll_after"] == report["holdout_nll_before"]
    # the model is back in its untrained state: T = 1.001 everywhere, the held-out NLL the one before training
    z, x, _ = items[hold[0]]
    t = lts.temperature_map(z[None], x[None])
    assert torch.allclose(t, torch.full_like(t, 1.0 + eps), atol=1e-12, rtol=0)
    assert lts.nll([items[i] for i in hold]) == pytest.approx(nll0, rel=1e-9)


# --------------------------------------------------------------------------- TS: the grid-search fallback


def test_temperature_grid_fallback_takes_the_argmin(monkeypatch):
    t0 = 2.0
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20_000, 3, generator=g, dtype=torch.float64) * 4.0
    y = torch.multinomial(torch.softmax(z / t0, dim=1), 1, generator=g)[:, 0]  # the right temperature is 2
    sample = VoxelSample(z, y, torch.ones(len(y), dtype=torch.float64))

    reference = TemperatureScaling(3).fit(sample)  # LBFGS: the exact minimiser of the NLL over log T
    assert reference["method"] == "lbfgs"

    def failing(*args, **kwargs):
        raise RuntimeError("LBFGS diverged (test)")

    monkeypatch.setattr(ts_module, "fit_lbfgs", failing)
    ts = TemperatureScaling(3)
    info = ts.fit(sample)
    assert info["method"] == "grid"
    # the grid: 400 points evenly spaced in log T over [log 0.05, log 20], step log(400) / 399 = 0.01502
    lo, hi = math.log(0.05), math.log(20.0)
    step = (hi - lo) / 399
    log_t = math.log(info["temperature"])
    k = (log_t - lo) / step
    assert abs(k - round(k)) < 1e-6  # a grid point
    # the NLL is unimodal in log T: its grid argmin lies within one step of the exact minimiser
    assert abs(log_t - math.log(reference["temperature"])) <= step + 1e-9
    assert abs(info["temperature"] / t0 - 1) < 0.05  # the sampled labels' temperature, up to sampling noise
    assert ts.temperature == pytest.approx(info["temperature"], rel=1e-6)
    assert info["nll_after"] < info["nll_before"]


# --------------------------------------------------------------------------- isotonic: every map 0 at a voxel


def test_isotonic_all_zero_maps_return_the_uncalibrated_softmax():
    cal = IsotonicCalibration(3)
    # maps as the class stores them (knots in p, values): every class mapped to 0 everywhere
    cal.xp = [torch.tensor([0.0, 1.0], dtype=torch.float64) for _ in range(3)]
    cal.fp = [torch.tensor([0.0, 0.0], dtype=torch.float64) for _ in range(3)]
    cal.fitted = True
    z = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [-3.0, 1.0, 4.0]], dtype=torch.float64)
    out = cal.calibrate_flat(z)
    assert torch.allclose(out, torch.softmax(z, dim=-1), atol=1e-12, rtol=0)
    assert torch.allclose(out.sum(-1), torch.ones(3, dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.allclose(out[1], torch.full((3,), 1 / 3, dtype=torch.float64), atol=1e-12, rtol=0)  # hand value

    # only voxels where every map is 0 fall back: class 0 mapped to p_0, the others to 0 -> (1, 0, 0) wherever p_0 > 0
    cal.fp = [torch.tensor([0.0, 1.0], dtype=torch.float64)] + [torch.tensor([0.0, 0.0], dtype=torch.float64)] * 2
    out = cal(z.T.reshape(1, 3, 3, 1)).reshape(3, 3).T
    assert torch.allclose(out, torch.tensor([[1.0, 0.0, 0.0]] * 3, dtype=torch.float64), atol=1e-12, rtol=0)
