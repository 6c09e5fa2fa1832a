import csv
import os

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.handlers import CheckpointSaver, StatsHandler
from monai.transforms import Activationsd, Compose

from calibmonai.handlers import (
    BrierScore,
    CalibrationReport,
    ClasswiseCalibrationError,
    ExpectedCalibrationError,
    NegativeLogLikelihood,
    StratifiedBrierScore,
)
from calibmonai.metrics import CalibrationMetrics


class Scale(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return x * self.w


def _items(n=5, c=3):
    g = torch.Generator().manual_seed(1)
    items = []
    for _ in range(n):
        y = torch.randint(0, c, (1, 8, 8), generator=g)
        z = torch.randn(c, 8, 8, generator=g) + 2 * torch.nn.functional.one_hot(y[0], c).permute(2, 0, 1)
        items.append({"image": z, "label": y})
    return items


def test_evaluator_reports_calibration_and_drives_checkpoints(tmp_path):
    items = _items()
    net = Scale()
    post = Compose([Activationsd(keys="pred", softmax=True)])
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(items), batch_size=2),
        network=net,
        postprocessing=post,
        key_val_metric={"val_ece": ExpectedCalibrationError()},
        additional_metrics={
            "val_cece": ClasswiseCalibrationError(),
            "val_brier": BrierScore(),
            "val_brier_plus": StratifiedBrierScore(),
            "val_nll": NegativeLogLikelihood(),
            "val_ece_pooled": ExpectedCalibrationError(level="pooled"),
        },
        val_handlers=[
            StatsHandler(iteration_log=False),
            CheckpointSaver(save_dir=str(tmp_path / "ckpt"), save_dict={"net": net}, save_key_metric=True, key_metric_negative_sign=True),
            CalibrationReport(output_dir=str(tmp_path / "report")),
        ],
    )
    evaluator.run()
    probs = torch.stack([(it["image"] * 2).softmax(0) for it in items])
    labels = torch.stack([it["label"] for it in items])
    direct = CalibrationMetrics()
    direct(probs, labels)
    want = direct.aggregate()
    m = evaluator.state.metrics
    for key, name in [("val_ece", "ece"), ("val_cece", "cece"), ("val_brier", "brier"), ("val_brier_plus", "brier_plus"), ("val_nll", "nll")]:
        assert m[key] == pytest.approx(want[name], abs=1e-5), key
    assert m["val_ece_pooled"] == pytest.approx(direct.aggregate("pooled")["ece"], abs=1e-5)
    assert len(evaluator.state.metric_details["val_ece"]) == 5  # per-case values for MetricsSaver
    ckpts = os.listdir(tmp_path / "ckpt")
    assert any("key_metric" in f for f in ckpts), ckpts
    report = tmp_path / "report"
    assert (report / "reliability.png").stat().st_size > 5000
    rows = list(csv.DictReader(open(report / "calibration_per_case.csv")))
    assert len(rows) == 5 and float(rows[0]["ece"]) >= 0
    summary = {r["metric"]: r for r in csv.DictReader(open(report / "calibration_summary.csv"))}
    assert float(summary["ece"]["mean_over_cases"]) == pytest.approx(want["ece"], abs=1e-5)
    assert float(summary["cece"]["pooled"]) == pytest.approx(direct.aggregate("pooled")["cece"], abs=1e-5)
    assert evaluator.state.metrics["pooled_brier"] == pytest.approx(direct.aggregate("pooled")["brier"], abs=1e-6)
