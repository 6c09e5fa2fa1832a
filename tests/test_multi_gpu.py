"""multi_gpu_train.yaml and multi_gpu_evaluate.yaml: two CPU processes (gloo) under torchrun, one tiny epoch.

The checkpoint of the distributed run loads into the plain network (no ``module.`` prefix), the validation
metrics all-gathered over the two processes equal a single-process validation of that checkpoint, and the
distributed evaluation writes the same per-case rows and summary as a single process.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from calibmonai.bundle_tools import config_files, run_workflow
from calibmonai.data import prepare_mni_tissue

BUNDLE = "mni_tissue_seg2d"
REPO = Path(__file__).resolve().parent.parent
TINY = {"slices_per_volume": 2, "batch_size": 4, "volume_repeats": 1, "network_def#channels": [4, 8, 16, 32], "epochs": 1}
# validation and test volumes: at least one per process
SPLIT = (2, 2, 2)


def _torchrun(run_id, files, overrides, timeout=300):
    """``torchrun --standalone --nproc_per_node=2 -m monai.bundle run <run_id>`` with CLI overrides."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run", run_id]
    args += ["--config_file", repr([str(f) for f in files])]
    for k, v in overrides.items():
        args += [f"--{k}", repr(v) if isinstance(v, (list, dict)) else str(v)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mgpu")
    cohort = root / "data"
    prepare_mni_tissue(cohort, num_subjects=sum(SPLIT), split=SPLIT, seed=3, progress=False)
    overrides = {**TINY, "dataset_dir": str(cohort), "runs_dir": str(root / "runs")}
    # the distributed validation's metrics, as MONAI's MetricsSaver writes them on rank 0 (it gathers the
    # per-case details and file names over the processes; the metrics are already all-gathered)
    saver = root / "metrics_saver.yaml"
    saver.write_text(
        "validate#evaluator#val_handlers: \"$@validate#handlers + [monai.handlers.MetricsSaver(save_dir='"
        + str(root / "ddp_metrics")
        + "', metrics='*', metric_details='*', batch_transform=lambda x: [xx['image'].meta for xx in x])]\"\n"
    )
    train = config_files(BUNDLE, "ce", "multi_gpu_train.yaml") + [str(saver)]
    _torchrun("training", train, overrides)
    run_dir = root / "runs" / "mni_tissue" / "ce"
    _torchrun("evaluate", config_files(BUNDLE, "ce", "evaluate.yaml", "multi_gpu_evaluate.yaml"), overrides)
    return {"root": root, "overrides": overrides, "run_dir": run_dir}


def test_rank0_only_handlers_are_the_reporting_ones():
    """multi_gpu_train.yaml disables train.yaml's handlers by position: they must be the ones meant."""
    parser = ConfigParser()
    parser.read_config(config_files(BUNDLE, "ce", "multi_gpu_train.yaml"))
    targets = {h: [str(x["_target_"]).rsplit(".", 1)[-1] for x in parser[h]] for h in ("train#handlers", "validate#handlers")}
    rank0_only = {h: [t for t, x in zip(targets[h], parser[h]) if x.get("_disabled_") == "@is_not_rank0"] for h in targets}
    assert rank0_only == {
        "train#handlers": ["StatsHandler", "EpochLossLogger", "tensorboard_stats_handler"],
        "validate#handlers": ["StatsHandler", "tensorboard_stats_handler", "CheckpointSaver"],
    }
    # every rank keeps the learning-rate schedule, the (distributed) validation and the shape of its output
    assert [t for t, x in zip(targets["train#handlers"], parser["train#handlers"]) if "_disabled_" not in x] == ["LrScheduleHandler", "ValidationHandler", "UndecollatedOutput"]


def _plain_parser(overrides, *extra):
    parser = ConfigParser()
    parser.read_config(config_files(BUNDLE, "ce", *extra))
    for k, v in overrides.items():
        parser[k] = v
    return parser


@pytest.mark.slow
def test_checkpoint_loads_into_the_plain_network(runs):
    ckpt = runs["run_dir"] / "models" / "model.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    net = _plain_parser(runs["overrides"]).get_parsed_content("network_def")
    assert isinstance(net, torch.nn.Module) and not isinstance(net, torch.nn.parallel.DistributedDataParallel)
    net.load_state_dict(state, strict=True)  # raises on a missing or unexpected key
    # trained, not the initial weights
    fresh = _plain_parser(runs["overrides"]).get_parsed_content("network_def").state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in state.items())
    # rank 0 alone wrote: one checkpoint, no TensorBoard folder (off by default)
    assert sorted(p.name for p in (runs["run_dir"] / "models").iterdir()) == ["model.pt"]
    assert not (runs["run_dir"] / "tensorboard").exists()


@pytest.mark.slow
def test_gathered_validation_metrics_equal_one_process(runs):
    saved = {}
    for line in open(runs["root"] / "ddp_metrics" / "metrics.csv"):
        name, value = line.strip().split(",")
        saved[name] = float(value)
    assert set(saved) == {"val_mean_dice", "val_ece", "val_cece"}
    # one process validates the checkpoint on both validation volumes
    parser = _plain_parser(runs["overrides"])
    parser["validate#handlers"] = []  # no checkpoint saving, no logging
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(runs["run_dir"] / "models" / "model.pt", map_location="cpu", weights_only=True))
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    assert evaluator.state.iteration == 2  # both volumes, in one process
    for name, value in saved.items():
        assert value == pytest.approx(evaluator.state.metrics[name], rel=1e-5, abs=1e-6), name
    # the per-case values of both volumes reached rank 0, in the datalist order (MetricsSaver's gathered details)
    images = [os.path.basename(e["image"]) for e in parser.get_parsed_content("validate#datalist")]
    for name in saved:
        rows = list(csv.reader(open(runs["root"] / "ddp_metrics" / f"{name}_raw.csv")))[1:]
        assert [os.path.basename(r[0]) for r in rows] == images, name
        one = evaluator.state.metric_details[name].double().numpy().reshape(len(images), -1)
        got = np.array([[float(x) for x in r[1:-1]] for r in rows])  # per class; the last column is their mean
        np.testing.assert_allclose(got, one, rtol=1e-5, atol=1e-6, err_msg=name)


def _read(path):
    return list(csv.DictReader(open(path)))


@pytest.mark.slow
def test_distributed_evaluation_writes_the_single_process_summary(runs):
    ddp = runs["run_dir"] / "eval"
    one = runs["root"] / "eval_one_process"
    run_workflow("evaluate", config_files(BUNDLE, "ce", "evaluate.yaml"), **runs["overrides"], eval_dir=str(one))
    ddp_rows, one_rows = _read(ddp / "per_case.csv"), _read(one / "per_case.csv")
    assert [r["case"] for r in ddp_rows] == [r["case"] for r in one_rows] and len(one_rows) == 2
    # same values (to the thread count's rounding: the processes run one thread each), same order
    for a, b in zip(ddp_rows, one_rows):
        assert a.keys() == b.keys()
        for k in a:
            if k != "case":
                assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-5, abs=2e-6, nan_ok=True), (a["case"], k)
    ddp_sum = {r["metric"]: float(r["value"]) for r in _read(ddp / "summary.csv")}
    one_sum = {r["metric"]: float(r["value"]) for r in _read(one / "summary.csv")}
    assert ddp_sum.keys() == one_sum.keys() and {"dsc_mean", "ece", "pooled_ece", "ref_ece"} <= set(one_sum)
    for k, v in one_sum.items():
        assert ddp_sum[k] == pytest.approx(v, rel=1e-5, abs=2e-6, nan_ok=True), k
    # the mean over cases is over both processes' cases (not rank 0's alone)
    dsc = [float(r["dsc_mean"]) for r in one_rows]
    assert dsc[0] != pytest.approx(dsc[1], abs=1e-6)
    assert ddp_sum["dsc_mean"] == pytest.approx(np.mean(dsc), abs=1e-6)
    ddp_cal, one_cal = _read(ddp / "calibration_per_case.csv"), _read(one / "calibration_per_case.csv")
    assert [r["case"] for r in ddp_cal] == [r["case"] for r in one_cal] == [r["case"] for r in one_rows]
    for a, b in zip(ddp_cal, one_cal):
        assert [float(a[k]) for k in a if k != "case"] == pytest.approx([float(b[k]) for k in b if k != "case"], rel=1e-5, abs=2e-6)
    assert (ddp / "slice.png").stat().st_size > 0
