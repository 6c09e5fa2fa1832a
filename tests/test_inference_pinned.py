"""Inference behaviours pinned with hand-computable expectations: the calibrator sees the image, maps are resampled
back linearly, which outputs make a scan "done", case names of upper-case extensions, the outputs record's identity
and calibrator hash, and the case name carried in the maps' metadata."""

import hashlib
import math
import os

import nibabel as nib
import numpy as np
import pytest
import torch


# ------------------------------------------------------------------------------------------------------------------
# pure functions
# ------------------------------------------------------------------------------------------------------------------


def test_to_probabilities_gives_the_calibrator_the_image():
    """calibrator(l, im) = softmax(l / (1 + mean(im))) on logits [0, ln 3] and an all-ones image: T = 2, so
    p = [1, sqrt 3] / (1 + sqrt 3) (an image of zeros would give T = 1: [1/4, 3/4])."""
    from calibmonai.prediction import to_probabilities

    logits = torch.tensor([0.0, math.log(3.0)]).reshape(1, 2, 1, 1)
    image = torch.ones(1, 1, 1)  # (M, *spatial): to_probabilities adds the batch axis

    def calibrator(lg, im):
        assert im.shape == (1, 1, 1, 1)
        return torch.softmax(lg / (1.0 + im.mean()), 1)

    p = to_probabilities(logits, image, calibrator).reshape(2)
    s3 = math.sqrt(3.0)
    torch.testing.assert_close(p, torch.tensor([1 / (1 + s3), s3 / (1 + s3)]), rtol=0, atol=1e-6)


def test_case_name_strips_upper_case_extensions():
    from calibmonai.inference import case_name

    assert case_name("/x/Brain_0000.NII.GZ") == "Brain"
    assert case_name("/x/Brain.Nii") == "Brain"
    assert case_name("/x/scan_0000.nii.gz") == "scan"


def test_same_maker_compares_the_calibrator_hash():
    from calibmonai.inference import _same_maker

    a = {"checkpoint": "/a/model.pt", "checkpoint_sha256": "c" * 64, "calibrator": "ts", "calibrator_sha256": "1" * 64}
    assert _same_maker(a, dict(a))
    assert _same_maker(a, {**a, "checkpoint": "/elsewhere/model.pt"})  # where the files lie does not matter
    assert not _same_maker(a, {**a, "calibrator_sha256": "2" * 64})  # a refitted calibrator makes other maps
    assert not _same_maker(a, {**a, "checkpoint_sha256": "d" * 64})
    assert not _same_maker(a, {**a, "calibrator": "vs"})


def test_output_provenance_hashes_the_calibrator_file(tmp_path):
    from calibmonai.calibration import TemperatureScaling
    from calibmonai.inference import output_provenance

    models = tmp_path / "run" / "models"
    models.mkdir(parents=True)
    ckpt = models / "model.pt"
    ckpt.write_bytes(b"weights")
    ts = TemperatureScaling(3)
    ts.save(models / "calibrator_ts.pt")
    record = output_provenance(str(ckpt), "ts")
    assert record["calibrator"] == "ts"
    assert record["checkpoint_sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert record["calibrator_sha256"] == hashlib.sha256((models / "calibrator_ts.pt").read_bytes()).hexdigest()
    assert output_provenance(str(ckpt), "vs")["calibrator_sha256"] == "missing"  # no calibrator_vs.pt


def test_probability_maps_carry_the_case_name():
    from monai.data import MetaTensor

    from calibmonai.inference import ProbabilityMapsd

    prob = torch.tensor([0.2, 0.8]).reshape(2, 1, 1, 1).repeat(1, 2, 2, 2)
    pred = MetaTensor(torch.cat([torch.log(prob), torch.ones(1, 2, 2, 2)]), affine=torch.eye(4))
    out = ProbabilityMapsd(keys="pred", num_classes=2)({"pred": pred, "case": "BraTS19_a"})
    for key in ("seg", "conf", "uncertainty", "prob"):
        assert out[key].meta["case_name"] == "BraTS19_a", key
    assert (out["seg"] == 1).all()
    torch.testing.assert_close(out["conf"], torch.full((1, 2, 2, 2), 0.8), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------------
# infer_scans with a tiny 3D network
# ------------------------------------------------------------------------------------------------------------------


class _Recorder(torch.nn.Module):
    """A 1x1x1 convolution (logits x, -x) that records the spatial shape of every input."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1, 1))
            self.conv.bias.zero_()
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape[2:]))
        return self.conv(x)


def _inferer(x, net):
    return net(x)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("pinned_infer")
    (root / "run" / "models").mkdir(parents=True)
    ckpt = root / "run" / "models" / "model.pt"
    torch.save(_Recorder().state_dict(), ckpt)
    scans = root / "scans"
    scans.mkdir()
    vol = np.random.default_rng(4).normal(size=(8, 4, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(scans / "case1.nii.gz"))
    return {"ckpt": str(ckpt), "scans": str(scans)}


def _plain():
    from monai.transforms import Compose, LoadImaged

    return Compose([LoadImaged(keys="image", image_only=True, ensure_channel_first=True)])


def _infer(tiny, out, preprocessing=None, net=None, **kw):
    from calibmonai.inference import infer_scans

    return infer_scans(tiny["scans"], str(out), net or _Recorder(), tiny["ckpt"], preprocessing or _plain(), _inferer,
                       num_classes=2, **kw)  # fmt: skip


def test_maps_of_a_resampled_scan_are_interpolated_linearly(tiny, tmp_path):
    """Spacingd(2 mm) on an (8, 4, 4) 1-mm scan: the network sees 4 x 2 x 2 = 16 voxels; mapped back to the scan's
    grid by linear interpolation of the log-probabilities, the confidence map has more than 16 values (nearest
    neighbour would repeat the network's 16)."""
    from monai.transforms import Compose, LoadImaged, Spacingd

    pre = Compose([LoadImaged(keys="image", image_only=True, ensure_channel_first=True), Spacingd(keys="image", pixdim=(2.0, 2.0, 2.0))])
    net = _Recorder()
    _infer(tiny, tmp_path / "out", preprocessing=pre, net=net)
    assert net.shapes == [(4, 2, 2)]
    conf = nib.load(str(tmp_path / "out" / "case1_conf.nii.gz")).get_fdata()
    assert conf.shape == (8, 4, 4)
    assert len(np.unique(conf)) > 16


def test_a_missing_uncertainty_map_means_the_scan_is_not_done(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    summary = _infer(tiny, out)
    assert summary.done == ["case1"]
    names = sorted(os.listdir(out))
    assert {"case1_seg.nii.gz", "case1_conf.nii.gz", "case1_uncertainty.nii.gz"} <= set(names)
    os.remove(out / "case1_uncertainty.nii.gz")
    with pytest.raises(RuntimeError, match="1 of 1 scan"):
        _infer(tiny, out)
    text = capsys.readouterr().out
    assert "FAILED case1: some outputs exist (case1_seg.nii.gz, case1_conf.nii.gz) and others do not (case1_uncertainty.nii.gz)" in text
    assert not (out / "case1_uncertainty.nii.gz").exists()


def test_a_probability_map_left_by_another_run_is_never_completed(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    _infer(tiny, out, save_probs=True)
    assert (out / "case1_prob.nii.gz").is_file()
    for k in ("seg", "conf", "uncertainty"):
        os.remove(out / f"case1_{k}.nii.gz")
    with pytest.raises(RuntimeError, match="1 of 1 scan"):
        _infer(tiny, out)
    text = capsys.readouterr().out
    assert "FAILED case1: some outputs exist (case1_prob.nii.gz) and others do not" in text
    assert not (out / "case1_seg.nii.gz").exists()
