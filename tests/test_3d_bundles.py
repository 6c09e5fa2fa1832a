"""The 3D MEEP bundles (``left_atrium_seg3d``, ``wmh_seg3d``) on look-alike downloads (left atrium: UA-MT h5 with
train.list / test.list and the challenge's nrrd files; WMH 2017: FLAIR + T1 NIfTI with label 2): one epoch of training
with a tiny 3D UNet on 16^3 patches, whole-volume evaluation with the sliding window, export, inference on new scans,
MEEP's table over two seeds; and the WMH "other pathology" label left out of every metric, on a hand-made case."""

import csv
import json
import math
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from lookalike import modality_volume, write_nifti  # noqa: E402
from lookalike_more import LA_IDS, write_h5, write_itk, write_left_atrium_h5, write_left_atrium_nrrd, write_wmh  # noqa: E402

from calibmonai.bundle_export import export_bundle  # noqa: E402
from calibmonai.bundle_tools import REPO_BUNDLES, config_files, inference_config_files, run_workflow  # noqa: E402
from calibmonai.datasets import bundle_dataset  # noqa: E402
from calibmonai.datasets.pipelines import DatasetCheckError  # noqa: E402
from calibmonai.meep_table import collect_runs, meep_table, run_and_seed, write_meep_table  # noqa: E402

LA, WMH = "left_atrium_seg3d", "wmh_seg3d"
NET = {"patch_size": [16, 16, 16], "network_def#channels": [4, 8, 16], "network_def#strides": [2, 2], "sw_batch_size": 1}
TINY = {**NET, "batch_size": 1, "epochs": 1, "num_workers": 0}
TINY_WMH = {**TINY, "patches_per_volume": 1, "volume_repeats": 1}
FINITE = ("dsc_mean", "ece", "cece", "brier", "brier_plus", "nll")


def _parser(files, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    for k, v in overrides.items():
        parser[k] = v
    return parser


def _summary(eval_dir: Path) -> dict:
    return {r["metric"]: float(r["value"]) for r in csv.DictReader(open(eval_dir / "summary.csv"))}


def _cases(eval_dir: Path) -> list:
    return [r["case"] for r in csv.DictReader(open(eval_dir / "per_case.csv"))]


def _raises(error: type, match: str, *args, **kwargs) -> BaseException:
    """Run ``run_workflow(*args, **kwargs)`` and return the error of type ``error`` whose message matches ``match``
    in the chain MONAI wraps it in (``RuntimeError: Failed to evaluate ...`` from the reader's error)."""
    import re

    with pytest.raises(Exception) as info:
        run_workflow(*args, **kwargs)
    e, seen = info.value, []
    while e is not None:
        if isinstance(e, error) and re.search(match, str(e), re.DOTALL):
            return e
        seen.append(f"{type(e).__name__}: {e}")
        e = e.__cause__
    raise AssertionError(f"no {error.__name__} matching {match!r} in {seen}")


def _check_summary(s: dict) -> None:
    for key in FINITE:
        assert math.isfinite(s[key]), key
    for key in ("dsc_mean", "ece", "cece"):
        assert 0.0 <= s[key] <= 1.0, key
    assert 0.0 <= s["brier"] <= 2.0 and 0.0 <= s["brier_plus"] <= 2.0 and s["nll"] >= 0.0
    assert math.isnan(s["hd95_mean"]) or s["hd95_mean"] >= 0.0


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def la_h5(tmp_path_factory):
    """UA-MT h5 look-alike (8 patients, test.list = the last 2): split from the list files, MEEP-CE (lambda 0.1)
    trained and evaluated with seeds 0 and 1."""
    root = tmp_path_factory.mktemp("la_h5")
    data = write_left_atrium_h5(root)
    ov = dict(TINY, dataset_dir=str(data), runs_dir=str(root / "runs"), cache_dir=str(root / "cache"), split_file=str(root / "split.json"))
    run_workflow("write_split_from_lists", config_files(LA, "ce"), **ov)
    for seed in (0, 1):
        run_workflow("training", config_files(LA, "meep_ce_entropy_la"), seed=seed, **ov)
        run_workflow("evaluate", config_files(LA, "meep_ce_entropy_la", "evaluate.yaml"), seed=seed, **ov)
    return {"root": root, "data": data, "ov": ov, "runs": root / "runs" / "left_atrium"}


@pytest.fixture(scope="module")
def la_nrrd(tmp_path_factory):
    """Challenge nrrd look-alike (5 patients): seeded split of the folder, CE trained and evaluated."""
    root = tmp_path_factory.mktemp("la_nrrd")
    data = write_left_atrium_nrrd(root)
    ov = dict(TINY, dataset_dir=str(data), runs_dir=str(root / "runs"), cache_dir=str(root / "cache"), split_file=str(root / "split.json"))
    run_workflow("write_split", config_files(LA, "ce"), split_from_data=True, **ov)
    run_workflow("training", config_files(LA, "ce"), **ov)
    run_workflow("evaluate", config_files(LA, "ce", "evaluate.yaml"), **ov)
    return {"root": root, "data": data, "ov": ov, "runs": root / "runs" / "left_atrium"}


@pytest.fixture(scope="module")
def wmh(tmp_path_factory):
    """WMH 2017 look-alike (3 subjects per scanner, labels 0/1/2): split of the folder, MEEP-CE (lambda 0.3) trained
    and evaluated."""
    root = tmp_path_factory.mktemp("wmh")
    data = write_wmh(root / "download")
    ov = dict(TINY_WMH, dataset_dir=str(data), runs_dir=str(root / "runs"), cache_dir=str(root / "cache"), split_file=str(root / "split.json"))
    run_workflow("write_split", config_files(WMH, "ce"), **ov)
    run_workflow("training", config_files(WMH, "meep_ce_entropy_wmh"), **ov)
    run_workflow("evaluate", config_files(WMH, "meep_ce_entropy_wmh", "evaluate.yaml"), **ov)
    return {"root": root, "data": data, "ov": ov, "runs": root / "runs" / "wmh"}


# --------------------------------------------------------------------------------- configs (fast)


def test_method_fragments_set_meeps_lambdas_per_dataset():
    from calibmonai.losses import get_loss

    expected = {
        "meep_ce_entropy_wmh": 0.3, "meep_ce_kl_wmh": 0.3, "meep_dice_entropy_wmh": 1.0, "meep_dice_kl_wmh": 1.0,
        "meep_ce_entropy_la": 0.1, "meep_ce_kl_la": 0.1, "meep_dice_entropy_la": 0.5, "meep_dice_kl_la": 0.5,
    }  # fmt: skip
    for fragment, lam in expected.items():
        bundle = WMH if fragment.endswith("wmh") else LA
        parser = _parser(config_files(bundle, fragment))
        method = fragment.rsplit("_", 1)[0]
        assert parser["method"] == method and parser["loss_kwargs"] == {"lam": lam}, fragment
        assert parser.get_parsed_content("method_tag") == f"{method}_lam{lam}"
        loss = parser.get_parsed_content("loss")
        assert loss.lam == lam and loss.regularizer == ("kl" if "_kl_" in fragment else "entropy")
    # the plain Dice baseline is the Dice base of meep_dice_* (lambda 0 gives the same value)
    parser = _parser(config_files(LA, "dice"))
    assert parser.get_parsed_content("method_tag") == "dice"
    x, y = torch.randn(2, 2, 5, 4, 3), torch.randint(0, 2, (2, 1, 5, 4, 3))
    assert float(parser.get_parsed_content("loss")(x, y)) == pytest.approx(float(get_loss("meep_dice_entropy", lam=0.0)(x, y)), abs=1e-6)


def test_bundle_keys_and_seed_folders():
    for bundle, name, channels, patch in ((LA, "left_atrium", 1, [144, 144, 80]), (WMH, "wmh", 2, [64, 64, 64])):
        assert bundle_dataset(bundle) == name
        parser = _parser(config_files(bundle, "ce"), runs_dir="/r")
        for key in ("bundle_root", "dataset_dir", "runs_dir", "method", "loss_kwargs", "backbone", "method_tag", "run_dir",
                    "ckpt_dir", "ckpt_path", "network_def", "network", "train", "validate", "val_interval", "initialize",
                    "run", "finalize", "calibrate", "sw_overlap", "sw_mode"):  # fmt: skip
            assert key in parser, (bundle, key)
        assert parser["dataset_name"] == name and parser["num_classes"] == 2 and parser["spatial_dims"] == 3
        assert parser["in_channels"] == channels and parser["patch_size"] == patch
        assert parser["sw_overlap"] == 0.5 and parser["sw_mode"] == "gaussian"
        assert parser.get_parsed_content("run_dir") == f"/r/{name}/ce"
        # 4 loader workers, never more than the machine's cores (PyTorch warns and may stall above them)
        assert parser.get_parsed_content("num_workers") == min(4, os.cpu_count() or 1)
        assert parser["train#dataloader#num_workers"] == parser["validate#dataloader#num_workers"] == "@num_workers"
        parser["seed"] = 2
        assert parser.get_parsed_content("run_dir") == f"/r/{name}/ce_seed2"
        inferer = parser.get_parsed_content("validate#inferer")
        assert type(inferer).__name__ == "SlidingWindowInferer" and list(inferer.roi_size) == patch
        assert inferer.overlap == 0.5 and inferer.mode == "gaussian"
        # the stand-alone inference config finds the same run folder
        inf = _parser(config_files(bundle, "meep_ce_kl_la" if bundle == LA else "meep_ce_kl_wmh", workflow="inference.yaml"), runs_dir="/r", seed=1)
        assert inf.get_parsed_content("run_dir") == f"/r/{name}/meep_ce_kl_lam{0.1 if bundle == LA else 0.3}_seed1"
        assert inf["num_modalities"] == channels and inf["patch_size"] == patch


def test_left_atrium_split_file_is_the_published_split(tmp_path):
    from calibmonai.datasets.left_atrium import MEEP_VALIDATION_IDS, PUBLISHED_TEST_IDS

    shipped = REPO_BUNDLES / LA / "configs" / "split.json"
    doc = json.loads(shipped.read_text())
    assert doc["counts"] == {"training": 76, "validation": 4, "test": 20}
    assert sorted(doc["test"]) == sorted(PUBLISHED_TEST_IDS) and sorted(doc["validation"]) == sorted(MEEP_VALIDATION_IDS)
    # regenerated byte for byte (and whatever the seed: the published split is not random)
    for seed in (0, 3):
        out = tmp_path / f"split{seed}.json"
        run_workflow("write_split", config_files(LA, "ce"), split_file=str(out), split_seed=seed)
        assert {k: v for k, v in json.loads(out.read_text()).items() if k != "seed"} == {k: v for k, v in doc.items() if k != "seed"}
    out = tmp_path / "split0.json"
    assert out.read_bytes() == shipped.read_bytes()


def test_heart_crop_applies_to_challenge_volumes_only(tmp_path):
    from calibmonai.datasets import left_atrium

    nrrd = left_atrium.datalist(write_left_atrium_nrrd(tmp_path / "nrrd"))["training"][0]
    h5 = left_atrium.datalist(write_left_atrium_h5(tmp_path / "h5"))["training"][0]
    pre = _parser(config_files(LA, "ce"), heart_margin=[2, 2, 1]).get_parsed_content("validate#preprocessing")
    a, b = pre(nrrd), pre(h5)
    # look-alike volumes are 16 x 14 x 8 with the atrium on rows 4..9 of the first axis (all of the other two):
    # the crop keeps rows 2..11 (margin 2), and the whole of the other axes (the margin stops at the edges)
    assert tuple(a["image"].shape) == (1, 10, 14, 8) and tuple(a["label"].shape) == (1, 10, 14, 8)
    assert tuple(b["image"].shape) == (1, 16, 14, 8)
    for d, n_atrium in ((a, 6 * 14 * 8), (b, 6 * 14 * 8)):
        assert sorted(torch.unique(d["label"]).tolist()) == [0.0, 1.0] and int(d["label"].sum()) == n_atrium
        assert float(d["image"].mean()) == pytest.approx(0.0, abs=1e-5) and float(d["image"].std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


def test_wmh_validation_leaves_label_2_out_of_the_dice():
    post = _parser(config_files(WMH, "ce")).get_parsed_content("validate#postprocessing")
    logits = torch.zeros(2, 4, 3, 2)
    logits[1, :2] = 5.0  # WMH predicted on rows 0-1
    label = torch.zeros(1, 4, 3, 2)
    label[0, 0] = 1.0
    mask = torch.ones(1, 4, 3, 2, dtype=torch.bool)
    mask[0, 1] = False  # row 1 was "other pathology": a wrong WMH prediction there must not count
    out = post({"pred": logits, "label": label, "mask": mask})
    assert torch.equal(out["pred"][:, 1], torch.zeros(2, 3, 2))  # no class at all in the masked row
    assert torch.equal(out["pred"][1, 0], torch.ones(3, 2)) and torch.equal(out["pred"][0, 2:], torch.ones(2, 3, 2))
    from monai.metrics import compute_dice

    assert float(compute_dice(out["pred"][None], out["label"][None], include_background=False)) == pytest.approx(1.0)


def test_wmh_label_2_counts_in_no_metric(tmp_path):
    """Two cases with the same reference, whose predictions differ only on label-2 voxels (right in one, confidently
    WMH in the other): every metric is the same with the mask, and the hand-computed values; without it they differ."""
    from calibmonai.datasets.wmh import IgnoreMaskd
    from calibmonai.evaluation import evaluate_run

    shape = (12, 10, 6)
    label = torch.zeros((1,) + shape)
    label[0, 2:5, 2:5, 1:4] = 1  # 27 WMH voxels
    label[0, 7:10, 5:8, 1:4] = 2  # 27 "other pathology" voxels
    s = 3.0
    image = torch.full((2,) + shape, -s)
    image[0, 2:5, 2:5, 1:3] = s  # WMH predicted on 18 of the 27 lesion voxels
    wrong = image.clone()
    wrong[0, 7:10, 5:8, 1:4] = s  # ... and on every label-2 voxel
    net = torch.nn.Conv3d(2, 2, 1)
    with torch.no_grad():  # logits (-x0, x0): p(WMH) = sigmoid(2 x0)
        net.weight.zero_()
        net.bias.zero_()
        net.weight[0, 0] = -1.0
        net.weight[1, 0] = 1.0
    ckpt = tmp_path / "model.pt"
    torch.save({"model": net.state_dict()}, ckpt)
    items = [{"case": "right", "image": image, "label": label}, {"case": "wrong", "image": wrong, "label": label}]

    def run(mask_key, out):
        return evaluate_run(net, str(ckpt), items, IgnoreMaskd("label"), lambda x, n: n(x), 2, ["background", "WMH"], str(tmp_path / out), mask_key=mask_key)

    run("mask", "masked")
    per_case = {r["case"]: r for r in csv.DictReader(open(tmp_path / "masked" / "per_case.csv"))}
    q = 1.0 / (1.0 + math.exp(-2 * s))  # the confidence of every voxel
    counted = 12 * 10 * 6 - 27  # voxels outside label 2
    expected = {
        "dsc_mean": 2 * 18 / (18 + 27),  # TP 18, FN 9, FP 0
        "ece": abs(18 / 27 - q),  # the 27 WMH voxels, one bin
        "brier": (18 * 2 * (1 - q) ** 2 + 9 * 2 * q**2 + (counted - 27) * 2 * (1 - q) ** 2) / counted,
        "brier_plus": (18 * 2 * (1 - q) ** 2 + 9 * 2 * q**2) / 27,
    }
    for case in ("right", "wrong"):
        for key, value in expected.items():
            assert float(per_case[case][key]) == pytest.approx(value, rel=1e-4), (case, key)
    for key in ("hd95_mean", "asd_mean", "nll", "cece"):
        assert float(per_case["right"][key]) == pytest.approx(float(per_case["wrong"][key]), rel=1e-6), key
    run(None, "unmasked")  # the same cases without the mask: label 2 is background, the wrong predictions count
    plain = {r["case"]: r for r in csv.DictReader(open(tmp_path / "unmasked" / "per_case.csv"))}
    assert float(plain["wrong"]["dsc_mean"]) == pytest.approx(2 * 18 / (18 + 27 + 27), rel=1e-4)
    assert float(plain["wrong"]["brier"]) > float(plain["right"]["brier"]) + 0.05


def test_evaluation_scores_a_missed_structure_with_the_diagonal(tmp_path):
    """A network that never predicts the foreground: before, MONAI's inf distance became NaN and was left out, so the
    run's mean HD95/ASD was empty (better than any real prediction); now the image's diagonal in mm."""
    from calibmonai.evaluation import evaluate_run
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    shape = (12, 10, 6)
    affine = np.diag([0.8, 1.2, 3.0, 1.0])
    label = np.zeros(shape, np.uint8)
    label[3:7, 3:7, 2:4] = 1
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), affine), str(tmp_path / "img.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(tmp_path / "lab.nii.gz"))
    net = torch.nn.Conv3d(1, 2, 1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.copy_(torch.tensor([2.0, -2.0]))  # background everywhere
    ckpt = tmp_path / "model.pt"
    torch.save({"model": net.state_dict()}, ckpt)
    items = [{"case": "c0", "image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}]
    pre = Compose([LoadImaged(("image", "label")), EnsureChannelFirstd(("image", "label"))])
    diag = math.sqrt((11 * 0.8) ** 2 + (9 * 1.2) ** 2 + (5 * 3.0) ** 2)
    for kwargs, want in (({}, diag), ({"missed_distance": "nan"}, math.nan)):
        out = tmp_path / f"eval_{len(kwargs)}"
        summary = evaluate_run(net, str(ckpt), items, pre, lambda x, n: n(x), 2, ["background", "fg"], str(out), **kwargs)
        row = next(csv.DictReader(open(out / "per_case.csv")))
        assert float(row["dsc_mean"]) == 0.0
        for key in ("hd95_mean", "asd_mean"):
            got = float(row[key]) if row[key] not in ("", "nan") else math.nan
            assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-5), (kwargs, key, row[key])
            assert (math.isnan(summary[key]) and math.isnan(want)) or summary[key] == pytest.approx(want, rel=1e-5)


def test_an_evaluation_that_fails_on_a_case_leaves_the_earlier_results_as_they_were(tmp_path):
    from calibmonai.evaluation import evaluate_run
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    shape = (8, 8, 4)
    label = np.zeros(shape, np.uint8)
    label[2:5, 2:5, 1:3] = 1
    for name in ("img", "lab"):
        nib.save(nib.Nifti1Image(label.astype(np.float32 if name == "img" else np.uint8), np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
    net = torch.nn.Conv3d(1, 2, 1)
    ckpt = tmp_path / "model.pt"
    torch.save({"model": net.state_dict()}, ckpt)
    good = {"case": "c0", "image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}
    pre = Compose([LoadImaged(("image", "label")), EnsureChannelFirstd(("image", "label"))])
    out = tmp_path / "eval"
    evaluate_run(net, str(ckpt), [good], pre, lambda x, n: n(x), 2, ["background", "fg"], str(out))
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    assert {"slice.png", "per_case.csv", "summary.csv", "summary.md"} <= set(before)
    broken = {**good, "case": "c1", "label": str(tmp_path / "missing.nii.gz")}
    with pytest.raises(Exception):
        evaluate_run(net, str(ckpt), [good, broken], pre, lambda x, n: n(x), 2, ["background", "fg"], str(out), title="second")
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # no new slice.png beside the old summary


def test_meep_table_means_over_seeds(tmp_path):
    def summary(folder: Path, values: dict) -> None:
        folder.mkdir(parents=True)
        with open(folder / "summary.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["metric", "value"])
            for k, v in values.items():
                w.writerow([k, v])
            w.writerow(["dsc_mean_std", 0.5])

    runs = tmp_path / "runs" / "wmh"
    rng = np.random.default_rng(0)
    values = {}
    for run, seeds, evals in (("ce", (0, 1, 2), ("eval", "eval_platt")), ("dice", (0,), ("eval",)), ("meep_ce_entropy_lam0.3", (0, 2), ("eval",))):
        for seed in seeds:
            folder = runs / (run if seed == 0 else f"{run}_seed{seed}")
            for ev in evals:
                v = {k: float(rng.uniform(0.1, 0.9)) for k in ("dsc_mean", "hd95_mean", "brier", "brier_plus", "ece")}
                summary(folder / ev, v)
                values.setdefault((run, ev), []).append(v)
    (runs / "focal_gamma2.0" / "models").mkdir(parents=True)  # trained, not evaluated: left out
    rows = collect_runs(runs)
    assert sorted(rows) == ["ce", "ce + Platt", "dice", "meep_ce_entropy_lam0.3"]
    assert sorted(rows["meep_ce_entropy_lam0.3"]) == [0, 2]
    header, body, records = meep_table(rows)
    assert header == ["run", "seeds", "DSC", "HD95", "Brier", "Brier+", "ECE"]
    assert [r[0] for r in body] == ["ce", "ce + Platt", "meep_ce_entropy_lam0.3", "dice"]  # MEEP's order: CE-based first
    for record in records:
        run, _, cal = record["row"].partition(" + ")
        vs = values[(run, "eval_platt" if cal else "eval")]
        for key in ("dsc_mean", "hd95_mean", "brier", "brier_plus", "ece"):
            col = np.array([v[key] for v in vs])
            assert record[key] == pytest.approx(col.mean()) and record[f"{key}_std"] == pytest.approx(col.std())
    assert body[0][2] == f"{np.mean([v['dsc_mean'] for v in values[('ce', 'eval')]]):.4f} ± {np.std([v['dsc_mean'] for v in values[('ce', 'eval')]]):.4f}"
    md = write_meep_table(runs, tmp_path / "out")
    assert md.read_text().count("\n| ") == 4 + 1 and (tmp_path / "out" / "meep_table.csv").is_file()
    assert run_and_seed("meep_ce_kl_lam0.3_seed12") == ("meep_ce_kl_lam0.3", 12) and run_and_seed("ce") == ("ce", 0)
    with pytest.raises(FileNotFoundError, match="no runs folder .*nowhere"):
        write_meep_table(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no evaluated run"):
        write_meep_table(tmp_path / "empty")


def test_data_folder_problems_stop_before_training(tmp_path):
    ov = dict(TINY, runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"), split_file=str(tmp_path / "none.json"))
    missing = tmp_path / "typo"
    _raises(FileNotFoundError, f"data folder {missing} does not exist", "training", config_files(LA, "ce"), dataset_dir=str(missing), **ov)
    (tmp_path / "empty").mkdir()
    _raises(FileNotFoundError, "data folder .*empty is empty", "training", config_files(WMH, "ce"), dataset_dir=str(tmp_path / "empty"), **ov)
    assert not missing.exists()
    # an h5 file without its label array, and a WMH reference with a value outside 0/1/2: the reader's messages
    data = write_left_atrium_h5(tmp_path / "la", lists=False)
    broken = data / "2018LA_Seg_Training Set" / LA_IDS[1] / "mri_norm2.h5"
    write_h5(broken, modality_volume(0, (16, 14, 8)), None)
    _raises(DatasetCheckError, f"{LA_IDS[1]}.*lacks the dataset.*label", "training", config_files(LA, "ce"), dataset_dir=str(data), **ov)
    wmh_data = write_wmh(tmp_path / "wmh", per_scanner=2)
    bad = wmh_data / "training" / "Utrecht" / "0" / "wmh.nii.gz"
    write_nifti(bad, np.full((16, 16, 4), 3, dtype=np.uint8), (0.96, 0.96, 3.0))
    _raises(DatasetCheckError, "label values outside .*wmh.nii.gz.*3", "training", config_files(WMH, "ce"), dataset_dir=str(wmh_data), **ov)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------ end to end (slow)


@pytest.mark.slow
def test_left_atrium_h5_follows_the_list_files_trains_and_evaluates(la_h5):
    split = json.loads(Path(la_h5["ov"]["split_file"]).read_text())
    assert split["test"] == sorted(LA_IDS[-2:]) and len(split["validation"]) == 1 and len(split["training"]) == 5
    assert set(split["validation"]) | set(split["training"]) == set(LA_IDS[:-2])
    for folder in ("meep_ce_entropy_lam0.1", "meep_ce_entropy_lam0.1_seed1"):
        run = la_h5["runs"] / folder
        assert (run / "models" / "model.pt").is_file()
        assert sorted(_cases(run / "eval")) == sorted(LA_IDS[-2:])
        _check_summary(_summary(run / "eval"))
    # the two seeds are two trainings (different weights)
    a = torch.load(la_h5["runs"] / "meep_ce_entropy_lam0.1" / "models" / "model.pt", weights_only=True)
    b = torch.load(la_h5["runs"] / "meep_ce_entropy_lam0.1_seed1" / "models" / "model.pt", weights_only=True)
    a, b = a.get("model", a), b.get("model", b)
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_meep_table_workflow_over_two_seeds(la_h5):
    run_workflow("meep_table", config_files(LA, "ce", "evaluate.yaml"), **la_h5["ov"])
    rows = {r["row"]: r for r in csv.DictReader(open(la_h5["runs"] / "meep_table.csv"))}
    assert list(rows) == ["meep_ce_entropy_lam0.1"] and rows["meep_ce_entropy_lam0.1"]["seeds"] == "0 1"
    seeds = [_summary(la_h5["runs"] / f / "eval") for f in ("meep_ce_entropy_lam0.1", "meep_ce_entropy_lam0.1_seed1")]
    for key in ("dsc_mean", "brier", "brier_plus", "ece"):
        assert float(rows["meep_ce_entropy_lam0.1"][key]) == pytest.approx(np.mean([s[key] for s in seeds]), abs=2e-6), key
    assert "| meep_ce_entropy_lam0.1 | 2 |" in (la_h5["runs"] / "meep_table.md").read_text()


@pytest.mark.slow
def test_left_atrium_export_and_inference_on_a_new_scan(la_h5, tmp_path):
    out = export_bundle(LA, "meep_ce_entropy_la", str(tmp_path / "export"), runs_dir=la_h5["ov"]["runs_dir"], **NET)
    assert (out / "models" / "model.pt").is_file() and (out / "configs" / "inference.json").is_file()
    scans = tmp_path / "scans"
    write_itk(scans / "patient one.nrrd", modality_volume(0, (16, 14, 8)).astype(np.uint8), (0.625, 0.625, 0.625), compression=True)
    files, overrides = inference_config_files(str(out), "meep_ce_entropy_la")
    run_workflow("run", files, input_dir=str(scans), output_dir=str(tmp_path / "pred"), save_probs=True, **overrides)  # NET exported
    seg = nib.load(str(tmp_path / "pred" / "patient one_seg.nii.gz"))
    conf = np.asarray(nib.load(str(tmp_path / "pred" / "patient one_conf.nii.gz")).dataobj)
    prob = np.asarray(nib.load(str(tmp_path / "pred" / "patient one_prob.nii.gz")).dataobj)
    assert seg.shape == (16, 14, 8) and set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1}
    assert np.allclose(np.abs(np.diag(seg.affine))[:3], 0.625)
    assert conf.min() >= 0.5 - 1e-6 and conf.max() <= 1 + 1e-6
    assert np.allclose(prob.sum(-1), 1.0, atol=1e-5) and np.allclose(prob.max(-1), conf, atol=1e-5)
    assert np.array_equal(prob.argmax(-1), np.asarray(seg.dataobj))
    # the preview draws the .nrrd scan (ITK's LPS world, read into RAS) under maps on the same grid
    from calibmonai.preview import bundle_scans, preview_folder, write_preview

    found, names = bundle_scans(files, input_dir=str(scans), **overrides)
    assert found == {"patient one": str(scans / "patient one.nrrd")} and names == ["background", "left atrium"]
    maps = {k: tmp_path / "pred" / f"patient one_{k}.nii.gz" for k in ("seg", "conf", "uncertainty")}
    assert write_preview(maps, tmp_path / "la.png", image_file=found["patient one"])[1] == ""
    assert preview_folder(tmp_path / "pred", found, names) == [tmp_path / "pred" / "patient one_preview.png"]


@pytest.mark.slow
def test_left_atrium_challenge_nrrd_layout(la_nrrd):
    split = json.loads(Path(la_nrrd["ov"]["split_file"]).read_text())
    assert split["counts"] == {"training": 3, "validation": 1, "test": 1}
    run = la_nrrd["runs"] / "ce"
    assert (run / "models" / "model.pt").is_file() and _cases(run / "eval") == split["test"]
    _check_summary(_summary(run / "eval"))


@pytest.mark.slow
def test_wmh_trains_evaluates_exports_and_segments_two_modality_scans(wmh, tmp_path):
    split = json.loads(Path(wmh["ov"]["split_file"]).read_text())
    run = wmh["runs"] / "meep_ce_entropy_lam0.3"
    assert (run / "models" / "model.pt").is_file() and sorted(_cases(run / "eval")) == sorted(split["test"])
    s = _summary(run / "eval")
    _check_summary(s)
    # the repository bundle's inference on <case>_0000 (FLAIR) + <case>_0001 (T1)
    scans = tmp_path / "scans"
    for c in range(2):
        write_nifti(scans / f"sub 7_{c:04d}.nii.gz", modality_volume(c, (16, 16, 4)), (0.96, 0.96, 3.0))
    files, overrides = inference_config_files(WMH, "meep_ce_entropy_wmh", wmh["ov"]["runs_dir"])
    run_workflow("run", files, input_dir=str(scans), output_dir=str(tmp_path / "pred"), **overrides, **NET)
    seg = nib.load(str(tmp_path / "pred" / "sub 7_seg.nii.gz"))
    assert seg.shape == (16, 16, 4) and np.allclose(seg.affine, nib.load(str(scans / "sub 7_0000.nii.gz")).affine)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1}
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == [".calibmonai.lock", "calibmonai_outputs.json", "sub 7_conf.nii.gz", "sub 7_seg.nii.gz", "sub 7_uncertainty.nii.gz"]
    # a single modality is refused, naming the scan
    (tmp_path / "one").mkdir()
    write_nifti(tmp_path / "one" / "solo_0000.nii.gz", modality_volume(0, (16, 16, 4)), (0.96, 0.96, 3.0))
    _raises(RuntimeError, "solo: expected 2 modality file", "run", files, input_dir=str(tmp_path / "one"), output_dir=str(tmp_path / "pred1"), **overrides, **NET)
    # the export evaluates its shipped weights to the same numbers
    out = export_bundle(WMH, "meep_ce_entropy_wmh", str(tmp_path / "export"), runs_dir=wmh["ov"]["runs_dir"], **NET)
    exported = run_workflow("evaluate", [str(out / "configs" / "evaluate.json")], bundle_root=str(out), **{k: v for k, v in wmh["ov"].items() if k != "runs_dir"})
    assert (out / "eval" / "summary.csv").is_file() and exported is not None
    e = _summary(out / "eval")
    for key in FINITE:
        assert e[key] == pytest.approx(s[key], rel=1e-5, abs=1e-6), key


@pytest.mark.slow
def test_monai_tooling_accepts_both_bundles(la_h5, wmh):
    from monai.bundle import ConfigWorkflow, verify_net_in_out

    for bundle, fixture, method in ((LA, la_h5, "meep_ce_entropy_la"), (WMH, wmh, "meep_ce_entropy_wmh")):
        configs = REPO_BUNDLES / bundle / "configs"
        wf = ConfigWorkflow(config_file=config_files(bundle, method), workflow_type="train", logging_file=False, meta_file=str(configs / "metadata.json"), **fixture["ov"])
        wf.initialize()
        assert wf.check_properties() == []
        wf = ConfigWorkflow(config_file=config_files(bundle, method, workflow="inference.yaml"), workflow_type="infer", logging_file=False,
                            meta_file=str(configs / "metadata.json"), runs_dir=fixture["ov"]["runs_dir"], **NET)  # fmt: skip
        wf.initialize()
        assert wf.check_properties() == []
        # the network's input and output shapes of metadata.json (patch shape, channels), with a tiny UNet
        verify_net_in_out(net_id="network_def", meta_file=str(configs / "metadata.json"), config_file=str(configs / "inference.yaml"), device="cpu",
                          **{"network_def#channels": [4, 8, 16], "network_def#strides": [2, 2]})  # fmt: skip
    jsonschema = pytest.importorskip("jsonschema")
    from test_bundle_conformance import SCHEMA_20240725

    for bundle in (LA, WMH):
        jsonschema.validate(json.loads((REPO_BUNDLES / bundle / "configs" / "metadata.json").read_text()), SCHEMA_20240725)


@pytest.mark.slow
def test_posthoc_platt_and_isotonic_on_a_3d_run(la_nrrd):
    """MEEP's post-hoc baselines on a 3D bundle: Platt and isotonic fitted on the validation split of the CE run
    (shared fragments bundles/calibrate/), then evaluated; the calibrated probabilities are what the metrics read."""
    ov = dict(la_nrrd["ov"], calibration_sample_size=5000)
    run = la_nrrd["runs"] / "ce"
    for name in ("platt", "isotonic"):
        run_workflow("calibrate", config_files(LA, "ce", f"calibrate/{name}.yaml"), **ov)
        assert json.loads((run / "models" / f"calibrator_{name}.json").read_text())["calibrator"] == name
        run_workflow("evaluate", config_files(LA, "ce", "evaluate.yaml"), calibrator=name, **ov)
        s = _summary(run / f"eval_{name}")
        _check_summary(s)
        assert _cases(run / f"eval_{name}") == _cases(run / "eval")
    before, platt = _summary(run / "eval"), _summary(run / "eval_platt")
    assert platt["brier"] != before["brier"]  # the calibrator changed the probabilities evaluated
