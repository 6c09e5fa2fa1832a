"""Hand-computed values of :func:`calibmonai.evaluation.evaluate_run` that pin its soft-reference scores
(``ref_mad`` per case, ``ref_ece`` in the summary) and that ``cece_classes`` reaches the calibration metric.

The network is a 1x1x1 convolution, the preprocessing the identity and the inferer ``n(x)``, so the predicted
probabilities are chosen voxel by voxel."""

import csv
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from calibmonai.evaluation import evaluate_run


def _save(net: torch.nn.Module, path) -> str:
    torch.save({"model": net.state_dict()}, path)
    return str(path)


def _logit(p):
    p = torch.tensor(p, dtype=torch.float32)
    return torch.log(p / (1 - p))


def test_reference_mad_and_reference_ece_hand_computed(tmp_path):
    # logits (0, x): p(class 1) = sigmoid(x) = the voxel's p when the image is logit(p)
    net = torch.nn.Conv3d(1, 2, 1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
        net.weight[1, 0] = 1.0
    ckpt = _save(net, tmp_path / "model.pt")
    p1 = [0.9, 0.6, 0.3, 0.2]
    image = _logit(p1).reshape(1, 2, 2, 1)
    label = torch.tensor([1.0, 1.0, 0.0, 1.0]).reshape(1, 2, 2, 1)
    q1 = np.array([0.8, 0.55, 0.0, 0.6], dtype=np.float32).reshape(2, 2, 1)
    ref = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([1 - q1, q1], -1), np.eye(4)), str(ref))  # (x, y, z, class), RAS
    items = [{"case": "a", "image": image, "label": label, "probs": str(ref)}]
    out = tmp_path / "eval"
    summary = evaluate_run(net, ckpt, items, lambda d: d, lambda x, n: n(x), 2, ["background", "fg"], str(out), num_bins=2)

    # brain voxels: reference background q0 = 1 - q1 = [0.2, 0.45, 1.0, 0.4] < 0.5 -> voxels 0, 1, 3 (not voxel 2).
    # ref_mad: per voxel the mean over the 2 classes of |p_k - q_k| (both classes give |p1 - q1|), averaged over
    # the brain voxels: (|0.9 - 0.8| + |0.6 - 0.55| + |0.2 - 0.6|) / 3 = (0.1 + 0.05 + 0.4) / 3 = 0.183333.
    # (brain "> 0.5" would keep voxel 2 only: |0.3 - 0| = 0.3; a class *sum* instead of the mean doubles it: 0.3667)
    expected_mad = (0.1 + 0.05 + 0.4) / 3
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    assert float(rows[0]["ref_mad"]) == pytest.approx(expected_mad, abs=2e-6)
    assert summary["ref_mad"] == pytest.approx(expected_mad, abs=1e-6)

    # ref_ece: every class probability of the brain voxels, binned by p into num_bins = 2 bins [0, .5), [.5, 1]:
    #   p = [0.1, 0.4, 0.8 | 0.9, 0.6, 0.2]  (class 0 | class 1 of voxels 0, 1, 3)
    #   q = [0.2, 0.45, 0.4 | 0.8, 0.55, 0.6]
    #   bin 0: p 0.1, 0.4, 0.2 (sum 0.7), q 0.2, 0.45, 0.6 (sum 1.25): |1.25 - 0.7| = 0.55
    #   bin 1: p 0.8, 0.9, 0.6 (sum 2.3), q 0.4, 0.8, 0.55 (sum 1.75): |1.75 - 2.3| = 0.55
    #   ref_ece = (0.55 + 0.55) / 6 = 0.183333
    # (|total| instead of per-bin: |3 - 3| = 0; bins by p * (B - 1): all in bin 0, 0; round(q) as weights:
    #  bin 0 q 0 + 0 + 1 = 1 -> 0.3, bin 1 q 0 + 1 + 1 = 2 -> 0.3: 0.1)
    assert summary["ref_ece"] == pytest.approx(1.1 / 6, abs=1e-6)
    assert (out / "reference_reliability.png").is_file()


def test_cece_classes_reaches_the_calibration_metric(tmp_path):
    # one voxel, 3 classes; zero weights and bias log(p): softmax(log p) = p = [0.2, 0.7, 0.1]
    p = torch.tensor([0.2, 0.7, 0.1])
    net = torch.nn.Conv3d(1, 3, 1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.copy_(torch.log(p))
    ckpt = _save(net, tmp_path / "model.pt")
    items = [{"case": "a", "image": torch.zeros(1, 1, 1, 1), "label": torch.ones(1, 1, 1, 1)}]
    run = lambda out, classes: evaluate_run(  # noqa: E731
        net, ckpt, items, lambda d: d, lambda x, n: n(x), 3, ["bg", "a", "b"], str(tmp_path / out), num_bins=2, cece_classes=classes
    )
    # label 1 (a foreground voxel): class-wise ECE of one voxel is |1[label == c] - p_c|:
    #   class 0: |0 - 0.2| = 0.2, class 1: |1 - 0.7| = 0.3, class 2: |0 - 0.1| = 0.1
    # "up_to_max_label": classes 0 .. 1 -> (0.2 + 0.3) / 2 = 0.25; "all": (0.2 + 0.3 + 0.1) / 3 = 0.2
    up = run("up", "up_to_max_label")
    assert up["cece"] == pytest.approx(0.25, abs=1e-6)
    assert run("all", "all")["cece"] == pytest.approx(0.2, abs=1e-6)
    # top-label ECE: confidence 0.7, correct -> 0.3; NLL -ln 0.7 (neither depends on cece_classes)
    assert up["ece"] == pytest.approx(0.3, abs=1e-6)
    assert up["nll"] == pytest.approx(-math.log(0.7), abs=1e-6)
