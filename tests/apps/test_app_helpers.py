"""The MONAI Label app's helpers that need no MONAI Label: DICOM series conversion, datalists."""

import logging
import os

import nibabel as nib
import numpy as np
import pytest

from apps.monailabel.lib.datalist import datalist_from_pairs, write_datalist
from apps.monailabel.lib.dicom import convert_series_folders, series_to_nifti
from tests.apps.dicom_series import write_series


def _volume(shape=(12, 10, 5)):
    return (np.arange(np.prod(shape)).reshape(shape) % 997).astype(np.uint16)


def test_series_to_nifti_keeps_voxels_and_geometry(tmp_path):
    vol = _volume()
    affine = write_series(str(tmp_path / "s"), vol)
    out = series_to_nifti(str(tmp_path / "s"), str(tmp_path / "s.nii.gz"))
    img = nib.load(out)
    assert img.shape == vol.shape
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(img.dataobj), vol)
    with pytest.raises(FileExistsError, match="not overwritten"):
        series_to_nifti(str(tmp_path / "s"), out)


def test_messy_folder_takes_the_largest_series(tmp_path):
    folder = str(tmp_path / "messy")
    vol = _volume()
    write_series(folder, vol, names="IM{:04d}")  # opaque names
    write_series(folder, _volume((12, 10, 3)) + 7, origin=(0.0, 0.0, 0.0), description="localizer", names="LOC{:d}")
    with open(os.path.join(folder, "DICOMDIR.txt"), "w") as f:
        f.write("not DICOM")
    img = nib.load(series_to_nifti(folder, str(tmp_path / "messy.nii.gz")))
    assert img.shape == vol.shape
    np.testing.assert_array_equal(np.asarray(img.dataobj), vol)


def test_convert_series_folders_skips_bad_and_done_folders(tmp_path, caplog):
    studies = tmp_path / "studies"
    write_series(str(studies / "a"), _volume())
    write_series(str(studies / "b"), _volume())
    (studies / "b.nii.gz").write_bytes(b"already there")
    (studies / "empty").mkdir()
    (studies / "labels" / "final").mkdir(parents=True)
    with caplog.at_level(logging.ERROR):
        written = convert_series_folders(str(studies))
    assert written == [str(studies / "a.nii.gz")]
    assert (studies / "b.nii.gz").read_bytes() == b"already there"
    assert any("empty: no DICOM series found" in r.message for r in caplog.records)
    assert convert_series_folders(str(studies)) == []  # nothing left to do


def test_datalist_from_pairs_and_patients(tmp_path):
    pairs = [
        {"image": "/s/P02_b.nii.gz", "label": "/s/labels/final/P02_b.nii.gz"},
        {"image": "/s/P01.nii", "label": "/s/labels/final/P01.nii"},
    ]
    assert [e["patient"] for e in datalist_from_pairs(pairs)["segmentation"]] == ["P01", "P02_b"]
    by_pattern = datalist_from_pairs(pairs, r"^(P\d+)")["segmentation"]
    assert by_pattern[1] == {"image": "/s/P02_b.nii.gz", "label": "/s/labels/final/P02_b.nii.gz", "patient": "P02"}
    with pytest.raises(ValueError, match="does not match image 'P01'"):
        datalist_from_pairs(pairs, r"^(Q\d+)")
    with pytest.raises(ValueError, match="needs a group"):
        datalist_from_pairs(pairs, r"^P\d+")
    path = write_datalist(datalist_from_pairs(pairs), str(tmp_path / "d" / "datalist.json"))
    with pytest.raises(FileExistsError):
        write_datalist({}, path)
