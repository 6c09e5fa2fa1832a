import numpy as np
import pytest
import torch

from calibmonai.calibration import (
    IsotonicCalibration,
    LocalTemperatureScaling,
    PlattScaling,
    StratifiedVoxelSampler,
    TemperatureScaling,
    VoxelSample,
    load_calibrator,
    weighted_nll,
)
from calibmonai.calibration.isotonic import interp_monotone
from calibmonai.metrics import CalibrationMetrics


def _synthetic(n=40_000, c=4, t0=2.5, seed=0):
    """Logits z * t0 whose labels are sampled from softmax(z): the right temperature is t0."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g) * 2.0
    y = torch.multinomial(torch.softmax(z, 1), 1, generator=g)[:, 0]
    return z * t0, y


def _sample(z, y, size=None, seed=0, batches=8):
    """Stream (N, C) logits through the stratified sampler as (B, C, H, W) batches."""
    sampler = StratifiedVoxelSampler(z.shape[1], size or z.shape[0], seed)
    for zz, yy in zip(z.chunk(batches), y.chunk(batches)):
        sampler.add(zz.T.reshape(1, z.shape[1], -1, 1), yy.reshape(1, 1, -1, 1))
    return sampler.sample()


def _ece(probs, y):
    m = CalibrationMetrics(("ece",), foreground="none")
    m(probs.T.reshape(1, probs.shape[1], -1, 1), y.reshape(1, 1, -1, 1))
    return m.aggregate()["ece"]


@pytest.mark.parametrize("t0", [0.5, 2.5])
def test_ts_recovers_known_temperature(t0):
    z, y = _synthetic(t0=t0)
    ts = TemperatureScaling(4)
    info = ts.fit(_sample(z, y))
    assert ts.temperature == pytest.approx(t0, rel=0.05)
    assert info["nll_after"] < info["nll_before"]


def test_ts_with_stratified_subsample_still_recovers_temperature():
    z, y = _synthetic(n=60_000, t0=2.0)
    ts = TemperatureScaling(4)
    ts.fit(_sample(z, y, size=8_000))  # reweighted class-stratified sample
    assert ts.temperature == pytest.approx(2.0, rel=0.05)


def test_ts_keeps_argmax_and_dice():
    z, _ = _synthetic(n=5000)
    ts = TemperatureScaling(4)
    with torch.no_grad():
        ts.log_t.fill_(np.log(3.7))
    logits = z.T.reshape(1, 4, 50, 100)
    p = ts(logits)
    torch.testing.assert_close(p.sum(1), torch.ones(1, 50, 100))
    assert torch.equal(p.argmax(1), logits.argmax(1))


def test_ts_warns_on_bound():
    z, y = _synthetic(t0=30.0)
    ts = TemperatureScaling(4, bounds=(0.5, 4.0))
    with pytest.warns(UserWarning, match="search bound"):
        ts.fit(_sample(z, y))
    assert ts.temperature == pytest.approx(4.0, rel=1e-4)


@pytest.mark.parametrize("cls", [PlattScaling, IsotonicCalibration, TemperatureScaling])
def test_calibrators_reduce_ece_on_overconfident_data(cls):
    z, y = _synthetic(t0=3.0)
    zt, yt = _synthetic(t0=3.0, seed=1)  # held-out test data
    cal = cls(4)
    cal.fit(_sample(z, y))
    before = _ece(torch.softmax(zt, 1), yt)
    after = _ece(cal.calibrate_flat(zt), yt)
    assert before > 0.1 and after < before / 3, (before, after)


def test_isotonic_is_monotone_and_normalised():
    z, y = _synthetic(t0=3.0)
    iso = IsotonicCalibration(4)
    iso.fit(_sample(z, y))
    grid = torch.linspace(0, 1, 501, dtype=torch.float64)
    for c in range(4):
        mapped = interp_monotone(grid, iso.xp[c], iso.fp[c])
        assert bool((mapped[1:] >= mapped[:-1] - 1e-12).all())
        assert mapped.min() >= 0 and mapped.max() <= 1
    p = iso.calibrate_flat(z[:2000])
    torch.testing.assert_close(p.sum(1), torch.ones(2000))


def test_interp_matches_numpy():
    xp, fp = torch.tensor([0.1, 0.4, 0.9], dtype=torch.float64), torch.tensor([0.0, 0.5, 0.7], dtype=torch.float64)
    x = torch.tensor([0.0, 0.1, 0.25, 0.4, 0.65, 0.95, 1.0], dtype=torch.float64)
    np.testing.assert_allclose(interp_monotone(x, xp, fp).numpy(), np.interp(x.numpy(), xp.numpy(), fp.numpy()))


def _lts_data(n_images=24, size=24, seed=0):
    """2D images whose left half has temperature 0.4 and right half 3.0; the image shows which half is which."""
    g = torch.Generator().manual_seed(seed)
    items = []
    t_map = torch.ones(size, size)
    t_map[:, : size // 2] = 0.4
    t_map[:, size // 2 :] = 3.0
    image = (t_map > 1).float()[None] * 2 - 1
    for _ in range(n_images):
        z = torch.randn(3, size, size, generator=g) * 1.5
        y = torch.multinomial(torch.softmax(z, 0).permute(1, 2, 0).reshape(-1, 3), 1, generator=g).reshape(size, size)
        items.append((z * t_map, image.clone(), y))
    return items


def test_lts_initial_temperature_is_uniform():
    lts = LocalTemperatureScaling(3, spatial_dims=2)
    z, x, _ = _lts_data(2)[0]
    t = lts.temperature_map(z[None], x[None])
    assert torch.allclose(t, torch.full_like(t, 1.0 + lts.eps))
    lts3 = LocalTemperatureScaling(3, spatial_dims=3)
    t3 = lts3.temperature_map(torch.randn(1, 3, 6, 6, 6), torch.randn(1, 1, 6, 6, 6))
    assert torch.allclose(t3, torch.full_like(t3, 1.0 + lts3.eps))


def test_lts_beats_ts_when_temperature_varies_in_space():
    torch.manual_seed(0)
    train, test = _lts_data(24, seed=0), _lts_data(8, seed=1)
    lts = LocalTemperatureScaling(3, spatial_dims=2, features=8)
    info = lts.fit(train, epochs=40, lr=1e-2, batch_size=8)
    assert info["holdout_nll_after"] < info["holdout_nll_before"]
    ts = TemperatureScaling(3)
    z_flat = torch.cat([it[0].reshape(3, -1).T for it in train])
    y_flat = torch.cat([it[2].reshape(-1) for it in train])
    ts.fit(VoxelSample(z_flat, y_flat, torch.ones(len(y_flat), dtype=torch.float64)))
    zt = torch.stack([it[0] for it in test])
    xt = torch.stack([it[1] for it in test])
    yt = torch.stack([it[2] for it in test])
    with torch.no_grad():
        nll_lts = float(torch.nn.functional.nll_loss(torch.log(lts(zt, xt).clamp_min(1e-12)), yt))
        nll_ts = float(torch.nn.functional.nll_loss(torch.log(ts(zt).clamp_min(1e-12)), yt))
        t_map = lts.temperature_map(zt[:1], xt[:1])[0, 0]
    print("LTS vs TS NLL", nll_lts, nll_ts)
    assert nll_lts < nll_ts - 0.02, (nll_lts, nll_ts)
    assert float(t_map[:, 18:].mean()) > float(t_map[:, :6].mean())  # hotter where the logits are inflated


def test_lts_2d_model_runs_slice_by_slice_over_a_volume():
    lts = LocalTemperatureScaling(3, spatial_dims=2)
    with torch.no_grad():
        lts.image_branch[-1].bias.fill_(0.5)
    z, x = torch.randn(1, 3, 8, 9, 5), torch.randn(1, 1, 8, 9, 5)
    out = lts(z, x)
    assert out.shape == z.shape
    for k in range(5):
        torch.testing.assert_close(out[..., k], lts(z[..., k], x[..., k]))


@pytest.mark.parametrize("make", [
    lambda: TemperatureScaling(4), lambda: PlattScaling(4), lambda: IsotonicCalibration(4),
    lambda: LocalTemperatureScaling(4, spatial_dims=2, features=4),
])  # fmt: skip
def test_save_load_round_trip(make, tmp_path):
    cal = make()
    if isinstance(cal, LocalTemperatureScaling):
        with torch.no_grad():
            for p in cal.parameters():
                p.normal_(0, 0.1)
        z, x = torch.randn(2, 4, 10, 10), torch.randn(2, 1, 10, 10)
    else:
        zz, y = _synthetic(n=4000, t0=2.0)
        cal.fit(_sample(zz, y))
        z, x = torch.randn(2, 4, 10, 10) * 3, None
    path = cal.save(tmp_path / "cal.pt")
    loaded = load_calibrator(path, num_classes=4)
    assert type(loaded) is type(cal)
    torch.testing.assert_close(loaded(z, x), cal(z, x))
    with pytest.raises(ValueError, match="fitted for 4 classes, the network has 3"):
        load_calibrator(path, num_classes=3)
    with pytest.raises(ValueError, match="fitted for 4 classes"):
        loaded(torch.randn(1, 3, 4, 4), x)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="calibrate"):
        load_calibrator(tmp_path / "none.pt")
    torch.save({"something": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a calibmonai calibrator"):
        load_calibrator(tmp_path / "bad.pt")


def test_sampler_memory_is_bounded_and_weights_count_voxels():
    sampler = StratifiedVoxelSampler(3, sample_size=300, seed=1)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(3)
    for _ in range(20):
        y = torch.randint(0, 3, (2, 1, 30, 30), generator=g)
        y[y == 2] = torch.randint(0, 2, (int((y == 2).sum()),), generator=g) * 2  # class 2 rarer
        counts += torch.bincount(y.flatten(), minlength=3)
        sampler.add(torch.randn(2, 3, 30, 30, generator=g), y)
        assert all(k.numel() <= 100 for k in sampler.keys)
    s = sampler.sample()
    assert len(s) == 300
    for c in range(3):
        assert float(s.weights[s.labels == c].sum()) == pytest.approx(float(counts[c]))
    again = StratifiedVoxelSampler(3, sample_size=300, seed=1)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        y = torch.randint(0, 3, (2, 1, 30, 30), generator=g)
        y[y == 2] = torch.randint(0, 2, (int((y == 2).sum()),), generator=g) * 2
        again.add(torch.randn(2, 3, 30, 30, generator=g), y)
    torch.testing.assert_close(again.sample().logits, s.logits)  # seeded: reproducible


def test_weighted_nll_hand_computed():
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    a, b = np.log(2), np.log(1 + np.exp(2))
    assert float(weighted_nll(z, y)) == pytest.approx((a + b) / 2)
    assert float(weighted_nll(z, y, torch.tensor([3.0, 1.0]))) == pytest.approx((3 * a + b) / 4)


def test_calibrate_run_refuses_a_validation_split_without_foreground(tmp_path):
    from monai.networks.nets import UNet

    from calibmonai.calibration import calibrate_run

    net = UNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=0)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    items = [{"image": "a", "label": "a"}, {"image": "b", "label": "b"}]

    def pre(item):
        return {"image": torch.rand(1, 8, 8), "label": torch.zeros(1, 8, 8)}

    for name in ("ts", "lts"):
        with pytest.raises(ValueError, match="no foreground voxel"):
            calibrate_run(name, net, str(tmp_path / "model.pt"), items, pre, lambda x, n: n(x), 3, str(tmp_path), sample_size=100)
    with pytest.raises(ValueError, match="no calibrator chosen"):
        calibrate_run(None, net, str(tmp_path / "model.pt"), items, pre, lambda x, n: n(x), 3, str(tmp_path))
    with pytest.raises(ValueError, match="available calibrators"):
        calibrate_run("beta", net, str(tmp_path / "model.pt"), items, pre, lambda x, n: n(x), 3, str(tmp_path))


def test_calibrator_files_load_without_running_code(tmp_path):
    """A crafted pickle in a calibrator file is refused (weights_only loading), and every calibrator kind saved by
    calibmonai still loads with the same outputs."""
    import pickle

    from calibmonai.calibration import CALIBRATORS, load_calibrator

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "calibrator_ts.pt"
    torch.save({"kind": "ts", "num_classes": 4, "config": {}, "state": {}, "extra": Payload()}, bad, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        load_calibrator(bad, num_classes=4)
    assert not marker.exists()  # the crafted object was never built

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, 6, 5, generator=gen) * 3
    labels = torch.randint(0, 3, (1, 6, 5), generator=gen)
    image = torch.randn(1, 1, 6, 5, generator=gen)
    for name, cls in CALIBRATORS.items():
        cal = cls(3)
        if cal.needs_image:
            cal.fit([(logits[0], image[0], labels[0]), (logits[0] * 0.5, image[0], labels[0])], epochs=2, seed=0)
        else:
            from calibmonai.calibration.sampling import StratifiedVoxelSampler

            sampler = StratifiedVoxelSampler(3, 30, 0)
            sampler.add(logits, labels[:, None])
            cal.fit(sampler.sample())
        path = cal.save(tmp_path / f"calibrator_{name}.pt")
        loaded = load_calibrator(path, num_classes=3)
        with torch.no_grad():
            torch.testing.assert_close(loaded(logits, image), cal.eval()(logits, image))


def test_non_finite_or_malformed_fitting_data_is_refused():
    import warnings

    from calibmonai.calibration import VoxelSample

    x = torch.randn(1, 3, 16, 16) * 3
    y = x.argmax(1)
    x[0, 1, 0, 0] = float("nan")  # one voxel: before, TS fitted T = 0.05 and Platt NaN parameters, silently
    s = StratifiedVoxelSampler(3, 10_000)
    with pytest.raises(ValueError, match=r"logits \(1, 3, 16, 16\) hold 1 non-finite value\(s\) \(NaN or Inf\)"):
        s.add(x, y)
    mask = torch.ones(1, 1, 16, 16, dtype=torch.bool)
    mask[0, 0, 0, 0] = False
    s.add(x, y, mask=mask)  # the NaN voxel masked out: nothing to refuse
    assert len(s.sample()) == 16 * 16 - 1
    ok = (torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0]), torch.ones(5, dtype=torch.float64))
    for logits, labels, weights, words in (
        (ok[0].clone().fill_(float("inf")), ok[1], ok[2], "5 non-finite logit value"),
        (torch.empty(0, 3), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.float64), r"N >= 1 voxels"),
        (ok[0], torch.tensor([0, 1, 3, 1, 0]), ok[2], r"labels must lie in \[0, 2\], got \[0, 3\]"),
        (ok[0], ok[1][:4], ok[2], r"labels and weights must be \(5,\)"),
        (ok[0], ok[1], -ok[2], "non-negative"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=words):
            VoxelSample(logits, labels, weights)
    ts = TemperatureScaling(3)
    ts.fit(VoxelSample(*ok))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading the fitted temperature warns about nothing
        assert ts.temperature > 0


def test_per_class_calibrators_warn_when_the_fitting_sample_lacks_a_class():
    import warnings

    from calibmonai.calibration import IsotonicCalibration, PlattScaling, VoxelSample

    g = torch.Generator().manual_seed(0)
    z = torch.randn(400, 3, generator=g) * 3
    y = z[:, :2].argmax(1)  # classes 0 and 1 only: class 2 never occurs
    sample = VoxelSample(z, y, torch.ones(400, dtype=torch.float64))
    for make in (lambda: PlattScaling(3), lambda: IsotonicCalibration(3)):
        cal = make()
        with pytest.warns(UserWarning, match=r"holds no voxel of class\(es\) \[2\] \(of 3\)"):
            cal.fit(sample)
        with torch.no_grad():  # what the warning says: class 2's calibrated probability is driven towards 0
            assert float(cal(z[:, :, None])[:, 2].max()) < 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one temperature for every class: nothing to warn about
        TemperatureScaling(3).fit(sample)
        full = VoxelSample(z, z.argmax(1), torch.ones(400, dtype=torch.float64))
        PlattScaling(3).fit(full)
        IsotonicCalibration(3).fit(full)
