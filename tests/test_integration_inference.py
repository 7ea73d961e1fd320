"""Inference on the real la2018 exports (a clean and a messy DICOM export) and a folder of its NIfTI volumes.

Skipped where ../shared/data/la2018 is absent. The networks are the tiny real ones of test_workflow_inference (a
bright-pixel detector and the bundle's QANet, shrunk and untrained): this checks reading, statuses and geometry on
real files, not the verdicts.
"""

import csv
import os

import nibabel as nib
import numpy as np
import pytest
from monai.data import ITKReader
from monai.transforms import LoadImage

from tests.conftest import LA2018
from tests.test_workflow_inference import overrides, run_workflow, weights  # noqa: F401  (a fixture)

DICOM = os.path.join(LA2018, "dicom")
CLEAN, MESSY = "0RZDK210BSMWAA6467LU_q0", "1MHBF3G6DCPWHSKG7XCP_q1_messy"
NIFTI = ["0RZDK210BSMWAA6467LU_q0.nii.gz", "1MHBF3G6DCPWHSKG7XCP_q1.nii.gz", "0RZDK210BSMWAA6467LU_q1.nii.gz"]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:the directory"),
    pytest.mark.skipif(not os.path.isdir(os.path.join(DICOM, MESSY)), reason="no la2018 data"),
]


def test_la2018_exports_and_nifti_folder(weights, tmp_path):  # noqa: F811
    folder = tmp_path / "nifti"
    folder.mkdir()
    for name in NIFTI:  # a folder of NIfTI volumes, linked (the data never enters the repository)
        os.symlink(os.path.join(LA2018, "qa", name), folder / name)
    out = tmp_path / "out"
    run_workflow(**overrides(weights, [DICOM, str(folder)], out, spatial_size=64))
    with open(out / "qa_report.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    status = {(os.path.basename(r["input"]), r["n_slices"]): r["status"] for r in rows}
    assert status == {
        (CLEAN, "88"): "ok",
        (MESSY, "88"): "ok",
        (MESSY, "3"): "skipped",
        **{(n, "88"): "ok" for n in NIFTI},
    }
    # the clean export is qa/0RZDK210BSMWAA6467LU_q0.nii.gz as DICOM (other intensity scale, an LPS-derived affine):
    # the same slices reach the networks, so the same results
    dicom_row = next(r for r in rows if os.path.basename(r["input"]) == CLEAN)
    nifti_row = next(r for r in rows if os.path.basename(r["input"]) == NIFTI[0])
    for key in ("n_la_slices", "p_nulling", "p_sharpness", "p_enhancement", "p_fibrosis", "diagnostic"):
        assert dicom_row[key] == nifti_row[key], key
    localizer = next(r for r in rows if r["n_slices"] == "3")
    assert "'localizer': only 3 slices" in localizer["message"]

    # each mask has the geometry ITK / nibabel give the input
    clean_mask = nib.load(next(out.glob(f"{CLEAN}_*_la_mask.nii.gz")))
    ref = LoadImage(reader=ITKReader(), image_only=True)(os.path.join(DICOM, CLEAN))
    assert clean_mask.shape == tuple(ref.shape)
    np.testing.assert_allclose(clean_mask.affine, np.asarray(ref.affine), atol=1e-4)
    messy_uid = next(r["series_uid"] for r in rows if os.path.basename(r["input"]) == MESSY and r["status"] == "ok")
    ref = LoadImage(reader=ITKReader(series_name=messy_uid), image_only=True)(os.path.join(DICOM, MESSY))
    messy_mask = nib.load(next(out.glob("1MHBF3G6DCPWHSKG7XCP_*_la_mask.nii.gz")))
    assert messy_mask.shape == tuple(ref.shape)
    np.testing.assert_allclose(messy_mask.affine, np.asarray(ref.affine), atol=1e-4)
    for name in NIFTI:
        src, mask = nib.load(folder / name), nib.load(out / name.replace(".nii.gz", "_la_mask.nii.gz"))
        assert mask.shape == src.shape
        np.testing.assert_allclose(mask.affine, src.affine, atol=1e-5)
    assert len(list(out.glob("*_report.html"))) == 2 + len(NIFTI)
