"""Input checks of the calibrators and LTS fitting on validation items of different sizes, against numpy references."""

from __future__ import annotations

import copy
import logging
import math
import random
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from calibmonai.calibration import (
    IsotonicCalibration,
    LocalTemperatureScaling,
    PlattScaling,
    StratifiedVoxelSampler,
    TemperatureScaling,
    VoxelSample,
)


def _np_nll(logits: np.ndarray, temperature: np.ndarray | float, labels: np.ndarray) -> np.ndarray:
    """Per-voxel ``-log softmax(z / T)_y`` of ``logits (C, *spatial)``, ``temperature`` broadcastable to ``(*spatial)``."""
    z = logits.astype(np.float64) / np.asarray(temperature, dtype=np.float64)
    m = z.max(axis=0)
    log_norm = m + np.log(np.exp(z - m).sum(axis=0))
    picked = np.take_along_axis(z, labels[None].astype(np.int64), axis=0)[0]
    return log_norm - picked


def _items(shapes, c=3, seed=0, scales=None):
    """LTS items ``(logits (c, *shape), image (1, *shape), label (*shape))``, logits over-confident by ``scale``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k, shape in enumerate(shapes):
        scale = 1.0 if scales is None else scales[k]
        y = torch.randint(0, c, shape, generator=g)
        z = F.one_hot(y, c).movedim(-1, 0).float() * 2.0 + torch.randn((c, *shape), generator=g) * 1.5
        out.append((z * scale, torch.randn((1, *shape), generator=g), y))
    return out


def _holdout_split(n: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """The split documented in ``LocalTemperatureScaling.fit``."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_hold = max(1, int(round(holdout * n)))
    return order[:n_hold], order[n_hold:]


def _np_voxel_mean_nll(lts: LocalTemperatureScaling, items) -> float:
    """Voxel-weighted mean NLL of ``lts`` over ``items``, each item run alone, the mean taken in numpy."""
    total, count = 0.0, 0
    with torch.no_grad():
        for z, x, y in items:
            t = lts.temperature_map(z[None].float(), x[None].float())[0, 0].double().numpy()
            v = np.minimum(_np_nll(z.numpy(), t, y.numpy()), -np.log(1e-12))  # LTS floors p at 1e-12
            total += float(v.sum())
            count += v.size
    return total / count


def _reference_equal_size_fit(lts: LocalTemperatureScaling, items, epochs, lr, holdout, batch_size, seed):
    """The LTS fit as it was before items of different sizes were allowed (plain stacking of consecutive items)."""
    rng = random.Random(seed)
    order = list(range(len(items)))
    rng.shuffle(order)
    n_hold = max(1, int(round(holdout * len(items))))
    hold, train = order[:n_hold], order[n_hold:]

    def stack(idx):
        return (torch.stack([items[i][0] for i in idx]).float(), torch.stack([items[i][1] for i in idx]).float(), torch.stack([items[i][2] for i in idx]).long())

    def nll(idx):
        with torch.no_grad():
            total, count = 0.0, 0
            for s in range(0, len(idx), batch_size):
                z, x, y = stack(idx[s : s + batch_size])
                total += float(F.nll_loss(torch.log(lts._forward_native(z, x).clamp_min(1e-12)), y, reduction="sum"))
                count += y.numel()
        return total / count

    torch.manual_seed(seed)
    opt = torch.optim.Adam(lts.parameters(), lr=lr)
    start = nll(hold)
    best, best_state, best_epoch = start, copy.deepcopy(lts.state_dict()), 0
    for epoch in range(1, epochs + 1):
        rng.shuffle(train)
        for s in range(0, len(train), batch_size):
            z, x, y = stack(train[s : s + batch_size])
            opt.zero_grad()
            F.nll_loss(torch.log(lts._forward_native(z, x).clamp_min(1e-12)), y).backward()
            opt.step()
        value = nll(hold)
        if value < best and math.isfinite(value):
            best, best_state, best_epoch = value, copy.deepcopy(lts.state_dict()), epoch
    lts.load_state_dict(best_state)
    return {"holdout_nll_before": start, "holdout_nll_after": best, "best_epoch": best_epoch}


# ----------------------------------------------------------------------------------------------------------- LTS


def test_lts_fit_on_items_of_one_size_is_unchanged():
    items = _items([(10, 12)] * 7, seed=1)
    torch.manual_seed(0)
    fitted = LocalTemperatureScaling(3, features=4)
    reference = copy.deepcopy(fitted)
    info = fitted.fit(items, epochs=3, lr=1e-2, batch_size=2, seed=5)
    want = _reference_equal_size_fit(reference, items, epochs=3, lr=1e-2, holdout=0.25, batch_size=2, seed=5)
    for key, value in want.items():
        assert info[key] == value, key
    assert info["best_epoch"] > 0  # the fit moved, so equal states below are a real check
    for key, value in reference.state_dict().items():
        assert torch.equal(fitted.state_dict()[key], value), key


def test_lts_fits_items_of_different_sizes_on_the_voxel_weighted_nll():
    # two grids, and the small items far more over-confident: a mean of per-item (or per-batch) NLLs would differ
    shapes = [(14, 16), (6, 7)] * 4
    items = _items(shapes, seed=2, scales=[1.0, 4.0] * 4)
    hold, train = _holdout_split(len(items), 0.25, seed=3)
    assert {tuple(items[i][2].shape) for i in hold} == {(14, 16), (6, 7)}  # the held-out items mix both sizes
    lts = LocalTemperatureScaling(3, features=4)
    before = _np_voxel_mean_nll(lts, [items[i] for i in hold])
    per_item_mean = float(np.mean([_np_voxel_mean_nll(lts, [items[i]]) for i in hold]))
    assert abs(before - per_item_mean) > 0.1

    info = lts.fit(items, epochs=3, lr=1e-2, batch_size=3, seed=3)
    assert (info["train_items"], info["holdout_items"]) == (len(train), len(hold))
    # untrained LTS is T = 1 + eps everywhere: check that case by hand too
    hand = sum(float(_np_nll(items[i][0].numpy(), 1.0 + lts.eps, items[i][2].numpy()).sum()) for i in hold) / sum(items[i][2].numel() for i in hold)
    assert info["holdout_nll_before"] == pytest.approx(before, rel=1e-5)
    assert info["holdout_nll_before"] == pytest.approx(hand, rel=1e-5)
    # the kept state is the best epoch's: its held-out NLL is the voxel-weighted mean of the fitted model
    assert info["best_epoch"] > 0 and info["holdout_nll_after"] < info["holdout_nll_before"]
    assert info["holdout_nll_after"] == pytest.approx(_np_voxel_mean_nll(lts, [items[i] for i in hold]), rel=1e-5)
    assert lts.nll([items[i] for i in hold]) == pytest.approx(info["holdout_nll_after"], rel=1e-6)


def test_lts_nll_over_items_of_three_sizes_matches_numpy():
    torch.manual_seed(4)
    lts = LocalTemperatureScaling(3, features=4)
    with torch.no_grad():
        for p in lts.parameters():
            p.add_(torch.randn_like(p) * 0.03)
    items = _items([(9, 9), (5, 11), (9, 9), (4, 4), (5, 11)], seed=6, scales=[1.0, 3.0, 0.5, 6.0, 2.0])
    with torch.no_grad():
        t = torch.cat([lts.temperature_map(z[None], x[None]).reshape(-1) for z, x, _ in items])
    assert float(t.max() - t.min()) > 0.1 and float(t.min()) > 0.1  # a non-uniform map, away from the eps floor
    per_item_mean = float(np.mean([_np_voxel_mean_nll(lts, [it]) for it in items]))
    want = _np_voxel_mean_nll(lts, items)
    assert abs(want - per_item_mean) > 0.05  # a mean of per-item NLLs would be caught
    for batch_size in (1, 2, 16):
        assert lts.nll(items, batch_size=batch_size) == pytest.approx(want, rel=1e-5)


def test_lts_training_sees_every_training_voxel_in_batches_of_one_size():
    shapes = [(8, 8), (5, 6), (8, 8), (5, 6), (8, 8), (3, 4), (5, 6), (8, 8)]
    items = _items(shapes, seed=7)
    hold, train = _holdout_split(len(items), 0.25, seed=0)
    lts = LocalTemperatureScaling(3, features=4)
    seen: list[tuple[int, ...]] = []
    native = lts._forward_native

    def recording(z, x):
        if torch.is_grad_enabled():  # training steps (the held-out NLL runs under no_grad)
            seen.append(tuple(z.shape))
        return native(z, x)

    lts._forward_native = recording  # type: ignore[method-assign]
    lts.fit(items, epochs=2, batch_size=2, seed=0)
    assert all(s[0] <= 2 for s in seen)
    voxels = sum(s[0] * s[2] * s[3] for s in seen)
    assert voxels == 2 * sum(items[i][2].numel() for i in train)
    per_epoch_sizes = sorted((s[2], s[3]) for s in seen[: len(seen) // 2] for _ in range(s[0]))
    assert per_epoch_sizes == sorted(tuple(items[i][2].shape) for i in train)


def test_lts_fit_reports_progress_with_the_epoch_and_the_loss(caplog):
    caplog.set_level(logging.INFO, logger="calibmonai")
    items = _items([(8, 8), (6, 5)] * 3, seed=8)
    info = LocalTemperatureScaling(3, features=4).fit(items, epochs=5, lr=1e-2, batch_size=2, progress_every=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "calibmonai.calibration" and "lts" in r.getMessage()]
    epochs = [re.search(r"epoch (\d+)/5: training NLL ([0-9.]+), held-out NLL ([0-9.]+) \(best ([0-9.]+) at epoch (\d+)\)", line) for line in lines]
    epochs = [m for m in epochs if m]
    assert [int(m.group(1)) for m in epochs] == [2, 4, 5]  # every 2 epochs and the last
    assert all(0 < float(m.group(2)) < 10 for m in epochs)
    last = epochs[-1]
    assert float(last.group(4)) == pytest.approx(info["holdout_nll_after"], abs=1e-4)
    assert int(last.group(5)) == info["best_epoch"]
    assert any(f"held-out NLL before training {info['holdout_nll_before']:.4f}" in line for line in lines)
    caplog.clear()
    LocalTemperatureScaling(3, features=4).fit(items, epochs=3, batch_size=2)  # default: about ten reports
    assert len([r for r in caplog.records if re.search(r"epoch \d/3: training NLL", r.getMessage())]) == 3


def test_lts_fit_argument_and_label_checks():
    items = _items([(6, 6)] * 4, seed=9)
    lts = LocalTemperatureScaling(3, features=4)
    with pytest.raises(ValueError, match="progress_every must be >= 1"):
        lts.fit(items, epochs=1, progress_every=0)
    with pytest.raises(ValueError, match="batch_size=0"):
        lts.fit(items, epochs=1, batch_size=0)
    frac = [(z, x, y.float() + (0.5 if k == 2 else 0.0)) for k, (z, x, y) in enumerate(items)]
    with pytest.raises(ValueError, match=r"LTS item 2: labels must be class indices \(whole numbers\), got 36 non-integral value\(s\) such as [012]\.5"):
        lts.fit(frac, epochs=1)
    # float labels holding whole numbers fit exactly as the long ones
    a, b = LocalTemperatureScaling(3, features=4), LocalTemperatureScaling(3, features=4)
    b.load_state_dict(a.state_dict())
    info_a = a.fit(items, epochs=2, lr=1e-2, batch_size=2)
    info_b = b.fit([(z, x, y.float()) for z, x, y in items], epochs=2, lr=1e-2, batch_size=2)
    assert info_a == info_b


# ------------------------------------------------------------------------------------------------------ sampling


def test_sampler_mask_of_the_wrong_size_names_both_shapes():
    s = StratifiedVoxelSampler(3, sample_size=300)
    z, y = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"mask shape \(2, 1, 4, 4\) does not match logits shape \(2, 3, 8, 8\)"):
        s.add(z, y, torch.ones(2, 1, 4, 4))
    # a (B, *spatial) mask of the right size is taken: the weights count the masked-in voxels of each class
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, :3] = True
    s.add(z, y, mask)
    sample = s.sample()
    want = np.bincount(y[:, 0].numpy()[mask.numpy()], minlength=3)
    got = np.array([float(sample.weights[sample.labels == c].sum()) for c in range(3)])
    np.testing.assert_allclose(got, want)


@pytest.mark.parametrize(
    "weights, message",
    [
        (torch.zeros(4), "no voxel has weight"),
        (torch.tensor([1.0, -0.5, 1.0, 1.0]), r"non-negative, got 1 negative value\(s\) among 4 \(minimum -0.5\)"),
        (torch.tensor([1.0, float("nan"), 1.0, 1.0]), r"finite, got 1 non-finite"),
        (torch.tensor([1.0, float("inf"), 1.0, 1.0]), r"finite, got 1 non-finite"),
    ],
)
def test_voxel_sample_refuses_weights_without_mass_or_negative_or_non_finite(weights, message):
    with pytest.raises(ValueError, match=message):
        VoxelSample(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), weights)


def test_voxel_sample_zero_weights_on_some_voxels_drop_them():
    g = torch.Generator().manual_seed(10)
    y = torch.randint(0, 3, (200,), generator=g)
    z = F.one_hot(y, 3).float() * 6 + torch.randn(200, 3, generator=g) * 4  # over-confident: T well inside the bounds
    w = torch.ones(200)
    w[::3] = 0.0
    t_weighted = TemperatureScaling(3).fit(VoxelSample(z, y, w))["temperature"]
    keep = w > 0
    t_subset = TemperatureScaling(3).fit(VoxelSample(z[keep], y[keep], torch.ones(int(keep.sum()))))["temperature"]
    assert t_weighted == pytest.approx(t_subset, rel=1e-6)
    assert 1.2 < t_subset < 10
    t_all = TemperatureScaling(3).fit(VoxelSample(z, y, torch.ones(200)))["temperature"]
    assert abs(t_all - t_subset) > 1e-3  # the zero-weight voxels would have changed the fit
    # and the fitted temperature is the minimiser of the numpy NLL over the kept voxels
    ts = np.exp(np.linspace(np.log(t_subset) - 0.05, np.log(t_subset) + 0.05, 21))
    values = [_np_nll(z[keep].numpy().T, t, y[keep].numpy()).mean() for t in ts]
    assert int(np.argmin(values)) == 10


def test_voxel_sample_float_labels_whole_numbers_are_converted_others_refused():
    g = torch.Generator().manual_seed(11)
    z, y = torch.randn(300, 4, generator=g) * 3, torch.randint(0, 4, (300,), generator=g)
    sample = VoxelSample(z, y.double(), torch.ones(300))
    assert sample.labels.dtype == torch.long and torch.equal(sample.labels, y)
    info = TemperatureScaling(4).fit(sample)
    want = _np_nll(z.numpy().T, info["temperature"], y.numpy()).mean()
    assert info["nll_after"] == pytest.approx(want, rel=1e-9)
    assert info == TemperatureScaling(4).fit(VoxelSample(z, y, torch.ones(300)))
    with pytest.raises(ValueError, match=r"whole numbers\), got 1 non-integral value\(s\) of dtype torch.float32 such as 0.5"):
        VoxelSample(torch.randn(3, 4), torch.tensor([0.5, 1.0, 2.0]), torch.ones(3))
    with pytest.raises(ValueError, match="non-integral value.* such as nan"):
        VoxelSample(torch.randn(3, 4), torch.tensor([float("nan"), 1.0, 2.0]), torch.ones(3))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\], got \[0, 4\]"):
        VoxelSample(torch.randn(3, 4), torch.tensor([0.0, 4.0, 2.0]), torch.ones(3))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\], got \[-1, 2\]"):
        VoxelSample(torch.randn(3, 4), torch.tensor([0, -1, 2]), torch.ones(3))


# ------------------------------------------------------------------------------------------------ integer logits


def _fitted(kind: str):
    g = torch.Generator().manual_seed(12)
    y = torch.randint(0, 3, (600,), generator=g)
    z = F.one_hot(y, 3).float() * 5 + torch.randn(600, 3, generator=g) * 3
    sample = VoxelSample(z, y, torch.ones(600))
    if kind == "lts":
        cal = LocalTemperatureScaling(3, features=4)
        with torch.no_grad():
            for p in cal.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        return cal
    cal = {"ts": TemperatureScaling, "platt": PlattScaling, "isotonic": IsotonicCalibration}[kind](3)
    cal.fit(sample)
    return cal


@pytest.mark.parametrize("kind", ["ts", "platt", "isotonic", "lts"])
def test_every_calibrator_takes_integer_logits_as_their_float_values(kind):
    cal = _fitted(kind).eval()
    z = torch.randint(-6, 7, (2, 3, 7, 6))
    x = torch.randn(2, 1, 7, 6)
    with torch.no_grad():
        got = cal(z, x)
        want = cal(z.float(), x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    np.testing.assert_allclose(got.sum(1).numpy(), 1.0, atol=1e-5)
    if kind == "ts":  # against numpy: softmax(z / T) with the fitted, non-integral T (no truncation to int)
        t = cal.temperature
        assert abs(t - round(t)) > 1e-3
        zt = z.double().numpy() / t
        p = np.exp(zt - zt.max(1, keepdims=True))
        np.testing.assert_allclose(got.numpy(), p / p.sum(1, keepdims=True), rtol=1e-5, atol=1e-6)
    if kind == "platt":
        a, b = cal.a.detach().double().numpy(), cal.b.detach().double().numpy()
        zt = z.double().numpy() * a[None, :, None, None] + b[None, :, None, None]
        p = np.exp(zt - zt.max(1, keepdims=True))
        np.testing.assert_allclose(got.numpy(), p / p.sum(1, keepdims=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [TemperatureScaling, PlattScaling, IsotonicCalibration])
def test_voxel_calibrators_fit_integer_logits_as_their_float_values(cls):
    g = torch.Generator().manual_seed(13)
    y = torch.randint(0, 3, (400,), generator=g)
    z = F.one_hot(y, 3) * 4 + torch.randint(-3, 4, (400, 3), generator=g)
    sample = VoxelSample(z, y, torch.ones(400))
    assert sample.logits.dtype == torch.float32
    assert cls(3).fit(sample) == cls(3).fit(VoxelSample(z.float(), y, torch.ones(400)))


# ------------------------------------------------------------------------------------ argument checks (audit)


def test_weighted_nll_refuses_labels_out_of_range_empty_nan_and_unbroadcast_weights():
    from calibmonai.calibration import weighted_nll

    z, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\], got \[5, 5\]"):
        weighted_nll(z, torch.full((4,), 5))  # an IndexError before (a device-side assert on CUDA)
    with pytest.raises(ValueError, match=r"no voxel has weight: the 4 weights sum to 0"):
        weighted_nll(z, y, torch.zeros(4))
    with pytest.raises(ValueError, match=r"logits must be \(N, C\) with N >= 1 voxels and C >= 2 classes, got \(0, 3\)"):
        weighted_nll(torch.randn(0, 3), torch.zeros(0, dtype=torch.long))
    nan = z.clone()
    nan[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"1 non-finite logit value\(s\) \(NaN or Inf\)"):
        weighted_nll(nan, y)
    with pytest.raises(ValueError, match=r"labels and weights must be \(4,\) like the logits \(4, 3\) \(one label and one weight per voxel\), got \(4,\) and \(1,\)"):
        weighted_nll(z, y, torch.ones(1))  # was broadcast silently
    with pytest.raises(ValueError, match=r"logits must be \(N, C\) .* got \(1, 3, 4\)"):
        weighted_nll(torch.randn(1, 3, 4), torch.zeros(1, 4, dtype=torch.long))  # a (B, C, *spatial) map: flatten first
    with pytest.raises(ValueError, match=r"labels must be integer class indices, got dtype torch.float32"):
        weighted_nll(z, y.float())
    with pytest.raises(ValueError, match=r"weights must be non-negative, got 1 negative"):
        weighted_nll(z, y, torch.tensor([1.0, -1.0, 1.0, 2.0]))
    # the values themselves: integer labels of any width, weights as a weighted mean of the numpy NLL
    w = torch.tensor([1.0, 0.0, 2.0, 3.0], dtype=torch.float64)
    per_voxel = _np_nll(z.numpy().T, 1.0, y.numpy())
    assert float(weighted_nll(z.double(), y.int(), w)) == pytest.approx(float((per_voxel * w.numpy()).sum() / 6.0), rel=1e-6)
    assert float(weighted_nll(z, y)) == pytest.approx(float(per_voxel.mean()), rel=1e-6)


@pytest.mark.parametrize("kind", ["ts", "platt", "isotonic", "lts"])
def test_calibrators_refuse_logits_without_a_voxel(kind):
    cal = _fitted(kind).eval()
    with pytest.raises(ValueError, match=rf"{type(cal).__name__}: the logits hold no voxel \(an empty batch or spatial size\), shape \(0, 3, 4, 4\)"):
        cal(torch.randn(0, 3, 4, 4), torch.randn(0, 1, 4, 4))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: TemperatureScaling(2.5), r"TemperatureScaling: num_classes must be an integer >= 2, got 2.5 of type float"),
        (lambda: TemperatureScaling("3"), r"TemperatureScaling: num_classes must be an integer >= 2, got '3' of type str"),
        (lambda: TemperatureScaling(3.0), r"num_classes must be an integer >= 2, got 3.0 of type float \(a float: write 3\)"),
        (lambda: PlattScaling(2.5), r"PlattScaling: num_classes must be an integer >= 2, got 2.5"),
        (lambda: IsotonicCalibration(True), r"IsotonicCalibration: num_classes must be an integer >= 2, got True of type bool"),
        (lambda: LocalTemperatureScaling(2.5), r"LocalTemperatureScaling: num_classes must be an integer >= 2, got 2.5"),
        (lambda: StratifiedVoxelSampler(2.5), r"StratifiedVoxelSampler: num_classes must be an integer >= 2, got 2.5"),
        (lambda: StratifiedVoxelSampler(3, sample_size=2.5e5), r"StratifiedVoxelSampler: sample_size must be an integer >= 1, got 250000.0 of type float \(a float: write 250000\)"),
        (lambda: StratifiedVoxelSampler(3, sample_size=1000.5), r"sample_size must be an integer >= 1, got 1000.5"),
        (lambda: StratifiedVoxelSampler(3, sample_size="1000"), r"sample_size must be an integer >= 1, got '1000'"),
    ],
)
def test_num_classes_and_sample_size_must_be_integers(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_integer_num_classes_and_sample_size_of_numpy_types_are_taken():
    ts = TemperatureScaling(np.int64(3))
    assert ts.num_classes == 3 and type(ts.num_classes) is int
    s = StratifiedVoxelSampler(np.int32(3), sample_size=np.int64(250_000))
    assert s.per_class == 83_333 and type(s.per_class) is int


@pytest.mark.parametrize(
    "bounds, message",
    [
        ((0.1, float("inf")), r"TemperatureScaling: bounds\[1\] must be a finite number, got inf"),
        ((float("nan"), 2.0), r"TemperatureScaling: bounds\[0\] must be a finite number, got nan"),
        ((1.0, 2.0, 3.0), r"bounds must be two numbers \(low, high\) with 0 < low < high, got \(1.0, 2.0, 3.0\)"),
        ((1.0,), r"bounds must be two numbers \(low, high\) with 0 < low < high, got \(1.0,\)"),
        (0.5, r"bounds must be two numbers \(low, high\) with 0 < low < high, got 0.5"),
        ("ab", r"bounds must be two numbers \(low, high\) with 0 < low < high, got 'ab'"),
        (("0.1", 2.0), r"bounds\[0\] must be a real number \(int or float\), got '0.1'"),
        ((2.0, 1.0), r"bounds must satisfy 0 < low < high, got \(2.0, 1.0\)"),
        ((0.0, 1.0), r"bounds must satisfy 0 < low < high"),
    ],
)
def test_temperature_bounds_must_be_two_finite_numbers_in_order(bounds, message):
    with pytest.raises(ValueError, match=message):
        TemperatureScaling(3, bounds=bounds)


def test_temperature_bounds_given_as_a_list_are_kept_as_floats(tmp_path):
    from calibmonai.calibration import load_calibrator

    ts = TemperatureScaling(3, bounds=[1, 4])
    assert ts.bounds == (1.0, 4.0) and all(type(b) is float for b in ts.bounds)
    assert load_calibrator(ts.save(tmp_path / "ts.pt")).bounds == (1.0, 4.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"eps": -1.0}, r"LocalTemperatureScaling: eps must be > 0 \(the lowest temperature\), got -1.0"),
        ({"eps": 0.0}, r"eps must be > 0"),
        ({"eps": float("nan")}, r"LocalTemperatureScaling: eps must be a finite number, got nan"),
        ({"features": 0}, r"LocalTemperatureScaling: features must be an integer >= 1, got 0"),
        ({"features": 4.0}, r"features must be an integer >= 1, got 4.0 of type float"),
        ({"image_channels": 0}, r"LocalTemperatureScaling: image_channels must be an integer >= 1, got 0"),
    ],
)
def test_lts_hyper_parameters_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LocalTemperatureScaling(3, **kwargs)


def test_lts_refuses_a_non_finite_image_in_forward_and_fit():
    lts = LocalTemperatureScaling(3, features=4)
    z, x = torch.randn(1, 3, 8, 8), torch.randn(1, 1, 8, 8)
    x[0, 0, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"LocalTemperatureScaling: the image \(1, 1, 8, 8\) holds 1 non-finite value\(s\) \(NaN or Inf\)"):
        lts(z, x)
    with pytest.raises(ValueError, match=r"holds 1 non-finite value"):
        lts.temperature_map(z, x)
    items = _items([(6, 6)] * 3, seed=14)
    bad = items[1][1].clone()
    bad[0, 0, :2] = float("inf")
    items[1] = (items[1][0], bad, items[1][2])
    with pytest.raises(ValueError, match=r"LTS item 1: the image holds 2 non-finite value\(s\) \(NaN or Inf\)"):
        lts.fit(items, epochs=1)
    with pytest.raises(ValueError, match=r"LTS item 1: the image holds 2 non-finite"):
        lts.nll(items)


def test_lts_2d_model_on_a_volume_checks_the_image_shape_before_computing():
    lts = LocalTemperatureScaling(3, spatial_dims=2, features=4)

    def no_computation(*args):  # pragma: no cover - reached only without the check
        raise AssertionError("computed before checking the image")

    lts._forward_native = no_computation  # type: ignore[method-assign]
    with pytest.raises(ValueError, match=r"image shape \(1, 1, 8, 8, 4\) does not match logits \(1, 3, 8, 8, 3\) \(1 image channel\(s\)\)"):
        lts(torch.randn(1, 3, 8, 8, 3), torch.randn(1, 1, 8, 8, 4))
    with pytest.raises(ValueError, match=r"image shape \(1, 2, 8, 8, 3\) does not match logits \(1, 3, 8, 8, 3\)"):
        lts(torch.randn(1, 3, 8, 8, 3), torch.randn(1, 2, 8, 8, 3))
    with pytest.raises(ValueError, match=r"image shape \(1, 1, 8, 8\) does not match logits \(1, 3, 8, 8, 3\)"):
        lts(torch.randn(1, 3, 8, 8, 3), torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"a 2D LTS model cannot take logits of shape \(1, 3, 8, 8, 3, 2\)"):
        lts(torch.randn(1, 3, 8, 8, 3, 2), torch.randn(1, 1, 8, 8, 3, 2))


@pytest.mark.parametrize(
    "holdout, message",
    [
        (1.0, r"LocalTemperatureScaling.fit: holdout must be a fraction in \[0, 1\), got 1.0"),
        (-0.1, r"holdout must be a fraction in \[0, 1\), got -0.1"),
        (float("nan"), r"LocalTemperatureScaling.fit: holdout must be a finite number, got nan"),
        ("0.25", r"holdout must be a real number \(int or float\), got '0.25'"),
        (0.9, r"holdout=0.9 holds out 4 of the 4 items \(round\(holdout \* 4\)\), leaving none to train on"),
    ],
)
def test_lts_holdout_must_leave_training_items(holdout, message):
    lts = LocalTemperatureScaling(3, features=4)
    before = copy.deepcopy(lts.state_dict())
    with pytest.raises(ValueError, match=message):
        lts.fit(_items([(6, 6)] * 4, seed=15), epochs=1, holdout=holdout)
    assert not lts.fitted and all(torch.equal(v, lts.state_dict()[k]) for k, v in before.items())


def test_lts_holdout_zero_holds_out_one_item():
    items = _items([(6, 6)] * 4, seed=16)
    info = LocalTemperatureScaling(3, features=4).fit(items, epochs=1, holdout=0)
    assert (info["train_items"], info["holdout_items"]) == (3, 1)
    info = LocalTemperatureScaling(3, features=4).fit(items, epochs=1, holdout=0.5)
    assert (info["train_items"], info["holdout_items"]) == (2, 2)


def test_sampler_labels_must_have_the_logits_shape_without_the_class_axis():
    s = StratifiedVoxelSampler(3, sample_size=300)
    z = torch.randn(2, 3, 4, 4)
    y = torch.randint(0, 3, (2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"labels shape \(2, 16, 1\) does not match logits shape \(2, 3, 4, 4\): it must be \(2, 1, 4, 4\) or \(2, 4, 4\)"):
        s.add(z, y.reshape(2, 16, 1))  # the same number of voxels: taken before
    with pytest.raises(ValueError, match=r"labels shape \(4, 2, 4\) does not match"):
        s.add(z, y.reshape(4, 2, 4))
    with pytest.raises(ValueError, match=r"labels must be real class indices, got dtype torch.complex64"):
        s.add(z, y.to(torch.complex64))
    with pytest.raises(ValueError, match=r"mask shape \(2, 16\) does not match logits shape \(2, 3, 4, 4\): it must be \(2, 1, 4, 4\) or \(2, 4, 4\)"):
        s.add(z, y, torch.ones(2, 16, dtype=torch.bool))
    inf = torch.full((2, 1, 4, 4), float("inf"))
    with pytest.raises(ValueError, match=r"labels must be class indices; got non-integer values such as inf"):
        s.add(z, inf)
    assert float(s.seen.sum()) == 0  # nothing was added by the refused batches
    # both accepted label shapes, and whole-number float labels, sample alike
    a, b, c = (StratifiedVoxelSampler(3, sample_size=300, seed=1) for _ in range(3))
    a.add(z, y)
    b.add(z, y[:, 0])
    c.add(z, y.double())
    for other in (b, c):
        torch.testing.assert_close(other.sample().logits, a.sample().logits)
        assert torch.equal(other.sample().labels, a.sample().labels)


def _documented(obj) -> set[str]:
    """The names documented in ``obj``'s ``Args:`` section (``    name: ...`` lines)."""
    import inspect

    doc = inspect.getdoc(obj) or ""
    assert "Args:" in doc, obj
    section = doc.split("Args:", 1)[1]
    section = re.split(r"\n\S", section, maxsplit=1)[0]  # up to the next unindented line (Returns:, Raises:)
    return set(re.findall(r"^    (\w+):", section, flags=re.M))


def test_docstrings_document_every_argument():
    import inspect

    from calibmonai.calibration import Calibrator, calibrate_run, load_calibrator, run_calibrator, weighted_nll

    for obj, doc_of in [
        (Calibrator.__init__, Calibrator.__init__),
        (PlattScaling.__init__, PlattScaling),
        (IsotonicCalibration.__init__, IsotonicCalibration),
        (TemperatureScaling.__init__, TemperatureScaling),
        (LocalTemperatureScaling.__init__, LocalTemperatureScaling),
        (StratifiedVoxelSampler.__init__, StratifiedVoxelSampler),
        (StratifiedVoxelSampler.add, StratifiedVoxelSampler.add),
        (weighted_nll, weighted_nll),
        (load_calibrator, load_calibrator),
        (run_calibrator, run_calibrator),
        (calibrate_run, calibrate_run),
    ]:
        params = set(inspect.signature(obj).parameters) - {"self"}
        assert params <= _documented(doc_of), (obj, params - _documented(doc_of))
