"""The function forms beside the losses (the MbLS penalty, MEEP's regulariser, SVLS's soft labels, the fused
terms): hand-computed values, and a ValueError naming the argument for each bad input (they used to return a number
or raise torch's own error deep inside)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from calibmonai.losses import erroneous_regularizer, get_loss, margin_penalty, svls_kernel, svls_soft_labels
from calibmonai.losses.fused import FusedTerms, fused_softmax_loss


def test_margin_penalty_hand_computed():
    z = torch.tensor([0.0, 3.0, 10.0]).view(1, 3, 1, 1)  # distances to the largest logit: 10, 7, 0
    assert margin_penalty(z, 5.0).item() == pytest.approx((5 + 2 + 0) / 3)
    assert margin_penalty(z, 5.0, "l2").item() == pytest.approx((25 + 4 + 0) / 3)
    assert margin_penalty(z, 10).item() == 0.0
    assert margin_penalty(z, 0.0).shape == (1, 1, 1)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda z: margin_penalty(z, 1.0, "l3"), r"penalty must be 'l1' or 'l2', got 'l3'"),
        (lambda z: margin_penalty(z, float("nan")), "margin must be a finite number"),
        (lambda z: margin_penalty(z, -1.0), r"margin must be >= 0, got -1\.0"),
        (lambda z: margin_penalty(z[:, :1], 1.0), r"at least 2 classes.*\(2, 1, 4, 4\)"),
        (lambda z: margin_penalty(z[:, :, 0, 0], 1.0), r"\(B, C, \*spatial\).*\(2, 3\)"),
        (lambda z: margin_penalty(z.long(), 1.0), "floating point logits"),
        (lambda z: margin_penalty(z.masked_fill(z > 0, float("nan")), 1.0), "non-finite logit"),
        (lambda z: margin_penalty(z[:0], 1.0), "holds no voxel"),
    ],
)
def test_margin_penalty_refuses(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.randn(2, 3, 4, 4))


def test_erroneous_regularizer_hand_computed():
    # voxel 0: tied logits, predicted class 0 (first index), label 1 -> misclassified, p = (1/2, 1/2);
    # voxel 1: predicted 0, label 0 -> correct. Entropy of the misclassified voxel: log 2; KL(u || p) = log 2 - log 2.
    z = torch.tensor([[0.0, 2.0], [0.0, 0.0]]).view(1, 2, 2)
    y = torch.tensor([[1, 0]])
    assert erroneous_regularizer(z, y, "entropy").item() == pytest.approx(math.log(2))
    assert erroneous_regularizer(z, y, "kl").item() == pytest.approx(0.0, abs=1e-7)
    # the (B, 1, *spatial) and one-hot forms of the same labels give the same value
    assert erroneous_regularizer(z, y[:, None], "entropy").item() == pytest.approx(math.log(2))
    onehot = torch.nn.functional.one_hot(y, 2).movedim(-1, 1)
    assert erroneous_regularizer(z, onehot, "entropy").item() == pytest.approx(math.log(2))
    # no voxel misclassified: exactly 0
    assert erroneous_regularizer(z, torch.tensor([[0, 0]])).item() == 0.0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda z, t: erroneous_regularizer(z, t[0]), r"target shape \(4, 4\) does not match input shape \(2, 3, 4, 4\)"),
        (lambda z, t: erroneous_regularizer(z, t[:, None, None]), r"target shape \(2, 1, 1, 4, 4\) does not match"),
        (lambda z, t: erroneous_regularizer(z, t + 7), r"labels must lie in \[0, 2\] for 3 classes"),
        (lambda z, t: erroneous_regularizer(z, t - 1), r"labels must lie in \[0, 2\] for 3 classes, got values in \[-1"),
        (lambda z, t: erroneous_regularizer(z.masked_fill(z > 0, float("nan")), t), "non-finite logit"),
        (lambda z, t: erroneous_regularizer(z, t, eps=2.0), r"eps must lie in \(0, 1\), got 2\.0"),
        (lambda z, t: erroneous_regularizer(z, t, eps=0.0), r"eps must lie in \(0, 1\), got 0\.0"),
        (lambda z, t: erroneous_regularizer(z, t, "kld"), "regularizer must be 'entropy' or 'kl'"),
        (lambda z, t: erroneous_regularizer(z.long(), t), "floating point logits"),
        (lambda z, t: erroneous_regularizer(z, t, log_prob=z[:, :2]), r"log_prob must be log_softmax\(input, 1\) of the input's shape \(2, 3, 4, 4\), got \(2, 2, 4, 4\)"),
    ],
)
def test_erroneous_regularizer_refuses(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4)))


def _svls_reference(labels: np.ndarray, num_classes: int, sigma: float) -> np.ndarray:
    """SVLS soft labels written from the paper's definition, for one 2D image: a Gaussian 3x3 kernel whose centre is
    the sum of the other weights, normalised; replicate padding; a weighted vote of the neighbours' labels."""
    w = np.array([[math.exp(-(dy * dy + dx * dx) / (2 * sigma**2)) for dx in (-1, 0, 1)] for dy in (-1, 0, 1)])
    w[1, 1] = 0.0
    w[1, 1] = w.sum()
    w /= w.sum()
    h, wd = labels.shape
    out = np.zeros((num_classes, h, wd))
    for i in range(h):
        for j in range(wd):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    out[labels[min(max(i + dy, 0), h - 1), min(max(j + dx, 0), wd - 1)], i, j] += w[dy + 1, dx + 1]
    return out


def test_svls_soft_labels_against_the_definition():
    labels = torch.tensor([[0, 0, 2, 2], [0, 1, 1, 2], [0, 0, 1, 2]])
    soft = svls_soft_labels(labels[None], 3, svls_kernel(2, 1.5, torch.float64))
    np.testing.assert_allclose(soft[0].numpy(), _svls_reference(labels.numpy(), 3, 1.5), atol=1e-12)
    # an isolated voxel keeps half of its own label (the centre weight is exactly 0.5)
    lone = torch.zeros(1, 3, 3, dtype=torch.long)
    lone[0, 1, 1] = 1
    assert svls_soft_labels(lone, 2, svls_kernel(2, 1.0, torch.float64))[0, 1, 1, 1].item() == pytest.approx(0.5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda y, k: svls_soft_labels(y + 5, 3, k), r"labels must lie in \[0, 2\] for 3 classes, got values in \[5"),
        (lambda y, k: svls_soft_labels(y - 1, 3, k), r"got values in \[-1"),
        (lambda y, k: svls_soft_labels(y.float(), 3, k), "labels must be an integer tensor"),
        (lambda y, k: svls_soft_labels(y[:, None], 3, k), r"kernel must be a floating \(3, 3, 3\) tensor for labels of shape \(2, 1, 4, 4\)"),
        (lambda y, k: svls_soft_labels(y[0, 0], 3, k), r"\(B, \*spatial\) with 2 or 3 spatial dimensions, got shape \(4,\)"),
        (lambda y, k: svls_soft_labels(y, 2.5, k), "num_classes must be an integer >= 2, got 2.5"),
        (lambda y, k: svls_soft_labels(y, 3, k.long()), "kernel must be a floating"),
        (lambda y, k: svls_kernel(2.0), "spatial_dims must be the integer 2 or 3, got 2.0"),
        (lambda y, k: svls_kernel(4), "spatial_dims must be the integer 2 or 3, got 4"),
        (lambda y, k: svls_kernel(2, dtype=torch.int64), "dtype must be a floating torch dtype"),
    ],
)
def test_svls_soft_labels_refuse(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.randint(0, 3, (2, 4, 4)), svls_kernel(2))


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"meep_mode": "foo"}, "meep_mode must be 'entropy' or 'kl', got 'foo'"),
        ({"svls_sigma": 0.0}, "svls_sigma must be > 0"),
        ({"eps": 0.0}, r"eps must lie in \(0, 1\), got 0\.0"),
        ({"ce": float("nan")}, "ce must be a finite number, got nan"),
        ({"hinge": "0.1"}, "hinge must be a finite number, got '0.1'"),
        ({"focal_gamma": -1.0}, "focal_gamma and margin >= 0"),
    ],
)
def test_fused_terms_refuse_what_the_kernels_cannot_take(changes, match):
    with pytest.raises(ValueError, match=match):
        FusedTerms(**changes)


def test_fused_softmax_loss_needs_fused_terms():
    with pytest.raises(ValueError, match="terms must be a FusedTerms, got NoneType"):
        fused_softmax_loss(torch.randn(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), None)


def test_registry_checks_focal_weight_and_nacl_geometry():
    with pytest.raises(ValueError, match=r"focal: alpha .* must lie in \[0, 1\], got -3\.0"):
        get_loss("focal", alpha=-3.0)
    assert get_loss("focal", alpha=0.25) is not None
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2, got 1.5"):
        get_loss("nacl", num_classes=1.5, spatial_dims=2)
    with pytest.raises(ValueError, match="spatial_dims must be the integer 2 or 3, got 1"):
        get_loss("nacl", num_classes=3, spatial_dims=1)
    assert get_loss("nacl", num_classes=np.int64(3), spatial_dims=2) is not None


def test_ecp_and_ls_terms_hand_computed():
    from calibmonai.losses import ConfidencePenaltyLoss, LabelSmoothingLoss, fused_disabled, mean_class_entropy, uniform_cross_entropy

    # 2 classes, p = (1/4, 3/4) (logits 0 and log 3); and a uniform 4-class voxel (p_k = 1/4)
    z = torch.tensor([0.0, math.log(3.0)], dtype=torch.float64).view(1, 2, 1)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / 2
    u = -(math.log(0.25) + math.log(0.75)) / 2
    assert mean_class_entropy(z).item() == pytest.approx(h)
    assert uniform_cross_entropy(z).item() == pytest.approx(u)
    flat = torch.zeros(1, 4, 1, 1)
    assert mean_class_entropy(flat).item() == pytest.approx(math.log(4) / 4, rel=1e-6)
    assert uniform_cross_entropy(flat).item() == pytest.approx(math.log(4), rel=1e-6)
    # the losses are CE minus / mixed with these terms (label 1: CE = -log 3/4)
    y = torch.tensor([[1]])
    with fused_disabled():
        assert ConfidencePenaltyLoss(beta=0.5)(z, y).item() == pytest.approx(-math.log(0.75) - 0.5 * h)
        assert LabelSmoothingLoss(alpha=0.2)(z, y).item() == pytest.approx(0.8 * -math.log(0.75) + 0.2 * u)
    for term in (mean_class_entropy, uniform_cross_entropy):
        with pytest.raises(ValueError, match=r"at least 2 classes.*\(1, 1, 3\)"):
            term(torch.zeros(1, 1, 3))
        with pytest.raises(ValueError, match="non-finite logit"):
            term(torch.tensor([[[float("nan")], [0.0]]]))
