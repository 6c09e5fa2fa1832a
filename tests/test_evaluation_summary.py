"""The summary that :func:`calibmonai.evaluation.evaluate_run` returns: the mean over cases of each per-case column
with the population standard deviation (``*_std``), NaN cases (a class absent from the reference) left out, checked
against hand-computed values on three tiny volumes."""

import csv
import math

import pytest
import torch

from calibmonai.evaluation import evaluate_run

SHAPE = (12, 5, 5)


def _line(x0: int, x1: int) -> torch.Tensor:
    """A (1, *SHAPE) mask: the voxels x0..x1 (inclusive) of the line y = z = 2."""
    m = torch.zeros((1,) + SHAPE)
    m[0, x0 : x1 + 1, 2, 2] = 1
    return m


def _case(name: str, ref: tuple[int, int] | None, pred: tuple[int, int]) -> dict:
    label = _line(*ref) if ref is not None else torch.zeros((1,) + SHAPE)
    image = torch.where(_line(*pred) > 0, 1.0, -1.0)  # the network predicts the foreground where the image is +1
    return {"case": name, "image": image, "label": label}


def test_summary_is_the_nan_skipping_mean_and_population_std_over_cases(tmp_path):
    net = torch.nn.Conv3d(1, 2, 1)
    with torch.no_grad():  # logits (-3 x, 3 x)
        net.weight.zero_()
        net.bias.zero_()
        net.weight[0, 0] = -3.0
        net.weight[1, 0] = 3.0
    ckpt = tmp_path / "model.pt"
    torch.save({"model": net.state_dict()}, ckpt)
    items = [
        # reference x = 0..4, prediction x = 4..8: overlap 1, DSC 2 * 1 / (5 + 5) = 0.2. Every voxel of a one-voxel
        # line is an edge; distances prediction -> reference 0, 1, 2, 3, 4 (and the same the other way): the 95th
        # percentile (linear interpolation, index 0.95 * 4 = 3.8) is 3.8.
        _case("a", (0, 4), (4, 8)),
        # reference x = 0..4, prediction x = 2..6: overlap 3, DSC 6 / 10 = 0.6; distances 0, 0, 0, 1, 2 each way:
        # HD95 = 1 + 0.8 * (2 - 1) = 1.8.
        _case("b", (0, 4), (2, 6)),
        # no foreground in the reference: DSC and HD95 are NaN (empty_reference="nan") and left out of the summary.
        _case("c", None, (3, 5)),
    ]
    out = tmp_path / "eval"
    summary = evaluate_run(net, str(ckpt), items, lambda d: d, lambda x, n: n(x), 2, ["background", "fg"], str(out))

    rows = {r["case"]: r for r in csv.DictReader(open(out / "per_case.csv"))}
    assert float(rows["a"]["dsc_mean"]) == pytest.approx(0.2, abs=1e-6)
    assert float(rows["b"]["dsc_mean"]) == pytest.approx(0.6, abs=1e-6)
    assert float(rows["a"]["hd95_mean"]) == pytest.approx(3.8, abs=1e-6)
    assert float(rows["b"]["hd95_mean"]) == pytest.approx(1.8, abs=1e-6)
    assert math.isnan(float(rows["c"]["dsc_mean"])) and math.isnan(float(rows["c"]["hd95_mean"]))

    # mean over the two scored cases, population std (ddof 0): |0.2 - 0.4| = |0.6 - 0.4| = 0.2
    # (the sample std, ddof 1, would be 0.2 * sqrt(2) = 0.2828)
    assert summary["dsc_mean"] == pytest.approx(0.4, abs=1e-6)
    assert summary["dsc_mean_std"] == pytest.approx(0.2, abs=1e-6)
    assert summary["dsc_fg"] == pytest.approx(0.4, abs=1e-6)
    assert summary["dsc_fg_std"] == pytest.approx(0.2, abs=1e-6)
    # HD95: (3.8 + 1.8) / 2 = 2.8, population std 1.0 (sample std sqrt(2)); case c's NaN is skipped, not propagated
    assert summary["hd95_mean"] == pytest.approx(2.8, abs=1e-6)
    assert summary["hd95_mean_std"] == pytest.approx(1.0, abs=1e-6)
