"""Where calibmonai follows, or knowingly departs from, the authors' public code (issue 11).

Each convention has a hand-computed case. The reference code: the MbLS/NACL segmentation code
(github.com/Bala93/MarginLoss: ``ECELoss``, ``ClasswiseECELoss``, ``LogitMarginDICEL1``, ``CEDiceLoss``, ``FocalLoss``,
``LogitMarginL2``) and MEEP's (github.com/agosl/Maximum-Entropy-on-Erroneous-Predictions: ``entropy_coefficient``,
``KL_uniform``), transcribed in numpy in ``tests/reference.py``.
"""

import math

import numpy as np
import pytest
import torch

import reference as ref
from calibmonai.handlers import ClasswiseCalibrationError
from calibmonai.losses import ErroneousEntropyLoss, MarginLabelSmoothingLoss, erroneous_regularizer, fused_disabled, get_loss
from calibmonai.losses.utils import first_argmax
from calibmonai.metrics import CalibrationMetrics

BACKENDS = ["torch", "numba"]


def _value(loss, z, y, fused):
    """The loss on float32 CPU logits: the fused kernel (``fused``) or the torch implementation."""
    if fused:
        return loss(z.float(), y).item()
    with fused_disabled():
        return loss(z.double(), y).item()


# ---- 1. ties: the prediction is the first index of the maximum ------------------------------------------------


def test_first_argmax_is_the_lowest_tied_index():
    x = torch.tensor([[[1.0, 0.0, 2.0, 5.0]], [[1.0, 3.0, 2.0, 5.0]], [[0.5, 3.0, 2.0, 5.0]]]).permute(1, 0, 2)  # (1, 3, 4)
    assert first_argmax(x).tolist() == [[0, 1, 0, 0]]
    assert torch.equal(first_argmax(x), x.argmax(1))
    q = torch.randint(0, 3, (2, 5, 7, 6)).float()  # many ties
    assert torch.equal(first_argmax(q, dim=1), torch.from_numpy(q.numpy().argmax(1)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ece_all_logits_equal_predicts_class_0(backend):
    # the case: every voxel ties over 4 classes -> predicted 0, labels 1,2,3,1 are all wrong; conf 1/4
    z = torch.zeros(1, 4, 1, 4)
    y = torch.tensor([1, 2, 3, 1]).view(1, 1, 1, 4)
    assert CalibrationMetrics(("ece",), softmax=True, backend=backend)(z, y).item() == pytest.approx(0.25, abs=1e-6)
    # the same as stored probabilities, and a label 0 voxel (counted with foreground="none") is correct
    p = torch.full((1, 4, 1, 4), 0.25)
    assert CalibrationMetrics(("ece",), backend=backend)(p, y).item() == pytest.approx(0.25, abs=1e-7)
    y0 = torch.tensor([0, 2, 3, 1]).view(1, 1, 1, 4)
    # bin of 0.25: correct 1 of 4 -> |1 - 4 * 0.25| / 4 = 0
    assert CalibrationMetrics(("ece",), foreground="none", backend=backend)(p, y0).item() == pytest.approx(0.0, abs=1e-7)


def _tie_case():
    """4 voxels, 3 classes: ties between the label and a lower class are wrong, the lowest tied class is right."""
    p = torch.tensor(
        [
            [0.4, 0.4, 0.2],  # label 1, tie 0/1 -> predicted 0: wrong, conf .4
            [0.4, 0.4, 0.2],  # label 0: right, conf .4
            [0.1, 0.45, 0.45],  # label 2, tie 1/2 -> predicted 1: wrong, conf .45
            [0.2, 0.1, 0.7],  # label 2: right, conf .7
        ]
    ).T.reshape(1, 3, 4, 1)
    y = torch.tensor([1, 0, 2, 2]).view(1, 1, 4, 1)
    return p, y


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("softmax", [False, True])
def test_ece_ties_hand_computed(backend, softmax):
    p, y = _tie_case()
    m = CalibrationMetrics(("ece",), num_bins=2, foreground="none", softmax=softmax, backend=backend)
    # bin [0, .5): 1 correct of 3, conf sum 1.25 -> 0.25; bin [.5, 1]: 1 correct, conf .7 -> 0.3; (0.25 + 0.3) / 4
    # (counting ties as correct gave (1.75 + 0.3) / 4 = 0.5125)
    got = m(torch.log(p) if softmax else p, y).item()
    assert got == pytest.approx(0.1375, abs=1e-6)
    rel = m.reliability()
    assert rel["accuracy"][0].item() == pytest.approx(1 / 3) and rel["accuracy"][1].item() == 1.0
    pp, yy = p[0].double().numpy().reshape(3, -1), y.numpy().reshape(-1)
    assert got == pytest.approx(ref.authors_ece(pp, yy, 2), abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_label_or_pred_selection_uses_the_same_prediction(backend):
    # background 0. v0: label 0, tie 0/1 -> predicted 0: not selected. v1: label 0, predicted 1: selected (wrong,
    # conf .7). v2: label 1, tie -> predicted 0: selected (wrong, conf .5). ECE (2 bins) = |0 - 1.2| / 2
    p1 = torch.tensor([0.5, 0.7, 0.5])
    p = torch.stack([1 - p1, p1]).view(1, 2, 3, 1)
    y = torch.tensor([0, 0, 1]).view(1, 1, 3, 1)
    m = CalibrationMetrics(("ece", "nll"), num_bins=2, foreground="label_or_pred", backend=backend)
    ece, nll = m(p, y)[0].tolist()
    assert ece == pytest.approx(0.6, abs=1e-6)
    assert nll == pytest.approx(-(math.log(0.3) + math.log(0.5)) / 2, abs=1e-6)


@pytest.mark.parametrize("softmax", [False, True])
def test_quantised_probabilities_backends_agree_with_first_index_rule(softmax):
    # probabilities in steps of 1/8 (a stored, quantised map): about a sixth of the voxels tie at the maximum
    g = torch.Generator().manual_seed(0)
    cuts = torch.randint(0, 9, (2, 3, 20, 30), generator=g).sort(dim=1).values
    edges = torch.cat([torch.zeros(2, 1, 20, 30, dtype=torch.long), cuts, torch.full((2, 1, 20, 30), 8)], dim=1)
    p = (edges[:, 1:] - edges[:, :-1]).float() / 8.0  # (2, 4, 20, 30), sums to 1
    y = torch.randint(0, 4, (2, 1, 20, 30), generator=g)
    pn = p.double().numpy()
    ties = (pn == pn.max(1, keepdims=True)).sum(1) > 1
    assert ties.mean() > 0.12
    x = torch.log(p.clamp_min(1e-30)) if softmax else p
    got = {b: CalibrationMetrics(("ece",), foreground="none", softmax=softmax, backend=b)(x, y)[:, 0] for b in BACKENDS}
    torch.testing.assert_close(got["torch"], got["numba"], atol=1e-6, rtol=0)
    for b in range(2):
        pb, yb = pn[b].reshape(4, -1), y[b].numpy().reshape(-1)
        want = ref.ece(pb, yb, 15, np.ones(yb.size, bool))  # numpy's argmax: first index
        assert got["numba"][b].item() == pytest.approx(want, abs=1e-6)
        # counting a tie with the label as correct (the old rule) gives another value on such a map
        old_correct = pb[yb, np.arange(yb.size)] >= pb.max(0)
        assert old_correct.sum() > (pb.argmax(0) == yb).sum()
        assert abs(ref.ece(pb, yb, 15, np.ones(yb.size, bool), correct=old_correct) - want) > 1e-3


def _meep_tie_case():
    """4 voxels, 3 classes; misclassified: v0 (tie 0/1, label 1 -> predicted 0) and v2 (all equal, label 2)."""
    z = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0]]).T.reshape(1, 3, 2, 2)
    y = torch.tensor([1, 0, 2, 0]).view(1, 2, 2)
    e = math.e
    p0 = [e / (2 * e + 1), e / (2 * e + 1), 1 / (2 * e + 1)]
    h0 = -sum(q * math.log(q) for q in p0)
    kl0 = -sum(math.log(q) for q in p0) / 3 - math.log(3)
    ce = (-math.log(p0[1]) - math.log(p0[0]) + math.log(3) - math.log(e * e / (e * e + 2))) / 4
    return z, y, {"entropy": (h0 + math.log(3)) / 2, "kl": (kl0 + 0.0) / 2}, ce


@pytest.mark.parametrize("regularizer", ["entropy", "kl"])
@pytest.mark.parametrize("fused", [False, True])
def test_meep_misclassified_mask_uses_the_first_index(regularizer, fused):
    z, y, term, ce = _meep_tie_case()
    assert erroneous_regularizer(z.double(), y, regularizer).item() == pytest.approx(term[regularizer], rel=1e-10)
    loss = ErroneousEntropyLoss("ce", lam=0.3, regularizer=regularizer)
    sign = -1.0 if regularizer == "entropy" else 1.0
    assert _value(loss, z, y, fused) == pytest.approx(ce + sign * 0.3 * term[regularizer], rel=2e-6)
    # the Dice base sees the same mask (the fused first pass counts the misclassified voxels)
    dice = ErroneousEntropyLoss("dice", lam=0.3, regularizer=regularizer)
    want = ref.dice_loss(z.double().numpy(), y.numpy()) + sign * 0.3 * term[regularizer]
    assert _value(dice, z, y, fused) == pytest.approx(want, rel=2e-6)


# ---- 2. MbLS + Dice: the reference leaves the background out of the Dice term ----------------------------------


@pytest.mark.parametrize("fused", [False, True])
def test_mbls_dice_background_hand_computed(fused):
    # equal logits (p = 1/2), labels 0,0,0,1: CE = log 2, margin penalty 0.
    # Dice loss of class 1: 1 - (2 * .5 + s) / (2 + 1 + s); of class 0: 1 - (2 * 1.5 + s) / (2 + 3 + s); s = 1e-5
    z = torch.zeros(1, 2, 2, 2)
    y = torch.tensor([0, 0, 0, 1]).view(1, 1, 2, 2)
    s = 1e-5
    d1, d0 = 1 - (1 + s) / (3 + s), 1 - (3 + s) / (5 + s)
    without_bg, with_bg = math.log(2) + d1, math.log(2) + (d0 + d1) / 2
    assert _value(get_loss("mbls_dice"), z, y, fused) == pytest.approx(without_bg, rel=1e-6)  # reference default
    assert _value(MarginLabelSmoothingLoss(base="ce_dice"), z, y, fused) == pytest.approx(without_bg, rel=1e-6)
    assert _value(get_loss("mbls_dice", dice_include_background=True), z, y, fused) == pytest.approx(with_bg, rel=1e-6)
    # the reference's plain CE + Dice baseline keeps the background
    assert _value(get_loss("ce_dice"), z, y, fused) == pytest.approx(with_bg, rel=1e-6)


@pytest.mark.parametrize("include_background", [False, True])
def test_mbls_dice_fused_value_and_gradient_match_torch(include_background):
    g = torch.Generator().manual_seed(4)
    z = torch.randn(2, 4, 9, 11, generator=g) * 3
    y = torch.randint(0, 4, (2, 9, 11), generator=g)
    loss = get_loss("mbls_dice", margin=2.0, dice_include_background=include_background)
    x = z.clone().requires_grad_(True)
    v = loss(x, y)
    v.backward()
    with fused_disabled():
        x64 = z.double().requires_grad_(True)
        want = loss(x64, y)
        want.backward()
    assert v.item() == pytest.approx(want.item(), rel=2e-6)
    assert v.item() == pytest.approx(ref.mbls_dice(z.double().numpy(), y.numpy(), 2.0, 0.1, include_background), rel=2e-6)
    np.testing.assert_allclose(x.grad.numpy(), x64.grad.numpy(), atol=2e-6 * float(x64.grad.abs().max()))


# ---- 3. class-wise ECE: all C classes (default) or classes 0 .. highest label (the reference) ---------------------


def _cece_case():
    """4 classes, class 3 absent; v3 is background (not selected with foreground="label")."""
    p = torch.tensor(
        [[0.1, 0.6, 0.2, 0.1], [0.2, 0.3, 0.4, 0.1], [0.1, 0.7, 0.1, 0.1], [0.7, 0.1, 0.1, 0.1]]
    ).T.reshape(1, 4, 4, 1)
    y = torch.tensor([1, 2, 1, 0]).view(1, 1, 4, 1)
    return p, y


@pytest.mark.parametrize("backend", BACKENDS)
def test_cece_class_set_hand_computed(backend):
    p, y = _cece_case()
    # 2 bins, 3 selected voxels. sum over bins of |hits - sum p|: class 0: |0 - .4| = .4; class 1: |2 - 1.3| + |0 - .3|
    # = 1.0; class 2: |1 - .7| = .3; class 3: |0 - .3| = .3. Each / 3, then the mean over the class set.
    want = {
        ("all", True): (0.4 + 1.0 + 0.3 + 0.3) / 3 / 4,
        ("up_to_max_label", True): (0.4 + 1.0 + 0.3) / 3 / 3,
        ("all", False): (1.0 + 0.3 + 0.3) / 3 / 3,
        ("up_to_max_label", False): (1.0 + 0.3) / 3 / 2,
    }
    for (classes, bg), value in want.items():
        m = CalibrationMetrics(("cece",), num_bins=2, cece_classes=classes, include_background=bg, backend=backend)
        assert m(p, y).item() == pytest.approx(value, abs=1e-6), (classes, bg)
    # the reference code's ClasswiseECELoss on the foreground voxels
    sel = y.view(-1) != 0
    pp, yy = p[0].double().numpy().reshape(4, -1)[:, sel.numpy()], y.view(-1)[sel].numpy()
    assert ref.authors_cece(pp, yy, 2) == pytest.approx(want[("up_to_max_label", True)], abs=1e-7)


def test_cece_class_set_pooled_and_random_cases_match_the_reference():
    p, y = _cece_case()
    # a second case that has label 3: pooled over both, the highest label is 3, so both class sets agree
    p2 = torch.tensor([[0.1, 0.1, 0.1, 0.7], [0.1, 0.1, 0.1, 0.7], [0.7, 0.1, 0.1, 0.1], [0.7, 0.1, 0.1, 0.1]]).T.reshape(1, 4, 4, 1)
    y2 = torch.tensor([3, 1, 0, 0]).view(1, 1, 4, 1)
    pooled = {}
    for classes in ("all", "up_to_max_label"):
        m = CalibrationMetrics(("cece",), num_bins=2, cece_classes=classes)
        per_case = m(torch.cat([p, p2]), torch.cat([y, y2]))[:, 0]
        pooled[classes] = m.aggregate("pooled")["cece"]
        if classes == "up_to_max_label":
            assert per_case[0].item() == pytest.approx(1.7 / 9, abs=1e-6)
    assert pooled["all"] == pytest.approx(pooled["up_to_max_label"], abs=1e-12)
    # random cases lacking their highest classes, against the transcription of the reference
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 5, 8, 9, generator=g, dtype=torch.float64) * 2
    lab = torch.randint(0, 3, (3, 1, 8, 9), generator=g)  # classes 3 and 4 absent
    lab[1][lab[1] == 2] = 1  # case 1: highest label 1
    q = z.softmax(1).float()
    got = CalibrationMetrics(("cece",), cece_classes="up_to_max_label")(q, lab)[:, 0]
    default = CalibrationMetrics(("cece",))(q, lab)[:, 0]
    for b in range(3):
        sel = lab[b].view(-1) != 0
        pb = q[b].double().numpy().reshape(5, -1)[:, sel.numpy()]
        want = ref.authors_cece(pb, lab[b].view(-1)[sel].numpy())
        assert got[b].item() == pytest.approx(want, abs=1e-6)
        assert abs(default[b].item() - want) > 1e-3  # the default (all 5 classes) differs on such a case


def test_cece_class_set_argument_checks_and_handler():
    with pytest.raises(ValueError, match="cece_classes"):
        CalibrationMetrics(cece_classes="present")
    handler = ClasswiseCalibrationError(num_bins=2, cece_classes="up_to_max_label")
    p, y = _cece_case()
    handler.metric_fn(p, y)
    assert handler.metric_fn.cece_classes == "up_to_max_label"
    assert handler.metric_fn.aggregate().item() == pytest.approx((0.4 + 1.0 + 0.3) / 3 / 3, abs=1e-6)


# ---- 4. MEEP: the reference's binary forms equal the Shannon forms for 2 classes -------------------------------


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("regularizer", ["entropy", "kl"])
def test_meep_two_classes_equals_the_binary_reference(regularizer, fused):
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 2, 12, 13, generator=g) * 2
    y = torch.randint(0, 2, (2, 12, 13), generator=g)
    got = _value(ErroneousEntropyLoss("ce", lam=0.3, regularizer=regularizer), z, y, fused)
    want = ref.authors_meep_ce(z.double().numpy(), y.numpy(), 0.3, regularizer)
    # KL: calibmonai's KL(u || p) is the reference's mean_k(-log p_k) less log K (a constant, same gradient)
    shift = -0.3 * math.log(2) if regularizer == "kl" else 0.0
    assert got == pytest.approx(want + shift, rel=1e-5)


def test_meep_more_than_two_classes_differs_from_the_binary_reference():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 4, 10, 10, generator=g) * 2
    y = torch.randint(0, 4, (1, 10, 10), generator=g)
    ours = _value(ErroneousEntropyLoss("ce", lam=0.3), z, y, False)
    theirs = ref.authors_meep_ce(z.double().numpy(), y.numpy(), 0.3, "entropy")
    assert abs(ours - theirs) > 0.05  # documented: per-class binary forms vs the multi-class Shannon forms
    # hand case, 3 classes, one misclassified voxel with p = (1/3, 1/3, 1/3): Shannon entropy log 3; the reference's
    # average of binary entropies h(1/3) = log 3 - 2/3 log 2
    z1 = torch.zeros(1, 3, 1, 1)
    y1 = torch.tensor([[[1]]])
    assert erroneous_regularizer(z1.double(), y1).item() == pytest.approx(math.log(3))
    binary = ref.authors_meep_ce(z1.double().numpy(), y1.numpy(), 1.0, "entropy")
    base = ref.authors_meep_ce(z1.double().numpy(), y1.numpy(), 0.0, "entropy")
    assert base - binary == pytest.approx(math.log(3) - 2 / 3 * math.log(2), rel=1e-6)


# ---- 5. documented constants: focal's mean over classes, the MbLS L2 hinge, MEEP-KL's log K ----------------------


@pytest.mark.parametrize("fused", [False, True])
def test_documented_constants_hand_computed(fused):
    # focal, gamma 2, equal logits over 4 classes: the reference's per-voxel -(1 - 1/4)^2 log(1/4); MONAI's mean
    # also runs over the classes, so calibmonai's value is 1/4 of it
    z = torch.zeros(1, 4, 1, 2)
    y = torch.tensor([[[1, 3]]])
    focal_ref = -((0.75) ** 2) * math.log(0.25)
    assert _value(get_loss("focal", gamma=2.0), z, y, fused) == pytest.approx(focal_ref / 4, rel=1e-6)
    # MbLS l2: logits (0, 1, 2) and margin 10 lie inside the margin: calibmonai's one-sided hinge adds nothing,
    # the reference's ReLU((d - m)^2) adds alpha * ((2-10)^2 + (1-10)^2 + (0-10)^2) / 3
    z3 = torch.tensor([0.0, 1.0, 2.0]).view(1, 3, 1, 1)
    y3 = torch.tensor([[[2]]])
    ce3 = -math.log(math.exp(2) / (1 + math.e + math.exp(2)))
    ours = _value(get_loss("mbls_l2", alpha=0.1), z3, y3, fused)
    assert ours == pytest.approx(ce3, rel=1e-6)
    assert ref.authors_mbls_l2(z3.double().numpy(), y3.numpy(), 10.0, 0.1) - ours == pytest.approx(0.1 * 245 / 3, rel=1e-6)
    # MEEP-KL: equal logits over 3 classes, label 1 -> predicted 0, misclassified; KL(u || p) = 0, the reference's
    # term mean_k(-log p_k) = log 3
    z4 = torch.zeros(1, 3, 1, 1)
    y4 = torch.tensor([[[1]]])
    ours = _value(get_loss("meep_ce_kl"), z4, y4, fused)
    assert ours == pytest.approx(math.log(3), rel=1e-6)
    theirs = ref.authors_meep_ce(z4.double().numpy(), y4.numpy(), 0.3, "kl")
    assert theirs == pytest.approx(_binary_ce(1 / 3) + 0.3 * math.log(3), rel=1e-6)


def _binary_ce(q: float) -> float:
    """The reference's per-class binary CE of uniform p = q over 3 classes with a one-hot label."""
    return (-math.log(q) - 2 * math.log(1 - q)) / 3
