import numpy as np
import pytest
import torch

import reference as ref
from calibmonai.losses import (
    METHODS,
    ConfidencePenaltyLoss,
    CrossEntropyLoss,
    ErroneousEntropyLoss,
    LabelSmoothingLoss,
    MarginLabelSmoothingLoss,
    SpatiallyVaryingLabelSmoothingLoss,
    get_loss,
    svls_kernel,
)

SHAPES = [(2, 3, 7, 6), (2, 4, 5, 4, 3), (1, 2, 9, 8), (3, 5, 4, 3, 4)]


def _data(shape, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g)
    return z, y


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("margin,alpha,penalty", [(10.0, 0.1, "l1"), (1.0, 0.5, "l1"), (2.0, 0.3, "l2"), (0.0, 1.0, "l2")])
def test_mbls_matches_numpy(shape, margin, alpha, penalty):
    z, y = _data(shape, scale=4.0)
    got = MarginLabelSmoothingLoss(margin=margin, alpha=alpha, penalty=penalty)(z, y.unsqueeze(1))
    np.testing.assert_allclose(got.item(), ref.mbls(z.numpy(), y.numpy(), margin, alpha, penalty), rtol=1e-10)


def test_mbls_penalty_is_from_largest_logit_not_ground_truth():
    # one voxel, logits (0, 5, 20), label 0: distances from the max are (20, 15, 0); margin 10 -> (10 + 5 + 0) / 3
    z = torch.tensor([[[0.0], [5.0], [20.0]]], dtype=torch.float64)
    y = torch.tensor([[0]])
    ce = torch.nn.functional.cross_entropy(z, y).item()
    got = MarginLabelSmoothingLoss(margin=10.0, alpha=1.0)(z, y).item()
    assert got == pytest.approx(ce + 5.0)
    got_l2 = MarginLabelSmoothingLoss(margin=10.0, alpha=1.0, penalty="l2")(z, y).item()
    assert got_l2 == pytest.approx(ce + (100.0 + 25.0) / 3)
    # one-sided: distances inside the margin cost nothing, also for l2
    z_in = torch.tensor([[[0.0], [1.0], [2.0]]], dtype=torch.float64)
    ce_in = torch.nn.functional.cross_entropy(z_in, y).item()
    assert MarginLabelSmoothingLoss(margin=10.0, alpha=1.0, penalty="l2")(z_in, y).item() == pytest.approx(ce_in)


@pytest.mark.parametrize("shape", SHAPES)
def test_mbls_dice_variant_matches_numpy(shape):
    z, y = _data(shape, scale=4.0)
    for include_background in (False, True):
        got = MarginLabelSmoothingLoss(margin=2.0, alpha=0.2, base="ce_dice", dice_include_background=include_background)(z, y)
        want = ref.mbls_dice(z.numpy(), y.numpy(), 2.0, 0.2, include_background)
        np.testing.assert_allclose(got.item(), want, rtol=1e-8)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("beta", [0.0, 0.1, 1.0])
def test_ecp_matches_numpy(shape, beta):
    z, y = _data(shape)
    got = ConfidencePenaltyLoss(beta=beta)(z, y)
    np.testing.assert_allclose(got.item(), ref.ecp(z.numpy(), y.numpy(), beta), rtol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5])
def test_ls_matches_numpy(shape, alpha):
    z, y = _data(shape)
    got = LabelSmoothingLoss(alpha=alpha)(z, y)
    np.testing.assert_allclose(got.item(), ref.ls(z.numpy(), y.numpy(), alpha), rtol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_svls_matches_numpy(shape, sigma):
    z, y = _data(shape)
    got = SpatiallyVaryingLabelSmoothingLoss(sigma=sigma)(z, y)
    want, q = ref.svls(z.numpy(), y.numpy(), sigma)
    np.testing.assert_allclose(got.item(), want, rtol=1e-10)
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0])
def test_svls_kernel_centre_half_and_normalised(dims, sigma):
    k = svls_kernel(dims, sigma, dtype=torch.float64)
    assert k.shape == (3,) * dims
    assert k[(1,) * dims].item() == pytest.approx(0.5, abs=1e-12)
    assert k.sum().item() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(k.numpy(), ref.svls_kernel(dims, sigma), rtol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("regularizer", ["entropy", "kl"])
@pytest.mark.parametrize("lam", [0.3, 1.0])
def test_meep_ce_matches_numpy(shape, regularizer, lam):
    z, y = _data(shape)
    got = ErroneousEntropyLoss("ce", lam=lam, regularizer=regularizer)(z, y)
    sign = -1 if regularizer == "entropy" else 1
    want = ref.ce(z.numpy(), y.numpy()) + sign * lam * ref.meep_term(z.numpy(), y.numpy(), regularizer)
    np.testing.assert_allclose(got.item(), want, rtol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("regularizer", ["entropy", "kl"])
def test_meep_dice_matches_numpy(shape, regularizer):
    z, y = _data(shape)
    got = ErroneousEntropyLoss("dice", lam=0.3, regularizer=regularizer)(z, y)
    sign = -1 if regularizer == "entropy" else 1
    want = ref.dice_loss(z.numpy(), y.numpy()) + sign * 0.3 * ref.meep_term(z.numpy(), y.numpy(), regularizer)
    np.testing.assert_allclose(got.item(), want, rtol=1e-8)


def test_meep_kl_hand_computed():
    # one voxel, 2 classes, p = (0.2, 0.8), label 0 (misclassified): KL(u||p) = -(log .2 + log .8)/2 - log 2
    z = torch.log(torch.tensor([[[0.2], [0.8]]], dtype=torch.float64))
    y = torch.tensor([[0]])
    term = -(np.log(0.2) + np.log(0.8)) / 2 - np.log(2)
    got = ErroneousEntropyLoss("ce", lam=1.0, regularizer="kl")(z, y).item()
    assert got == pytest.approx(-np.log(0.2) + term)
    ent = -(0.2 * np.log(0.2) + 0.8 * np.log(0.8))
    got = ErroneousEntropyLoss("ce", lam=1.0, regularizer="entropy")(z, y).item()
    assert got == pytest.approx(-np.log(0.2) - ent)


def test_meep_uses_any_callable_base_loss():
    z, y = _data((2, 3, 4, 4))
    calls = []

    def base(inp, tgt):
        calls.append(tuple(tgt.shape))
        return inp.sum() * 0.0 + 7.0

    got = ErroneousEntropyLoss(base, lam=0.0)(z, y)
    assert got.item() == pytest.approx(7.0) and calls == [(2, 1, 4, 4)]


# ---- identities -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_identities_reduce_to_ce(shape):
    z, y = _data(shape, scale=3.0)
    ce = torch.nn.functional.cross_entropy(z, y)
    for loss in (
        MarginLabelSmoothingLoss(margin=1e6, alpha=1.0),
        MarginLabelSmoothingLoss(margin=1e6, alpha=1.0, penalty="l2"),
        LabelSmoothingLoss(alpha=0.0),
        ConfidencePenaltyLoss(beta=0.0),
        CrossEntropyLoss(),
    ):
        torch.testing.assert_close(loss(z, y), ce, rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("base", ["ce", "dice"])
@pytest.mark.parametrize("regularizer", ["entropy", "kl"])
def test_meep_on_perfect_prediction_equals_base(shape, base, regularizer):
    _, y = _data(shape)
    z = torch.nn.functional.one_hot(y, shape[1]).movedim(-1, 1).double() * 2.0  # argmax == label everywhere
    loss = ErroneousEntropyLoss(base, lam=5.0, regularizer=regularizer)
    torch.testing.assert_close(loss(z, y), loss.base_loss(z, y.unsqueeze(1)), rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_svls_on_constant_label_equals_ce(shape):
    z, _ = _data(shape)
    y = torch.full((shape[0],) + shape[2:], shape[1] - 1)
    torch.testing.assert_close(
        SpatiallyVaryingLabelSmoothingLoss(sigma=1.5)(z, y), torch.nn.functional.cross_entropy(z, y), rtol=1e-12, atol=0
    )


def test_target_formats_agree():
    z, y = _data((2, 4, 5, 6))
    onehot = torch.nn.functional.one_hot(y, 4).movedim(-1, 1).float()
    for name in METHODS:
        loss = get_loss(name, num_classes=4, spatial_dims=2)
        a = loss(z, y)
        torch.testing.assert_close(loss(z, y.unsqueeze(1).float()), a, msg=name)
        torch.testing.assert_close(loss(z, onehot), a, msg=name)


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (MarginLabelSmoothingLoss, {"reduction": "none", "margin": 1.0}),
        (ConfidencePenaltyLoss, {"reduction": "none"}),
        (LabelSmoothingLoss, {"reduction": "none"}),
        (SpatiallyVaryingLabelSmoothingLoss, {"reduction": "none"}),
        (CrossEntropyLoss, {"reduction": "none"}),
    ],
)
def test_reductions_are_consistent(cls, kwargs):
    z, y = _data((2, 3, 4, 5, 3))
    m = cls(**kwargs)(z, y)
    assert m.shape == (2, 4, 5, 3)
    mean_kwargs = {**kwargs, "reduction": "mean"}
    sum_kwargs = {**kwargs, "reduction": "sum"}
    torch.testing.assert_close(cls(**mean_kwargs)(z, y), m.mean())
    torch.testing.assert_close(cls(**sum_kwargs)(z, y), m.sum())


# ---- gradients ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss",
    [
        MarginLabelSmoothingLoss(margin=1.0, alpha=0.5),
        MarginLabelSmoothingLoss(margin=1.0, alpha=0.5, penalty="l2"),
        MarginLabelSmoothingLoss(margin=1.0, alpha=0.5, base="ce_dice"),
        ConfidencePenaltyLoss(beta=0.5),
        LabelSmoothingLoss(alpha=0.3),
        SpatiallyVaryingLabelSmoothingLoss(sigma=1.0),
        ErroneousEntropyLoss("ce", lam=0.5, regularizer="entropy"),
        ErroneousEntropyLoss("ce", lam=0.5, regularizer="kl"),
        ErroneousEntropyLoss("dice", lam=0.5, regularizer="kl"),
    ],
    ids=lambda m: type(m).__name__ + getattr(m, "penalty", "") + getattr(m, "regularizer", ""),
)
@pytest.mark.parametrize("shape", [(1, 3, 3, 4), (1, 3, 2, 3, 2)])
def test_gradcheck(loss, shape):
    z, y = _data(shape, scale=2.0, seed=3)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: loss(t, y), (z,), eps=1e-6, atol=1e-5)


def test_mbls_gradient_hand_computed():
    # logits (0, 5, 20), margin 10, alpha 1, l1: penalty = (ReLU(20-10) + ReLU(15-10) + 0)/3.
    # d/dz0 = -1/3, d/dz1 = -1/3, d/dz2 = +2/3 (z2 is the max), plus the CE gradient p - onehot.
    z = torch.tensor([[[0.0], [5.0], [20.0]]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[0]])
    MarginLabelSmoothingLoss(margin=10.0, alpha=1.0)(z, y).backward()
    p = torch.softmax(z.detach(), 1)[0, :, 0]
    want = p - torch.tensor([1.0, 0, 0], dtype=torch.float64) + torch.tensor([-1 / 3, -1 / 3, 2 / 3], dtype=torch.float64)
    torch.testing.assert_close(z.grad[0, :, 0], want)


# ---- bad input ----------------------------------------------------------------------------------------------------

BAD = [
    ("spatial mismatch", torch.randn(2, 3, 4, 4), torch.zeros(2, 1, 4, 5), "does not match"),
    ("batch mismatch", torch.randn(2, 3, 4, 4), torch.zeros(3, 4, 4), "does not match"),
    ("label too large", torch.randn(2, 3, 4, 4), torch.full((2, 1, 4, 4), 3), r"\[0, 2\]"),
    ("negative label", torch.randn(2, 3, 4, 4), torch.full((2, 4, 4), -1), r"\[-1, -1\]"),
    ("fractional label", torch.randn(2, 3, 4, 4), torch.full((2, 1, 4, 4), 0.5), "not integers"),
    ("not one-hot", torch.randn(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5), "not one-hot"),
    ("1-D input", torch.randn(5), torch.zeros(5), "at least one spatial"),
    ("no spatial", torch.randn(2, 3), torch.zeros(2), "at least one spatial"),
    ("nan logits", torch.tensor(float("nan")).repeat(1, 2, 2, 2), torch.zeros(1, 2, 2), "non-finite"),
    ("inf logits", torch.tensor([float("inf"), 0.0]).view(1, 2, 1, 1).repeat(1, 1, 2, 2), torch.zeros(1, 2, 2), "non-finite"),
    ("one class", torch.randn(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), "at least 2 classes"),
]


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_value_error(name, case):
    _, z, y, match = case
    loss = get_loss(name, num_classes=max(z.shape[1] if z.ndim > 1 else 2, 2), spatial_dims=2)
    with pytest.raises(ValueError, match=match):
        loss(z, y)


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown method 'nope'; available methods: ce, ce_dice"):
        get_loss("nope")
    with pytest.raises(ValueError, match="needs num_classes"):
        get_loss("nacl")
    with pytest.raises(ValueError, match="penalty"):
        MarginLabelSmoothingLoss(penalty="l3")
    with pytest.raises(ValueError, match="reduction"):
        LabelSmoothingLoss(reduction="avg")
    with pytest.raises(ValueError, match="alpha"):
        LabelSmoothingLoss(alpha=1.5)
    with pytest.raises(ValueError, match="base_loss"):
        ErroneousEntropyLoss("focal")
    with pytest.raises(ValueError, match="sigma"):
        SpatiallyVaryingLabelSmoothingLoss(sigma=0)


def test_registry_lists_every_method():
    assert list(METHODS) == [
        "ce", "ce_dice", "dice", "focal", "ecp", "ls", "svls", "mbls", "mbls_l2", "mbls_dice",
        "meep_ce_entropy", "meep_ce_kl", "meep_dice_entropy", "meep_dice_kl", "nacl",
    ]  # fmt: skip
    assert get_loss("mbls", margin=3.0).margin == 3.0
    assert get_loss("mbls_l2").penalty == "l2"
    assert isinstance(get_loss("meep_dice_kl").base_loss, torch.nn.Module)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # the fused CPU kernel and MONAI's NACLLoss
def test_nacl_checks_the_classes_and_dims_it_was_built_for(dtype):
    from calibmonai.losses import get_loss

    z = torch.randn(2, 3, 8, 9, dtype=dtype)
    y = torch.randint(0, 3, (2, 1, 8, 9))
    assert torch.isfinite(get_loss("nacl", num_classes=3, spatial_dims=2)(z, y))
    for kwargs, words in (({"num_classes": 4, "spatial_dims": 2}, r"built for 4 classes and 2D inputs .* \(2, 3, 8, 9\) \(3 classes, 2D\)"),
                          ({"num_classes": 3, "spatial_dims": 3}, r"built for 3 classes and 3D inputs .* \(3 classes, 2D\)")):  # fmt: skip
        with pytest.raises(ValueError, match=words):
            get_loss("nacl", **kwargs)(z, y)
    with pytest.raises(ValueError, match=r"\(3, 8, 9\) \(8 classes, 1D\); logits are \(B, C, \*spatial\): is the batch dimension missing\?"):
        get_loss("nacl", num_classes=3, spatial_dims=2)(z[0], y[0])


@pytest.mark.parametrize("name", ["ce", "mbls", "meep_ce_entropy", "ce_dice"])
def test_unbatched_input_is_named(name):
    from calibmonai.losses import get_loss

    with pytest.raises(ValueError, match=r"an unbatched \(C, \*spatial\) input needs input\[None\]"):
        get_loss(name)(torch.randn(3, 8, 9), torch.zeros(1, 8, 9, dtype=torch.long))
