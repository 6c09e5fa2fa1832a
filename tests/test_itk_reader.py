"""calibmonai.datasets.itk_reader: MetaImage/NRRD files of any voxel type (PROMISE12's signed 8-bit reference
segmentations), everything else read as MONAI reads it."""

from __future__ import annotations

import os
import sys

import nibabel as nib
import numpy as np
import pytest
from monai.data import ITKReader
from monai.transforms import LoadImage, LoadImaged

from calibmonai.datasets.itk_reader import AnyPixelITKReader, load_image, load_imaged

sys.path.insert(0, os.path.dirname(__file__))
from lookalike_more import write_itk, write_metaimage_char  # noqa: E402

VALUES = np.array([[[-3, 0], [1, 100]], [[127, -128], [5, 2]], [[0, 0], [1, 1]]], dtype=np.int8)  # (x, y, z) = (3, 2, 2)


def test_signed_char_metaimage_is_read_exactly(tmp_path):
    path = write_metaimage_char(tmp_path / "Case00_segmentation.mhd", VALUES, (0.625, 0.5, 3.6))
    with pytest.raises(Exception, match="itk"):  # what MONAI's own reader does with this file
        LoadImage(image_only=True)(str(path))
    img = load_image(image_only=True)(str(path))
    assert img.shape == (3, 2, 2) and img.dtype.is_floating_point
    np.testing.assert_array_equal(img.numpy(), VALUES.astype(np.float32))  # every int8 value, negatives too
    np.testing.assert_allclose(np.abs(np.diag(img.affine.numpy()))[:3], (0.625, 0.5, 3.6))
    d = load_imaged(["label"], image_only=True, ensure_channel_first=True)({"label": str(path)})
    assert d["label"].shape == (1, 3, 2, 2) and float(d["label"].min()) == -128.0


@pytest.mark.parametrize("name", ["case.mhd", "case.nrrd"])
def test_wrapped_types_read_as_monai_reads_them(tmp_path, name):
    arr = np.arange(24, dtype=np.int16).reshape(4, 3, 2) * 100 - 700
    path = str(write_itk(tmp_path / name, arr, (1.0, 2.0, 3.0)))
    ours = load_image(image_only=True)(path)
    theirs = LoadImage(image_only=True, reader=ITKReader())(path)
    assert ours.dtype == theirs.dtype  # no conversion where ITK wraps the type
    np.testing.assert_array_equal(ours.numpy(), arr)
    np.testing.assert_array_equal(ours.affine.numpy(), theirs.affine.numpy())


def test_nifti_stays_with_nibabel(tmp_path):
    arr = np.random.default_rng(0).normal(size=(5, 4, 3)).astype(np.float32)
    affine = np.diag([-0.8, 0.8, 2.5, 1.0])
    path = str(tmp_path / "x.nii.gz")
    nib.save(nib.Nifti1Image(arr, affine), path)
    reader = AnyPixelITKReader()
    assert not reader.verify_suffix(path) and not reader.verify_suffix([path, path])
    assert reader.verify_suffix("a/Case00.MHD") and reader.verify_suffix(["lgemri.nrrd", "x.mha"])
    ours = load_image(image_only=True)(path)
    theirs = LoadImage(image_only=True)(path)
    assert ours.meta["filename_or_obj"] == path
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    np.testing.assert_array_equal(ours.affine.numpy(), theirs.affine.numpy())


def test_errors_are_not_hidden(tmp_path):
    import itk

    path = write_metaimage_char(tmp_path / "seg.mhd", VALUES, (1, 1, 1))
    with pytest.raises(Exception, match="TemplateTypeError|itk"):  # a pixel type given is used as given
        LoadImage(image_only=True, reader=AnyPixelITKReader(pixel_type=itk.SC))(str(path))
    (tmp_path / "seg.raw").write_bytes(b"\x00" * 3)  # truncated voxel file: ITK's own error, not retried away
    with pytest.raises(RuntimeError):
        load_image(image_only=True)(str(path))
    with pytest.raises(ValueError, match="give no reader"):
        load_imaged(["image"], reader="ITKReader")
    with pytest.raises(ValueError, match="give no reader"):
        load_image(reader=ITKReader())
    assert isinstance(load_imaged(["image"]), LoadImaged)
