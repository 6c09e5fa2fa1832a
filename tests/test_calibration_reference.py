"""Independent cross-check of the post-hoc calibrators against numpy/scipy references written from the
published definitions (not from calibmonai's code).

What is checked against what:

* Temperature scaling (Guo et al. 2017): ``TemperatureScaling.fit`` against ``T`` minimising the weighted mean NLL
  of ``softmax(z / T)`` by ``scipy.optimize.minimize_scalar`` (bounded, on ``log T``): temperature, NLL reached and
  calibrated probabilities; the argmax (first index on ties) is kept.
* Vector scaling with a diagonal matrix (``PlattScaling``): ``p = softmax(a * z + b)`` fitted by weighted NLL with
  ``scipy.optimize.minimize`` (L-BFGS-B, analytic gradient) from ``a = 1, b = 0``: NLL reached, probabilities, ``a``
  and ``b`` up to a shared shift.
* Isotonic one-vs-rest (Zadrozny & Elkan 2002): a weighted pool-adjacent-violators fit per class of ``1[y == c]`` on
  ``p_c`` (ties in ``p_c`` pooled first), linear interpolation between knots, clipping outside, renormalisation;
  also between knots closer than 1e-12 and for probabilities below 1e-15 (a very over-confident network), where
  the calibrator once lost the interpolation (a clamped knot spacing) and the order of the inputs (scikit-learn
  pools inputs closer than 1e-15, so calibmonai fits on ``log p_c``).
* ``StratifiedVoxelSampler``: weights ``seen_c / kept_c`` (class counts of the full stream recovered exactly), masked
  voxels never kept, kept voxels are voxels of their class, inclusion uniform across batches.
* Every calibrator: save/load round trip gives identical outputs; ``(B, C, H, W)`` and ``(B, C, D, H, W)`` inputs get
  the same map as the flat ``(N, C)`` rows.
* Local temperature scaling (Ding et al. 2021), only what the definition fixes: the temperature map is positive,
  the output equals ``softmax(z / T(x))`` voxelwise with the model's own map, a constant map reproduces TS.
* Inference maps (``ProbabilityMapsd``, fed by ``CalibratedLogProbabilitiesd``): ``seg`` = argmax with the first
  index on ties, ``conf`` = max probability, ``uncertainty`` = entropy / log C, ``prob`` = the calibrated
  probabilities.

CPU only; small arrays; a few seconds in total.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import optimize

from calibmonai.calibration import (
    IsotonicCalibration,
    LocalTemperatureScaling,
    PlattScaling,
    StratifiedVoxelSampler,
    TemperatureScaling,
    VoxelSample,
    load_calibrator,
)

# ----------------------------------------------------------------------------------------------------------------
# references, from the definitions
# ----------------------------------------------------------------------------------------------------------------


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    s = z - z.max(axis=axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.exp(log_softmax(z, axis))


def ref_nll(logp: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float:
    """Weighted mean of ``-log p_y`` over the rows of ``logp (N, C)``."""
    w = np.ones(len(y)) if w is None else np.asarray(w, np.float64)
    return float(-(w * logp[np.arange(len(y)), y]).sum() / w.sum())


def ref_temperature(z, y, w=None, bounds=(0.05, 20.0)) -> tuple[float, float]:
    """Temperature scaling: ``T`` minimising the weighted NLL of ``softmax(z / T)``; returns ``(T, NLL)``."""
    f = lambda s: ref_nll(log_softmax(z / np.exp(s)), y, w)  # noqa: E731
    r = optimize.minimize_scalar(f, bounds=np.log(bounds), method="bounded", options={"xatol": 1e-12, "maxiter": 5000})
    return float(np.exp(r.x)), float(r.fun)


def _platt_nll_grad(theta, z, y, w):
    c = z.shape[1]
    lp = log_softmax(theta[:c] * z + theta[c:])
    W = w.sum()
    g = np.exp(lp)
    g[np.arange(len(y)), y] -= 1.0
    g *= (w / W)[:, None]
    return -(w * lp[np.arange(len(y)), y]).sum() / W, np.concatenate([(g * z).sum(0), g.sum(0)])


def ref_platt(z, y, w=None) -> tuple[np.ndarray, np.ndarray, float]:
    """Diagonal vector scaling ``softmax(a * z + b)`` by L-BFGS-B from ``a = 1, b = 0``; returns ``(a, b, NLL)``."""
    z = np.asarray(z, np.float64)
    c = z.shape[1]
    w = np.ones(len(y)) if w is None else np.asarray(w, np.float64)
    theta0 = np.concatenate([np.ones(c), np.zeros(c)])
    r = optimize.minimize(_platt_nll_grad, theta0, args=(z, np.asarray(y), w), jac=True, method="L-BFGS-B",
                          options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 20000})  # fmt: skip
    return r.x[:c], r.x[c:], float(r.fun)


def pav(x, y, w) -> tuple[np.ndarray, np.ndarray]:
    """Weighted pool-adjacent-violators: the non-decreasing least-squares fit of ``y`` on ``x``.
    Equal ``x`` are pooled first; returns the knots (sorted unique ``x``) and the fitted values there."""
    x, y, w = (np.asarray(a, np.float64) for a in (x, y, w))
    keep = w > 0
    ux, inv = np.unique(x[keep], return_inverse=True)
    uw = np.bincount(inv, weights=w[keep])
    uy = np.bincount(inv, weights=w[keep] * y[keep]) / uw
    vals, wts, counts = [], [], []
    for yi, wi in zip(uy, uw):
        vals.append(yi), wts.append(wi), counts.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            v2, w2, c2 = vals.pop(), wts.pop(), counts.pop()
            v1, w1, c1 = vals.pop(), wts.pop(), counts.pop()
            vals.append((v1 * w1 + v2 * w2) / (w1 + w2)), wts.append(w1 + w2), counts.append(c1 + c2)
    return ux, np.repeat(vals, counts)


def ref_isotonic(p_fit, y, w, p_eval) -> np.ndarray:
    """One-vs-rest isotonic maps fitted on ``p_fit``, applied to ``p_eval`` (interpolated, clipped), renormalised."""
    w = np.ones(len(y)) if w is None else w
    q = np.stack([np.interp(p_eval[:, c], *pav(p_fit[:, c], (y == c).astype(float), w)) for c in range(p_fit.shape[1])], 1)
    return q / q.sum(1, keepdims=True)


def ref_maps(prob: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``seg`` (argmax, first index on ties), ``conf`` (max) and ``uncertainty`` (entropy / log C)."""
    prob = np.asarray(prob, np.float64)
    plogp = np.where(prob > 0, prob * np.log(np.where(prob > 0, prob, 1.0)), 0.0)
    return np.argmax(prob, axis=axis), prob.max(axis=axis), -plogp.sum(axis=axis) / np.log(prob.shape[axis])


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------


def draw_labels(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    return np.minimum((np.cumsum(p, 1) < rng.random(len(p))[:, None]).sum(1), p.shape[1] - 1)


def make_data(seed: int, c: int, regime: str, weighted: bool, n: int = 1200, ties: bool = True):
    """Logits ``(n, c)``, labels drawn from a softmax of rescaled logits (``over``: the logits are over-confident,
    the true temperature is 3; ``under``: 1/3) with class offsets, optional weights, and ties: duplicated rows and
    rows whose two largest logits are equal."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * 4.0 + np.linspace(1.0, -1.0, c)
    if ties:
        k = n // 10
        z[k : 2 * k] = z[:k]  # duplicated logits (their labels drawn again)
        z[2 * k : 3 * k, 1] = z[2 * k : 3 * k].max(1)  # class 1 tied with the max (or the max itself)
        z[2 * k : 3 * k, 0] = z[2 * k : 3 * k, 1]  # classes 0 and 1 tied for the max
    scale = 1.0 / 3.0 if regime == "over" else 3.0
    y = draw_labels(rng, softmax(z * scale + rng.normal(size=c) * 0.5))
    w = rng.uniform(0.1, 5.0, size=n) if weighted else None
    return z, y, w


def sample_of(z, y, w) -> VoxelSample:
    weights = torch.ones(len(y), dtype=torch.float64) if w is None else torch.as_tensor(w)
    return VoxelSample(torch.as_tensor(z), torch.as_tensor(y), weights)


CASES = [  # (seed, classes, regime, weighted): every class count, both regimes, with and without weights
    (0, 2, "over", False),
    (1, 2, "under", True),
    (2, 3, "over", True),
    (3, 3, "under", False),
    (4, 4, "over", False),
    (5, 4, "under", True),
    (6, 5, "over", True),
    (7, 5, "under", False),
]


def _calibrate(cal, z: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return cal(torch.as_tensor(z)).numpy()


# ----------------------------------------------------------------------------------------------------------------
# temperature scaling
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,c,regime,weighted", CASES)
def test_temperature_scaling_matches_reference(seed, c, regime, weighted):
    z, y, w = make_data(seed, c, regime, weighted)
    t_ref, nll_ref = ref_temperature(z, y, w)
    assert (t_ref > 1.5) if regime == "over" else (t_ref < 0.7)  # the data are in the intended regime
    cal = TemperatureScaling(c)
    info = cal.fit(sample_of(z, y, w))
    assert abs(cal.temperature / t_ref - 1) < 1e-4
    assert abs(info["temperature"] / t_ref - 1) < 1e-4
    assert abs(info["nll_after"] - nll_ref) < 1e-8
    assert abs(info["nll_before"] - ref_nll(log_softmax(z), y, w)) < 1e-10
    p = _calibrate(cal, z)
    np.testing.assert_allclose(p, softmax(z / t_ref), rtol=0, atol=1e-5)
    assert abs(ref_nll(np.log(p), y, w) - nll_ref) < 1e-7  # with the stored (float32) temperature
    np.testing.assert_array_equal(p.argmax(1), z.argmax(1))  # argmax kept, ties to the first index included
    p32 = _calibrate(cal, z.astype(np.float32))
    np.testing.assert_array_equal(p32.argmax(1), z.astype(np.float32).argmax(1))


# ----------------------------------------------------------------------------------------------------------------
# Platt / diagonal vector scaling
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,c,regime,weighted", CASES)
def test_platt_scaling_matches_reference(seed, c, regime, weighted):
    z, y, w = make_data(seed, c, regime, weighted)
    a_ref, b_ref, nll_ref = ref_platt(z, y, w)
    cal = PlattScaling(c)
    info = cal.fit(sample_of(z, y, w))
    assert abs(info["nll_after"] - nll_ref) < 1e-6
    assert info["nll_after"] >= nll_ref - 1e-9  # the reference is the minimum
    p = _calibrate(cal, z)
    p_ref = softmax(a_ref * z + b_ref)
    np.testing.assert_allclose(p, p_ref, rtol=0, atol=1e-4)
    assert abs(ref_nll(np.log(p), y, w) - nll_ref) < 1e-6  # with the stored (float32) parameters
    a, b = np.array(info["a"]), np.array(info["b"])
    np.testing.assert_allclose(a, a_ref, atol=1e-3)
    np.testing.assert_allclose(b - b.mean(), b_ref - b_ref.mean(), atol=1e-3)  # b is defined up to a shared shift
    margin = np.sort(p_ref, 1)[:, -1] - np.sort(p_ref, 1)[:, -2]
    clear = margin > 1e-3  # Platt may move the argmax; where it clearly does, it moves it as the reference does
    np.testing.assert_array_equal(p.argmax(1)[clear], p_ref.argmax(1)[clear])


# ----------------------------------------------------------------------------------------------------------------
# isotonic one-vs-rest
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,c,regime,weighted", CASES)
def test_isotonic_matches_reference(seed, c, regime, weighted):
    z, y, w = make_data(seed, c, regime, weighted, n=1500)
    cal = IsotonicCalibration(c)
    cal.fit(sample_of(z, y, w))
    rng = np.random.default_rng(100 + seed)
    z_new = np.concatenate([z[:200], rng.normal(size=(300, c)) * 6.0])  # knots themselves, and new points
    p_fit = softmax(z)
    np.testing.assert_allclose(_calibrate(cal, z_new), ref_isotonic(p_fit, y, w, softmax(z_new)), rtol=0, atol=1e-6)


def test_isotonic_clips_outside_the_fitted_range_and_pools_ties():
    # two classes; class-1 probabilities only in [0.3, 0.7]: evaluation at 0.05 / 0.95 takes the end values
    p1 = np.array([0.3, 0.3, 0.4, 0.5, 0.5, 0.7])
    y = np.array([0, 1, 0, 1, 1, 1])
    w = np.array([1.0, 3.0, 2.0, 1.0, 1.0, 2.0])
    z = np.log(np.stack([1 - p1, p1], 1))
    cal = IsotonicCalibration(2)
    cal.fit(sample_of(z, y, w))
    p_eval = np.array([0.05, 0.3, 0.35, 0.45, 0.6, 0.95])
    z_eval = np.log(np.stack([1 - p_eval, p_eval], 1))
    want = ref_isotonic(np.exp(z), y, w, np.exp(z_eval))
    np.testing.assert_allclose(_calibrate(cal, z_eval), want, rtol=0, atol=1e-9)
    # hand check of the class-1 curve: pooled value at 0.3 is 3/4, then PAV pools (0.3, 0.4) -> 3/6 = 0.5
    kx, ky = pav(p1, (y == 1).astype(float), w)
    np.testing.assert_allclose(ky, [0.5, 0.5, 1.0, 1.0])


def _very_over_confident(seed: int, c: int, n: int = 1500):
    """Logits with gaps of tens of nats: many class probabilities between 1e-30 and 1e-12."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * 15.0
    return z, draw_labels(rng, softmax(z / 8.0))


def _curves(cal, p: np.ndarray) -> np.ndarray:
    """The calibrator's stored knots, evaluated with an exact linear interpolation and renormalised."""
    q = np.stack([np.interp(p[:, c], cal.xp[c].numpy(), cal.fp[c].numpy()) for c in range(p.shape[1])], 1)
    return q / q.sum(1, keepdims=True)


def test_isotonic_interpolates_exactly_between_close_knots():
    # hand case: class-2 knots at 1e-13 and 2e-13 (values 0 and 1/3); the voxel at the second knot must get 1/3
    p = np.array([[0.5, 0.5 - 1e-13, 1e-13], [0.5, 0.5 - 2e-13, 2e-13], [0.2, 0.3, 0.5], [0.7, 0.2, 0.1]])
    y = np.array([0, 2, 1, 0])
    cal = IsotonicCalibration(3)
    cal.fit(sample_of(np.log(p), y, None))
    np.testing.assert_allclose(cal.fp[2].numpy(), [0.0, 1 / 3, 1 / 3], atol=1e-12)  # the fit itself is right
    np.testing.assert_allclose(_calibrate(cal, np.log(p)), _curves(cal, p), rtol=0, atol=1e-6)
    # realistic case: a very over-confident network
    z, y = _very_over_confident(1, 3)
    cal = IsotonicCalibration(3)
    cal.fit(sample_of(z, y, None))
    np.testing.assert_allclose(_calibrate(cal, z), _curves(cal, softmax(z)), rtol=0, atol=1e-6)


def test_isotonic_fit_orders_tiny_probabilities():
    # hand case: class 1 absent at p_1 = 1e-20, present at 5e-16 and 0.5: the isotonic fit is 0 at 1e-20
    p1 = np.array([1e-20, 5e-16, 0.5])
    z = np.log(np.stack([1 - p1, p1], 1))
    y = np.array([0, 1, 1])
    cal = IsotonicCalibration(2)
    cal.fit(sample_of(z, y, None))
    kx, ky = pav(p1, (y == 1).astype(float), np.ones(3))
    np.testing.assert_allclose(np.interp(p1, cal.xp[1].numpy(), cal.fp[1].numpy()), np.interp(p1, kx, ky), atol=1e-6)
    # realistic case, with the stored curves read by an exact interpolation (independent of the one above)
    z, y = _very_over_confident(1, 3)
    cal = IsotonicCalibration(3)
    cal.fit(sample_of(z, y, None))
    p = softmax(z)
    for c in range(3):
        kx, ky = pav(p[:, c], (y == c).astype(float), np.ones(len(y)))
        np.testing.assert_allclose(np.interp(p[:, c], cal.xp[c].numpy(), cal.fp[c].numpy()), np.interp(p[:, c], kx, ky), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# all voxel calibrators: shapes and save / load
# ----------------------------------------------------------------------------------------------------------------


def _fitted(kind: str, c: int = 3):
    z, y, w = make_data(11, c, "over", True, n=800)
    cal = {"ts": TemperatureScaling, "platt": PlattScaling, "isotonic": IsotonicCalibration}[kind](c)
    cal.fit(sample_of(z.astype(np.float32), y, w))
    return cal


@pytest.mark.parametrize("kind", ["ts", "platt", "isotonic"])
def test_voxel_calibrators_same_map_for_2d_3d_and_flat(kind):
    cal = _fitted(kind)
    gen = torch.Generator().manual_seed(3)
    for shape in [(2, 3, 5, 4), (2, 3, 3, 5, 4)]:
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 5
        flat = x.movedim(1, -1).reshape(-1, 3)
        with torch.no_grad():
            out = cal(x)
            ref = cal.calibrate_flat(flat).reshape(x.movedim(1, -1).shape).movedim(-1, 1)
            # independently: voxel (b, :, i, j[, k]) of the output is the calibration of that voxel's logits alone
            idx = (1, slice(None)) + tuple(s - 1 for s in shape[2:])
            single = cal(x[idx].reshape(1, 3))[0]
        assert out.shape == x.shape
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        torch.testing.assert_close(out[idx], single, rtol=0, atol=1e-12)
        torch.testing.assert_close(out.sum(1), torch.ones_like(out.sum(1)), rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", ["ts", "platt", "isotonic"])
def test_voxel_calibrators_save_load_round_trip(kind, tmp_path):
    cal = _fitted(kind)
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(4)) * 5
    path = cal.save(tmp_path / f"cal_{kind}.pt", fitted_on={"sha256": "abc"})
    loaded = load_calibrator(path, num_classes=3)
    assert type(loaded) is type(cal) and loaded.fitted_on == {"sha256": "abc"}
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), cal(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded(x.double()), cal(x.double()), rtol=0, atol=0)
        assert not torch.allclose(cal(x), torch.softmax(x, 1), atol=1e-3)  # the calibrator is not the identity


# ----------------------------------------------------------------------------------------------------------------
# stratified voxel sampler
# ----------------------------------------------------------------------------------------------------------------


def _tagged_batch(rng: np.random.Generator, shape: tuple, c: int, start: int, probs: np.ndarray):
    """Logits whose channel 0 holds a global voxel id (channel 1 the label, to check it travels with the voxel)."""
    n = int(np.prod(shape))
    labels = rng.choice(c, size=n, p=probs)
    logits = rng.normal(size=(n, c))
    logits[:, 0] = np.arange(start, start + n)
    logits[:, 1] = labels
    to_bc = lambda a: torch.as_tensor(a.reshape(shape + (-1,))).movedim(-1, 1).float()  # noqa: E731
    return to_bc(logits), torch.as_tensor(labels.reshape(shape)).unsqueeze(1), logits, labels


@pytest.mark.parametrize("c,sample_size", [(2, 40), (3, 90), (4, 10_000), (5, 60)])
def test_sampler_weights_recover_class_counts_and_masks(c, sample_size):
    rng = np.random.default_rng(c)
    probs = np.array([0.7] + [0.3 / (c - 1)] * (c - 1))  # one dominant class, rare ones
    sampler = StratifiedVoxelSampler(c, sample_size=sample_size, seed=c)
    counts = np.zeros(c)
    start, allowed = 0, set()
    for shape in [(1, 6, 7), (2, 5, 4, 3), (1, 9, 2)]:  # 2D and 3D batches
        x, lab, flat, labels = _tagged_batch(rng, shape, c, start, probs)
        mask = rng.random(len(labels)) < 0.6
        sampler.add(x, lab, mask=torch.as_tensor(mask.reshape(lab.shape)))
        counts += np.bincount(labels[mask], minlength=c)
        allowed |= set(np.arange(start, start + len(labels))[mask].tolist())
        start += len(labels)
    s = sampler.sample()
    ids, got_labels, wts = s.logits[:, 0].numpy().astype(int), s.labels.numpy(), s.weights.numpy()
    assert set(ids.tolist()) <= allowed  # a masked voxel is never sampled
    assert len(set(ids.tolist())) == len(ids)  # no voxel twice
    np.testing.assert_array_equal(s.logits[:, 1].numpy(), got_labels)  # a voxel keeps its own label
    per_class = sample_size // c
    for k in range(c):
        kept = int((got_labels == k).sum())
        assert kept == min(per_class, counts[k])
        if kept:
            np.testing.assert_allclose(wts[got_labels == k], counts[k] / kept, rtol=1e-12)
    np.testing.assert_allclose(np.bincount(got_labels, weights=wts, minlength=c), counts, rtol=1e-12)


def test_sampler_keeps_voxels_uniformly_across_batches():
    hits = np.zeros(12)
    trials = 600
    for seed in range(trials):
        sampler = StratifiedVoxelSampler(2, sample_size=8, seed=seed)  # 4 per class; class 0 has 12 voxels
        for b in range(3):
            z = torch.zeros(1, 2, 4, 1)
            z[0, 0, :, 0] = torch.arange(4 * b, 4 * b + 4, dtype=torch.float32)
            sampler.add(z, torch.zeros(1, 1, 4, 1, dtype=torch.long))
        hits[sampler.sample().logits[:, 0].long().numpy()] += 1
    freq = hits / trials
    assert np.abs(freq - 4 / 12).max() < 0.08  # ~4 standard deviations; a first-come or last-come sampler fails


def test_sample_with_every_voxel_kept_fits_like_the_full_data():
    z, y, _ = make_data(21, 3, "over", False, n=300, ties=False)
    sampler = StratifiedVoxelSampler(3, sample_size=3000, seed=0)
    sampler.add(torch.as_tensor(z.T[None, :, :, None]), torch.as_tensor(y[None, None, :, None]))
    cal = TemperatureScaling(3)
    cal.fit(sampler.sample())
    t_ref, _ = ref_temperature(z.astype(np.float32).astype(np.float64), y)
    assert abs(cal.temperature / t_ref - 1) < 1e-4


# ----------------------------------------------------------------------------------------------------------------
# local temperature scaling: only what the definition fixes
# ----------------------------------------------------------------------------------------------------------------


def _randomised_lts(spatial_dims: int, c: int = 3, seed: int = 0) -> LocalTemperatureScaling:
    torch.manual_seed(seed)
    lts = LocalTemperatureScaling(c, spatial_dims=spatial_dims, image_channels=1, features=4).double()
    with torch.no_grad():
        for p in lts.parameters():
            p.normal_(0.0, 0.3)
    return lts


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_lts_output_is_softmax_over_its_positive_temperature_map(spatial_dims):
    lts = _randomised_lts(spatial_dims)
    gen = torch.Generator().manual_seed(5)
    shape = (2, 3) + (6,) * spatial_dims
    z = torch.randn(shape, generator=gen, dtype=torch.float64) * 4
    x = torch.randn((2, 1) + shape[2:], generator=gen, dtype=torch.float64)
    with torch.no_grad():
        t = lts.temperature_map(z, x).numpy()
        p = lts(z, x).numpy()
    assert t.shape == (2, 1) + shape[2:]
    assert t.min() > 0 and t.std() > 1e-2  # positive and not constant (the test map is not trivial)
    np.testing.assert_allclose(p, softmax(z.numpy() / t, axis=1), rtol=0, atol=1e-12)


def test_lts_2d_model_on_a_volume_is_slice_by_slice():
    lts = _randomised_lts(2)
    gen = torch.Generator().manual_seed(6)
    z = torch.randn(1, 3, 5, 6, 4, generator=gen, dtype=torch.float64) * 4
    x = torch.randn(1, 1, 5, 6, 4, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        p = lts(z, x).numpy()
        for k in range(z.shape[-1]):
            t = lts.temperature_map(z[..., k], x[..., k]).numpy()
            np.testing.assert_allclose(p[..., k], softmax(z[..., k].numpy() / t, axis=1), rtol=0, atol=1e-12)


def test_lts_constant_map_reproduces_temperature_scaling(tmp_path):
    z, y, w = make_data(31, 3, "over", True, n=900, ties=False)
    t_ref, _ = ref_temperature(z, y, w)
    ts = TemperatureScaling(3)
    ts.fit(sample_of(z, y, w))
    lts = _randomised_lts(2)
    with torch.no_grad():  # zero the branches' last layers: t_z = t_x = bias, so T = ReLU(bias + 1) + eps everywhere
        for branch in (lts.logit_branch, lts.image_branch):
            branch[-1].weight.zero_()
            branch[-1].bias.fill_(t_ref - 1.0 - lts.eps)
    vol = torch.as_tensor(z.T.reshape(1, 3, 30, 30))
    img = torch.randn(1, 1, 30, 30, dtype=torch.float64)
    with torch.no_grad():
        np.testing.assert_allclose(lts.temperature_map(vol, img).numpy(), t_ref, rtol=1e-12)
        p_lts = lts(vol, img)
        p_ts = ts(vol)
    want = softmax(z / t_ref).T.reshape(1, 3, 30, 30)
    np.testing.assert_allclose(p_lts.numpy(), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(p_ts.numpy(), want, rtol=0, atol=1e-5)
    # and the round trip keeps the map
    loaded = load_calibrator(lts.float().save(tmp_path / "lts.pt"), num_classes=3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(vol.float(), img.float()), lts(vol.float(), img.float()), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# inference maps
# ----------------------------------------------------------------------------------------------------------------


def _maps_from_probabilities(prob: torch.Tensor, fov: torch.Tensor | None = None) -> dict:
    from calibmonai.inference import ProbabilityMapsd

    c = prob.shape[0]
    fov = torch.ones_like(prob[:1]) if fov is None else fov
    stacked = torch.cat([torch.log(prob.clamp_min(1e-12)), fov])
    return ProbabilityMapsd(keys="pred", num_classes=c)({"pred": stacked})


def test_inference_maps_match_definitions_with_ties():
    rows = [  # C = 4: exact ties between classes, uniform, a certain voxel
        [0.25, 0.25, 0.25, 0.25],
        [0.4, 0.4, 0.1, 0.1],
        [0.1, 0.4, 0.4, 0.1],
        [0.1, 0.1, 0.4, 0.4],
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
        [0.05, 0.15, 0.3, 0.5],
    ]
    rng = np.random.default_rng(8)
    rows += softmax(rng.normal(size=(13, 4)) * 3).tolist()
    prob = torch.tensor(rows, dtype=torch.float32).T.reshape(4, 4, 5)  # (C, H, W)
    out = _maps_from_probabilities(prob)
    seg, conf, unc = ref_maps(prob.double().numpy(), axis=0)
    np.testing.assert_array_equal(out["seg"][0].numpy(), seg)
    np.testing.assert_allclose(out["conf"][0].numpy(), conf, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["uncertainty"][0].numpy(), unc, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["prob"].numpy(), prob.numpy(), rtol=0, atol=1e-6)
    assert abs(float(out["uncertainty"][0, 0, 0]) - 1.0) < 1e-6 and float(out["uncertainty"][0, 1, 0]) < 1e-6


def test_inference_maps_outside_field_of_view_are_background():
    prob = torch.softmax(torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(9)), 0)
    fov = torch.ones(1, 4, 4)
    fov[0, :2] = 0.0
    out = _maps_from_probabilities(prob, fov)
    assert (out["seg"][0, :2] == 0).all() and torch.allclose(out["conf"][0, :2], torch.ones(2, 4))
    assert torch.allclose(out["uncertainty"][0, :2], torch.zeros(2, 4))
    seg, conf, unc = ref_maps(prob[:, 2:].double().numpy(), axis=0)
    np.testing.assert_array_equal(out["seg"][0, 2:].numpy(), seg)
    np.testing.assert_allclose(out["uncertainty"][0, 2:].numpy(), unc, atol=1e-6)


def test_calibrated_pipeline_writes_temperature_scaled_maps():
    from monai.data import MetaTensor

    from calibmonai.inference import CalibratedLogProbabilitiesd, ProbabilityMapsd

    z, y, w = make_data(41, 3, "over", False, n=600)
    ts = TemperatureScaling(3)
    ts.fit(sample_of(z, y, w))
    t_ref, _ = ref_temperature(z, y, w)
    logits = torch.as_tensor(z.T.reshape(3, 20, 30)).float()
    image = MetaTensor(torch.zeros(1, 20, 30))
    d = CalibratedLogProbabilitiesd(keys="pred", calibrator=ts.eval())({"pred": logits, "image": image})
    out = ProbabilityMapsd(keys="pred", num_classes=3)(d)
    p_ref = softmax(logits.double().numpy() / t_ref, axis=0)
    seg, conf, unc = ref_maps(p_ref, axis=0)
    np.testing.assert_allclose(out["prob"].numpy(), p_ref, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(out["seg"][0].numpy(), logits.numpy().argmax(0))  # TS keeps the label map
    np.testing.assert_array_equal(seg, logits.numpy().argmax(0))
    np.testing.assert_allclose(out["conf"][0].numpy(), conf, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["uncertainty"][0].numpy(), unc, rtol=0, atol=1e-5)
