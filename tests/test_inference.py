"""Inference on new scans: grids and affines preserved, calibrated maps, bad scans isolated, nothing overwritten."""

import gzip
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from calibmonai.bundle_export import export_bundle
from calibmonai.bundle_tools import config_files, run_workflow
from calibmonai.calibration import TemperatureScaling
from calibmonai.data import prepare_mni_tissue

BUNDLE = "mni_tissue_seg2d"
SMALL = {"slices_per_volume": 2, "batch_size": 4, "epochs": 1}  # the bundle's own network, so the CLI can load it


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    data = root / "data"
    prepare_mni_tissue(data, num_subjects=4, split=(2, 1, 1), seed=5, progress=False)
    runs = root / "runs"
    run_workflow("training", config_files(BUNDLE, "ce"), dataset_dir=str(data), runs_dir=str(runs), **SMALL)
    run_dir = runs / "mni_tissue" / "ce"
    ts = TemperatureScaling(4)
    with torch.no_grad():
        ts.log_t.fill_(float(np.log(2.5)))
    ts.save(run_dir / "models" / "calibrator_ts.pt")
    volume = nib.load(str(next((data / "images").iterdir()))).get_fdata().astype(np.float32)[10:74, 20:84, 30:50]
    return {"root": root, "data": data, "runs": runs, "run_dir": run_dir, "volume": volume}


def _infer(trained, inputs, out, **kw):
    run_workflow("inference", config_files(BUNDLE, "ce", workflow="inference.yaml"), input_dir=inputs, output_dir=str(out),
                 runs_dir=str(trained["runs"]), **{**SMALL, **kw})  # fmt: skip


def _write_scans(vol, folder):
    folder.mkdir(parents=True, exist_ok=True)
    a = np.eye(4) * 2.0
    a[3, 3] = 1
    a[:3, 3] = [-60, -80, -20]
    nib.save(nib.Nifti1Image(vol, a), str(folder / "plain.nii.gz"))
    # same anatomy stored with another orientation code (ARS: first two voxel axes swapped)
    b = np.zeros((4, 4))
    b[0, 1], b[1, 0], b[2, 2], b[3, 3] = 2.0, 2.0, 2.0, 1.0
    b[:3, 3] = [-60, -80, -20]
    assert nib.aff2axcodes(b) == ("A", "R", "S")
    nib.save(nib.Nifti1Image(np.ascontiguousarray(np.transpose(vol, (1, 0, 2))), b), str(folder / "reoriented.nii"))
    # oblique and anisotropic
    th = 0.3
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    c = np.eye(4)
    c[:3, :3] = rot @ np.diag([1.5, 2.5, 3.5])
    c[:3, 3] = [-40, -70, -30]
    nib.save(nib.Nifti1Image(vol[:, :, ::2].copy(), c), str(folder / "oblique.nii.gz"))
    return ["plain", "reoriented", "oblique"]


def test_outputs_keep_each_scans_grid_and_are_consistent(trained, tmp_path):
    names = _write_scans(trained["volume"], tmp_path / "scans")
    _infer(trained, str(tmp_path / "scans"), tmp_path / "out", save_probs=True)
    _infer(trained, str(tmp_path / "scans"), tmp_path / "out_ts", save_probs=True, calibrator="ts")
    for name in names:
        src = nib.load(str(next((tmp_path / "scans").glob(name + ".*"))))
        seg = nib.load(str(tmp_path / "out" / f"{name}_seg.nii.gz"))
        conf = nib.load(str(tmp_path / "out" / f"{name}_conf.nii.gz")).get_fdata()
        unc = nib.load(str(tmp_path / "out" / f"{name}_uncertainty.nii.gz")).get_fdata()
        prob = nib.load(str(tmp_path / "out" / f"{name}_prob.nii.gz")).get_fdata()
        assert seg.shape == src.shape and prob.shape == src.shape + (4,)
        np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)
        assert nib.aff2axcodes(seg.affine) == nib.aff2axcodes(src.affine)
        np.testing.assert_allclose(prob.sum(-1), 1.0, atol=1e-4)
        np.testing.assert_array_equal(seg.get_fdata(), prob.argmax(-1))
        np.testing.assert_allclose(conf, prob.max(-1), atol=1e-5)
        assert unc.min() >= 0 and unc.max() <= 1
        want_unc = -(prob * np.log(np.clip(prob, 1e-12, None))).sum(-1) / np.log(4)
        np.testing.assert_allclose(unc, np.clip(want_unc, 0, 1), atol=1e-4)
        seg_ts = nib.load(str(tmp_path / "out_ts" / f"{name}_seg.nii.gz")).get_fdata()
        conf_ts = nib.load(str(tmp_path / "out_ts" / f"{name}_conf.nii.gz")).get_fdata()
        np.testing.assert_array_equal(seg_ts, seg.get_fdata())  # TS keeps the label map (log-probabilities are resampled)
        assert conf_ts.mean() < conf.mean()  # T = 2.5 softens the probabilities
    # the reoriented scan is the same anatomy: its labels map back onto the plain scan's
    plain = nib.load(str(tmp_path / "out" / "plain_seg.nii.gz")).get_fdata()
    reo = nib.load(str(tmp_path / "out" / "reoriented_seg.nii.gz")).get_fdata()
    assert (np.transpose(reo, (1, 0, 2)) == plain).mean() > 0.98
    assert not any(f.startswith(".tmp") for f in os.listdir(tmp_path / "out"))


def test_bad_scans_fail_alone(trained, tmp_path, capsys):
    folder = tmp_path / "scans"
    _write_scans(trained["volume"], folder)
    os.remove(folder / "reoriented.nii")
    os.remove(folder / "oblique.nii.gz")
    vol, aff = trained["volume"], np.diag([2.0, 2.0, 2.0, 1.0])
    (folder / "corrupt.nii.gz").write_bytes(b"this is not a nifti file" * 10)
    raw = gzip.compress(nib.Nifti1Image(vol, aff).to_bytes())
    (folder / "truncated.nii.gz").write_bytes(raw[: len(raw) // 3])
    nib.save(nib.Nifti1Image(vol[:, :, 5].copy(), aff), str(folder / "flat2d.nii.gz"))
    nan = vol.copy()
    nan[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, aff), str(folder / "nanvoxel.nii.gz"))
    nib.save(nib.Nifti1Image(np.stack([vol, vol], -1), aff), str(folder / "twomodal.nii.gz"))
    inputs = sorted(str(p) for p in folder.iterdir()) + [str(folder / "missing.nii.gz")]
    with pytest.raises(Exception) as info:
        _infer(trained, inputs, tmp_path / "out")
    text = capsys.readouterr().out
    assert (tmp_path / "out" / "plain_seg.nii.gz").is_file()
    assert "6 failed" in text and "1 scan(s) segmented" in text
    for case, reason in [("corrupt", "corrupt"), ("truncated", "cannot read"), ("flat2d", "2D image"), ("nanvoxel", "non-finite"),
                         ("twomodal", "channel"), ("missing", "file not found")]:  # fmt: skip
        assert f"FAILED {case}:" in text and reason in text.split(f"FAILED {case}:")[1].splitlines()[0], case
        assert not list((tmp_path / "out").glob(f"{case}_*"))
    root = info.value
    while root.__cause__ is not None:
        root = root.__cause__
    assert "6 of 7 scan(s) failed" in str(root)
    # the CLI exits non-zero with a one-line error, no traceback
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-m", "calibmonai.cli", "infer", "--input", str(folder), "--output", str(tmp_path / "cli_out"),
                        "--runs_dir", str(trained["runs"])], capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert r.returncode == 1 and "scan(s) failed" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "cli_out" / "plain_seg.nii.gz").is_file()


def _segment_plain_then_mark(trained, tmp_path):
    """One scan segmented into ``out``; its ``_seg`` output then replaced by a sentinel."""
    folder = tmp_path / "scans"
    _write_scans(trained["volume"], folder)
    for f in ("reoriented.nii", "oblique.nii.gz"):
        os.remove(folder / f)
    out = tmp_path / "out"
    _infer(trained, str(folder), out)
    seg = out / "plain_seg.nii.gz"
    seg.write_bytes(b"sentinel")
    return folder, out, seg


def test_existing_outputs_are_kept_unless_overwrite(trained, tmp_path, capsys):
    folder, out, seg = _segment_plain_then_mark(trained, tmp_path)
    _infer(trained, str(folder), out)
    assert seg.read_bytes() == b"sentinel"  # an existing output is never overwritten without --overwrite
    assert "skipped" in capsys.readouterr().out
    _infer(trained, str(folder), out, overwrite=True)
    assert nib.load(str(seg)).shape == trained["volume"].shape


def test_partial_outputs_are_never_completed_with_another_runs_files(trained, tmp_path, capsys):
    folder, out, seg = _segment_plain_then_mark(trained, tmp_path)
    # probability maps asked for later: the existing seg/conf/uncertainty are not rewritten beside a new prob
    capsys.readouterr()
    with pytest.raises(Exception, match="Failed to evaluate"):  # MONAI's wrapper of the engine's RuntimeError
        _infer(trained, str(folder), out, save_probs=True)
    text = capsys.readouterr().out
    assert ("FAILED plain: some outputs exist (plain_seg.nii.gz, plain_conf.nii.gz, plain_uncertainty.nii.gz) and others "
            "do not (plain_prob.nii.gz): nothing written; --overwrite true to redo") in text  # fmt: skip
    assert seg.read_bytes() == b"sentinel" and not (out / "plain_prob.nii.gz").exists()
    # one output removed: the others are kept, nothing is written
    os.remove(out / "plain_conf.nii.gz")
    with pytest.raises(Exception, match="Failed to evaluate"):
        _infer(trained, str(folder), out)
    assert "FAILED plain: some outputs exist (plain_seg.nii.gz, plain_uncertainty.nii.gz)" in capsys.readouterr().out
    assert seg.read_bytes() == b"sentinel" and not (out / "plain_conf.nii.gz").exists()
    _infer(trained, str(folder), out, overwrite=True, save_probs=True)
    assert all(nib.load(str(out / f"plain_{k}.nii.gz")).shape[:3] == trained["volume"].shape for k in ("seg", "conf", "uncertainty", "prob"))


def test_outputs_written_beside_the_scans_are_not_segmented_again(trained, tmp_path, capsys):
    folder = tmp_path / "scans"
    _write_scans(trained["volume"], folder)
    os.remove(folder / "oblique.nii.gz")
    _infer(trained, str(folder), folder)  # the output folder is the input folder
    before = sorted(p.name for p in folder.iterdir())
    assert "plain_seg.nii.gz" in before
    capsys.readouterr()
    _infer(trained, str(folder), folder)
    text = capsys.readouterr().out
    assert "left out 6 file(s) of the output folder that are outputs of an earlier run" in text
    assert "2 skipped" in text and sorted(p.name for p in folder.iterdir()) == before  # no plain_seg_seg.nii.gz


def test_exported_bundle_runs_inference(trained, tmp_path):
    folder = tmp_path / "scans"
    _write_scans(trained["volume"], folder)
    os.remove(folder / "reoriented.nii")
    os.remove(folder / "oblique.nii.gz")
    cfgs = config_files(BUNDLE, "ce")
    from monai.bundle import ConfigParser

    out = tmp_path / "exported"
    export_bundle(BUNDLE, "ce", str(out), runs_dir=str(trained["runs"]))
    assert (out / "models" / "model.pt").is_file() and (out / "models" / "calibrator_ts.pt").is_file()
    assert ConfigParser.load_config_files(cfgs)  # the repository configs still load
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.json",
           "--input_dir", str(folder), "--output_dir", str(tmp_path / "pred")]  # fmt: skip
    r = subprocess.run(cmd, cwd=out, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert nib.load(str(tmp_path / "pred" / "plain_seg.nii.gz")).shape == trained["volume"].shape


def test_itk_formats_are_read(trained, tmp_path):
    from monai.data import ITKWriter

    folder = tmp_path / "scans"
    folder.mkdir()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-60, -80, -20]
    writer = ITKWriter(output_dtype=np.float32)
    writer.set_data_array(torch.as_tensor(trained["volume"]), channel_dim=None)
    writer.set_metadata({"affine": torch.as_tensor(affine), "original_affine": torch.as_tensor(affine)}, resample=False)
    writer.write(str(folder / "scan.mha"))
    _infer(trained, str(folder), tmp_path / "out")
    seg = nib.load(str(tmp_path / "out" / "scan_seg.nii.gz"))
    assert seg.shape == trained["volume"].shape
    np.testing.assert_allclose(seg.affine, affine, atol=1e-4)


def test_find_scans_inputs_and_modality_pattern(tmp_path):
    from calibmonai.inference import find_scans

    for name in ("b_0000.nii.gz", "b_0001.nii.gz", "a_0000.nii.gz", "a_0001.nii.gz", "notes.txt", "c.mha"):
        (tmp_path / name).write_bytes(b"x")
    assert find_scans(str(tmp_path), num_modalities=2) == [
        ("a", [str(tmp_path / "a_0000.nii.gz"), str(tmp_path / "a_0001.nii.gz")]),
        ("b", [str(tmp_path / "b_0000.nii.gz"), str(tmp_path / "b_0001.nii.gz")]),
        ("c", [str(tmp_path / "c.mha")]),
    ]
    assert [c for c, _ in find_scans(str(tmp_path / "*_0000.nii.gz"))] == ["a", "b"]  # nnU-Net's single-channel naming
    assert [c for c, _ in find_scans(str(tmp_path / "*_0001.nii.gz"))] == ["a_0001", "b_0001"]
    assert find_scans([str(tmp_path / "c.mha")]) == [("c", [str(tmp_path / "c.mha")])]
    with pytest.raises(FileNotFoundError, match="no scan found"):
        find_scans(str(tmp_path / "*.nrrd"))


def test_3d_network_with_sliding_window(tmp_path):
    """infer_scans with a 3D network and MONAI's SlidingWindowInferer (the path of 3D bundles)."""
    from monai.inferers import SlidingWindowInferer
    from monai.networks.nets import UNet
    from monai.transforms import Compose, LoadImaged, NormalizeIntensityd, Orientationd

    from calibmonai.inference import infer_scans

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=0)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    pre = Compose([LoadImaged(keys="image", image_only=True, ensure_channel_first=True), Orientationd(keys="image", axcodes="RAS"),
                   NormalizeIntensityd(keys="image")])  # fmt: skip
    aff = np.diag([1.0, 1.2, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 18, 11)).astype(np.float32), aff), str(tmp_path / "vol.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((20, 18), np.float32), aff), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(RuntimeError, match="1 of 2 scan"):
        infer_scans([str(tmp_path / "vol.nii.gz"), str(tmp_path / "flat.nii.gz")], str(tmp_path / "out"), net, str(tmp_path / "model.pt"),
                    pre, SlidingWindowInferer(roi_size=(16, 16, 8), sw_batch_size=2), num_classes=3)  # fmt: skip
    seg = nib.load(str(tmp_path / "out" / "vol_seg.nii.gz"))
    assert seg.shape == (20, 18, 11)
    np.testing.assert_allclose(seg.affine, aff)


def test_single_modality_scan_named_like_a_modality_file_is_skipped_when_done(trained, tmp_path):
    """A one-file scan called ``x_0000.nii.gz`` (nnU-Net's naming) is case ``x``: its outputs carry that name, and a
    second run without --overwrite finds and keeps them."""
    folder = tmp_path / "scans"
    _write_scans(trained["volume"], folder)
    for f in ("reoriented.nii", "oblique.nii.gz"):
        os.remove(folder / f)
    os.rename(folder / "plain.nii.gz", folder / "x_0000.nii.gz")
    out = tmp_path / "out"
    _infer(trained, str(folder), out)
    seg = out / "x_seg.nii.gz"
    assert seg.is_file() and not (out / "x_0000_seg.nii.gz").exists()
    seg.write_bytes(b"sentinel")
    _infer(trained, str(folder), out)
    assert seg.read_bytes() == b"sentinel"


def test_infer_with_preview_writes_a_png_per_segmented_scan(trained, tmp_path, capsys):
    from matplotlib.image import imread

    from calibmonai.cli import main

    folder = tmp_path / "scans"
    names = _write_scans(trained["volume"], folder)
    out = tmp_path / "out"
    main(["infer", "--input", str(folder), "--output", str(out), "--method", "ce", "--runs_dir", str(trained["runs"]),
          "--preview", "true", "--calibrator", "ts"])  # fmt: skip
    for name in names:
        png = imread(out / f"{name}_preview.png")
        assert png.ndim == 3 and png[..., :3].std() > 0.05
    text = capsys.readouterr().out
    assert text.count("_preview.png") == 3 and "no scan given" not in text  # each scan found under its maps


def _hashes(folder):
    import hashlib

    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.glob("*.nii.gz"))}


def test_outputs_of_other_weights_or_another_calibrator_are_not_taken_as_done(trained, tmp_path, capsys):
    """Without --overwrite a finished scan is skipped only when the same weights and calibrator made its maps (the
    output folder's calibmonai_outputs.json); otherwise it fails, nothing written, saying what differs."""
    import json
    import shutil

    folder = tmp_path / "scans"
    folder.mkdir()
    nib.save(nib.Nifti1Image(trained["volume"], np.diag([2.0, 2.0, 2.0, 1.0])), str(folder / "plain.nii.gz"))
    out = tmp_path / "out"
    _infer(trained, str(folder), out)
    record = json.loads((out / "calibmonai_outputs.json").read_text())["plain"]
    ckpt = trained["run_dir"] / "models" / "model.pt"
    import hashlib

    assert record == {"checkpoint": str(ckpt), "checkpoint_sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(), "calibrator": "none"}
    before = _hashes(out)
    capsys.readouterr()
    _infer(trained, str(folder), out)  # the same run again: skipped
    assert "plain: outputs exist, skipped" in capsys.readouterr().out and _hashes(out) == before
    moved = tmp_path / "moved_runs"  # the same weights elsewhere make the same maps: still done
    shutil.copytree(trained["runs"], moved)
    run_workflow("inference", config_files(BUNDLE, "ce", workflow="inference.yaml"), input_dir=str(folder), output_dir=str(out),
                 runs_dir=str(moved), **SMALL)  # fmt: skip
    assert "plain: outputs exist, skipped" in capsys.readouterr().out and _hashes(out) == before
    with pytest.raises(Exception, match="Failed to evaluate"):  # the TS maps are not the uncalibrated ones
        _infer(trained, str(folder), out, calibrator="ts")
    assert "FAILED plain: its outputs exist but they were made with calibrator none, this run uses ts (sha256" in capsys.readouterr().out
    assert _hashes(out) == before
    other_runs = tmp_path / "other_runs"  # other weights under another path
    shutil.copytree(trained["runs"], other_runs)
    torch.save({k: v + 0.01 for k, v in torch.load(other_runs / "mni_tissue" / "ce" / "models" / "model.pt").items()},
               other_runs / "mni_tissue" / "ce" / "models" / "model.pt")  # fmt: skip
    with pytest.raises(Exception, match="Failed to evaluate"):
        run_workflow("inference", config_files(BUNDLE, "ce", workflow="inference.yaml"), input_dir=str(folder), output_dir=str(out),
                     runs_dir=str(other_runs), **SMALL)  # fmt: skip
    assert f"they were made with the weights {ckpt} (sha256 {record['checkpoint_sha256'][:12]}), this run uses" in capsys.readouterr().out
    assert _hashes(out) == before
    _infer(trained, str(folder), out, calibrator="ts", overwrite=True)  # replaced, and recorded
    assert json.loads((out / "calibmonai_outputs.json").read_text())["plain"]["calibrator"] == "ts"
    assert _hashes(out) != before
    (out / "calibmonai_outputs.json").unlink()  # outputs nobody recorded (another tool, an older version)
    with pytest.raises(Exception, match="Failed to evaluate"):
        _infer(trained, str(folder), out, calibrator="ts")
    assert "no record in calibmonai_outputs.json says which weights and calibrator made them" in capsys.readouterr().out


def test_scans_with_size_one_axes_keep_their_grid(trained, tmp_path, capsys):
    # MONAI's writer squeezed trailing size-1 axes: a 40x40x1 scan got 40x40 maps, a 1x1x1 scan stopped the whole run
    folder = tmp_path / "scans"
    folder.mkdir()
    rng = np.random.default_rng(3)
    shapes = {"flat": (40, 36, 1), "voxel": (1, 1, 1), "line": (30, 1, 1), "first": (1, 30, 28)}
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    for name, shape in shapes.items():
        nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32), affine), str(folder / f"{name}.nii.gz"))
    _infer(trained, str(folder), tmp_path / "out", save_probs=True)
    for name, shape in shapes.items():
        for k in ("seg", "conf", "uncertainty"):
            img = nib.load(str(tmp_path / "out" / f"{name}_{k}.nii.gz"))
            assert img.shape == shape, (name, k, img.shape)
            np.testing.assert_allclose(img.affine, affine)
        prob = nib.load(str(tmp_path / "out" / f"{name}_prob.nii.gz")).get_fdata()
        seg = nib.load(str(tmp_path / "out" / f"{name}_seg.nii.gz")).get_fdata()
        assert prob.shape == shape + (4,)
        np.testing.assert_array_equal(seg, prob.argmax(-1))


def test_a_scan_whose_outputs_cannot_be_written_fails_alone(trained, tmp_path, capsys, monkeypatch):
    from calibmonai import inference

    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("a_first", "b_broken", "c_last"):
        nib.save(nib.Nifti1Image(trained["volume"][:, :, :6].copy(), np.eye(4)), str(folder / f"{name}.nii.gz"))
    original = inference.AtomicNibabelWriter.write

    def write(self, filename, *args, **kwargs):
        if "b_broken" in str(filename):
            raise OSError("No space left on device")
        return original(self, filename, *args, **kwargs)

    monkeypatch.setattr(inference.AtomicNibabelWriter, "write", write)
    with pytest.raises(Exception, match="Failed to evaluate"):
        _infer(trained, str(folder), tmp_path / "out")
    text = capsys.readouterr().out
    assert "FAILED b_broken: cannot map back or write the outputs of" in text and "No space left on device" in text
    assert (tmp_path / "out" / "a_first_seg.nii.gz").is_file() and (tmp_path / "out" / "c_last_seg.nii.gz").is_file()


def test_outputs_record_damaged_or_left_behind_by_a_failed_overwrite(trained, tmp_path, capsys, monkeypatch):
    import json

    from calibmonai import inference

    folder = tmp_path / "scans"
    folder.mkdir()
    nib.save(nib.Nifti1Image(trained["volume"][:, :, :6].copy(), np.diag([2.0, 2.0, 2.0, 1.0])), str(folder / "plain.nii.gz"))
    out = tmp_path / "out"
    _infer(trained, str(folder), out)
    record = out / "calibmonai_outputs.json"
    # --overwrite with another calibrator that fails half-way (its conf map cannot be written): the earlier maker's
    # record is gone, so the next run of that maker does not take the mixed maps as its own
    original = inference.AtomicNibabelWriter.write

    def write(self, filename, *args, **kwargs):
        if str(filename).endswith("_conf.nii.gz"):
            raise OSError("No space left on device")
        return original(self, filename, *args, **kwargs)

    monkeypatch.setattr(inference.AtomicNibabelWriter, "write", write)
    with pytest.raises(Exception, match="Failed to evaluate"):
        _infer(trained, str(folder), out, calibrator="ts", overwrite=True)
    monkeypatch.undo()
    assert "plain" not in json.loads(record.read_text())
    capsys.readouterr()
    with pytest.raises(Exception, match="Failed to evaluate"):
        _infer(trained, str(folder), out)
    assert "no record in calibmonai_outputs.json" in capsys.readouterr().out
    # a damaged record stops the run before any scan, naming it (it would be overwritten with this run's cases only)
    record.write_text("{not json")
    with pytest.raises(Exception) as exc:
        _infer(trained, str(folder), out, overwrite=True)
    from calibmonai.cli import error_message

    assert f"the outputs record {record} cannot be read" in error_message(exc.value)
    assert record.read_text() == "{not json"


def test_outputs_record_of_a_calibrator_function_is_the_same_at_every_run(tmp_path):
    from calibmonai.inference import output_provenance

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")

    def my_calibration(logits):
        return logits

    a, b = output_provenance(str(ckpt), my_calibration), output_provenance(str(ckpt), my_calibration)
    assert a == b and a["calibrator"].endswith("my_calibration") and "0x" not in a["calibrator"]
