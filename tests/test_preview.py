"""Preview PNGs of inference outputs (calibmonai.preview, `calibmonai preview`, `calibmonai infer --preview true`)."""

import nibabel as nib
import numpy as np
import pytest
from matplotlib.image import imread

from calibmonai.cli import main
from calibmonai.preview import _canonical, find_outputs, preview_folder, preview_panels, write_preview


def _write_case(folder, case, seg, affine, ext=".nii.gz", conf=None, unc=None):
    folder.mkdir(parents=True, exist_ok=True)
    conf = np.full(seg.shape, 0.9, np.float32) if conf is None else conf
    unc = np.full(seg.shape, 0.2, np.float32) if unc is None else unc
    for name, arr in (("seg", seg.astype(np.uint8)), ("conf", conf), ("uncertainty", unc)):
        nib.save(nib.Nifti1Image(arr, affine), str(folder / f"{case}_{name}{ext}"))
    return {k: folder / f"{case}_{k}{ext}" for k in ("seg", "conf", "uncertainty")}


def test_panels_cut_through_the_foreground_centre():
    rng = np.random.default_rng(0)
    shape = (20, 16, 12)
    seg = np.zeros(shape, np.uint8)
    seg[4:11, 2:7, 8:12] = 2  # bounding box centre (7, 4, 9)
    seg[5, 3, 9] = 1
    conf, unc, image = (rng.random(shape).astype(np.float32) for _ in range(3))
    panels = dict(preview_panels(seg, conf, unc, image))
    assert list(panels) == ["axial", "coronal", "sagittal"]
    for name, a in (("seg", seg), ("conf", conf), ("uncertainty", unc), ("image", image)):
        np.testing.assert_array_equal(panels["axial"][name], a[:, :, 9].T)
        np.testing.assert_array_equal(panels["coronal"][name], a[:, 4, :].T)
        np.testing.assert_array_equal(panels["sagittal"][name], a[7, :, :].T)
    # nothing segmented: the volume's centre; a 2D map and a one-voxel-thick volume: their plane
    empty = dict(preview_panels(np.zeros(shape), conf, unc))
    np.testing.assert_array_equal(empty["axial"]["conf"], conf[:, :, 6].T)
    assert "image" not in empty["axial"]
    flat = preview_panels(seg[:, :, 9:10], conf[:, :, 9:10], unc[:, :, 9:10])
    assert [v for v, _ in flat] == ["plane"] and flat[0][1]["seg"].shape == (16, 20)
    np.testing.assert_array_equal(flat[0][1]["conf"], conf[:, :, 9].T)
    picture = preview_panels(seg[:, :, 9], conf[:, :, 9], unc[:, :, 9])  # 2D maps: a picture's, shown first row on top
    assert [v for v, _ in picture] == ["picture"]
    np.testing.assert_array_equal(picture[0][1]["seg"], seg[:, :, 9].T)
    with pytest.raises(ValueError, match=r"conf map has shape \(20, 16\), the segmentation \(20, 16, 12\)"):
        preview_panels(seg, conf[:, :, 0], unc)


def test_maps_are_shown_in_ras_whatever_their_orientation(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    lps = np.diag([-2.0, -2.0, 2.0, 1.0])  # x towards the patient's left, y posterior: flipped in RAS
    nib.save(nib.Nifti1Image(data, lps), str(tmp_path / "a.nii.gz"))
    arr, affine = _canonical(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(arr, data[::-1, ::-1, :])
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    nib.save(nib.Nifti1Image(np.stack([data, data + 1], -1), lps), str(tmp_path / "p.nii.gz"))  # 4D: first volume
    np.testing.assert_array_equal(_canonical(tmp_path / "p.nii.gz")[0], data[::-1, ::-1, :])


def test_find_outputs_layouts_and_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_outputs(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="run calibmonai infer first"):
        find_outputs(tmp_path / "empty")
    seg = np.zeros((4, 4, 4), np.uint8)
    out = tmp_path / "out"
    _write_case(out, "case one", seg, np.eye(4))
    _write_case(out / "case2", "case2", seg, np.eye(4), ext=".nii")  # separate_folder, .nii
    (out / ".tmp-1-x_seg.nii.gz").write_bytes(b"partial")  # a writer's temporary file
    found = find_outputs(out)
    assert sorted(found) == ["case one", "case2"]
    assert found["case2"]["uncertainty"] == out / "case2" / "case2_uncertainty.nii"
    (out / "case one_conf.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"case 'case one': .*case one_conf\.nii\.gz missing"):
        find_outputs(out)


def test_preview_folder_writes_one_png_per_case_and_isolates_a_damaged_one(tmp_path, capsys):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    seg = np.zeros((24, 20, 16), np.uint8)
    seg[6:18, 5:15, 4:12] = 1
    seg[10:14, 8:12, 6:10] = 2
    out = tmp_path / "out"
    maps = _write_case(out, "good", seg, affine)
    _write_case(out, "bad", seg, affine)
    (out / "bad_conf.nii.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    scan = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(1).random(seg.shape).astype(np.float32), affine), str(scan))
    with pytest.raises(RuntimeError, match=r"1 preview\(s\) failed: bad: "):
        preview_folder(out, {"good": scan}, class_names=["background", "organ", "lesion"])
    png = imread(out / "good_preview.png")
    assert png.ndim == 3 and png.shape[0] > 200 and png.shape[1] > 600 and png[..., :3].std() > 0.05  # drawn, not blank
    assert not (out / "bad_preview.png").exists() and not list(out.glob(".tmp-*"))
    text = capsys.readouterr().out
    assert "bad: FAILED" in text and "good_preview.png" in text
    # a scan on another grid is left out of the picture, the maps are still drawn
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), affine), str(other))
    png_path, note = write_preview(maps, tmp_path / "p.png", image_file=other)
    assert png_path.is_file() and note == "scan on another grid than the maps: not shown"
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b" + b"x" * 9)
    assert write_preview(maps, tmp_path / "q.png", image_file=tmp_path / "broken.nii.gz")[1].startswith("scan unreadable (")
    assert write_preview(maps, tmp_path / "r.png", image_file=scan)[1] == ""
    # 2D outputs (BUSI-like): one row
    flat = _write_case(tmp_path / "flat", "img", seg[:, :, 8], np.eye(4), conf=np.full((24, 20), 0.7, np.float32), unc=np.zeros((24, 20), np.float32))
    one_row = imread(write_preview(flat, tmp_path / "flat.png")[0])
    assert one_row.shape[0] < png.shape[0] / 2


def test_preview_command(tmp_path, capsys):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    seg = np.zeros((16, 16, 8), np.uint8)
    seg[4:12, 4:12, 2:6] = 3
    out = tmp_path / "out"
    _write_case(out, "sub 1", seg, affine)
    scans = tmp_path / "scans"
    scans.mkdir()
    nib.save(nib.Nifti1Image(np.ones(seg.shape, np.float32), affine), str(scans / "sub 1.nii.gz"))
    main(["preview", str(out), "--input", str(scans)])
    assert (out / "sub 1_preview.png").is_file()
    assert "maps only" not in capsys.readouterr().out  # the scan was found by its case name
    with pytest.raises(SystemExit) as e:
        main(["preview", str(out), "--input", str(tmp_path / "nowhere")])
    assert e.value.code == 2 and "--input" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["preview", str(tmp_path / "scans")])  # no inference output there
    assert "run calibmonai infer first" in capsys.readouterr().err


def test_preview_says_why_a_scan_is_not_drawn_and_names_labels_the_bundle_lacks(tmp_path, capsys):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    seg = np.zeros((16, 16, 8), np.uint8)
    seg[4:12, 4:12, 2:6] = 1
    seg[6:9, 6:9, 3:5] = 3  # a label of a 4-class bundle's maps, previewed with a 2-class bundle's names
    out = tmp_path / "out"
    _write_case(out, "case a", seg, affine)
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(seg.shape, np.float32), affine), str(other))
    preview_folder(out, {"case b": other})  # scans given, none named like the case
    assert "(no scan of the inputs is named case a: maps only)" in capsys.readouterr().out
    preview_folder(out, None)
    assert "(no scan given: maps only)" in capsys.readouterr().out
    preview_folder(out, {"case a": other}, class_names=["background", "lesion"])
    text = capsys.readouterr().out
    assert "labels [3] are no class of the bundle (2 classes): drawn unnamed; right --bundle?" in text and "maps only" not in text
    _, note = write_preview(find_outputs(out)["case a"], tmp_path / "p.png", image_file=tmp_path / "missing.nii.gz", class_names=["background", "lesion"])
    assert note.startswith("scan unreadable (") and note.endswith("; labels [3] are no class of the bundle (2 classes): drawn unnamed; right --bundle?")
    _, note = write_preview(find_outputs(out)["case a"], tmp_path / "q.png", class_names=["bg", "a", "b", "c"])
    assert note == ""
