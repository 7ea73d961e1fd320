"""The shipped LA detector (models/detector.pt, the la2018 fold ensemble) on real scans, straight from the clone.

Skipped where ../shared/data/la2018 is absent. Checks that the shipped weights load with their plan and segment the
clean DICOM export against its label, and that the same scan inside a field of view twice as wide (dark margin, as a
whole-chest export) gives the same mask and the same LA slices.
"""

import csv
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from tests.conftest import LA2018, ROOT

CLEAN = "0RZDK210BSMWAA6467LU"
DICOM = os.path.join(LA2018, "dicom", f"{CLEAN}_q0")
SHIPPED = os.path.join(ROOT, "models", "detector.pt")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isdir(DICOM), reason="no la2018 data"),
]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def detector():
    from bundle.inference import load_detector

    return load_detector(SHIPPED)


def test_shipped_detector_segments_the_dicom_export(detector):
    from bundle.inference import load_volume, segment_la

    network, plan = detector
    volume = load_volume(DICOM)
    # the export holds the voxels of qa/<case>_q0.nii.gz in their order (under a scanner-like LPS geometry of its
    # own, not the NIfTI's world position): the label's voxel grid is the export's
    np.testing.assert_array_equal(volume.numpy(), load_volume(os.path.join(LA2018, "qa", f"{CLEAN}_q0.nii.gz")).numpy())
    la = segment_la(network, plan, volume)
    assert not la["reasons"], la["reasons"]
    label = np.asarray(nib.load(os.path.join(LA2018, "labels", f"{CLEAN}.nii.gz")).dataobj)
    assert la["mask"].shape[1:] == label.shape
    assert _dice(la["mask"][0].numpy(), label) >= 0.88


def _wide(path: str):
    """The scan centred in a field of view twice as wide (zeros around it, the same voxel size and world position)."""
    from bundle.transforms import ScaleForegroundPercentiles

    raw = nib.load(path)
    img = np.asarray(raw.dataobj)
    x, y = img.shape[0], img.shape[1]
    wide = np.zeros((2 * x, 2 * y, img.shape[2]), img.dtype)
    ox, oy = x // 2, y // 2
    wide[ox : ox + x, oy : oy + y] = img
    affine = raw.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.array([ox, oy, 0])
    big = ScaleForegroundPercentiles()(
        MetaTensor(torch.as_tensor(wide, dtype=torch.float32)[None], affine=torch.as_tensor(affine))
    )
    return big, (slice(ox, ox + x), slice(oy, oy + y))


def test_wider_field_of_view_finds_the_same_la_and_nothing_in_the_margin(detector):
    from bundle.inference import load_volume, segment_la

    network, plan = detector
    path = os.path.join(LA2018, "images", f"{CLEAN}.nii.gz")
    big, inside = _wide(path)
    small_la, big_la = segment_la(network, plan, load_volume(path)), segment_la(network, plan, big)
    inner = big_la["mask"][0].numpy()[inside]
    assert _dice(small_la["mask"][0].numpy(), inner) >= 0.95  # was 0.02 with slices resized to 128 x 128
    assert int(big_la["mask"].sum()) == int((inner > 0).sum())  # nothing found in the dark margin
    a, b = small_la["selected"], big_la["selected"]
    # the LA ends move by at most 2 slices (1.25 mm; measured: 2 at the lower end)
    assert abs(int(a[0]) - int(b[0])) <= 2 and abs(int(a[-1]) - int(b[-1])) <= 2 and not big_la["reasons"]


@pytest.mark.xfail(
    strict=True,
    reason="measured Dice 0.989 (0.979 with the 0.12 detector): met, but the LA-slice list differs by one slice at "
    "an end (11-68 against 10-68): the UNet is not exactly shift-equivariant and the sliding windows sit elsewhere "
    "relative to the anatomy; windows anchored in world coordinates are the fix, not built yet",
)
def test_same_mask_and_slices_in_a_twice_wider_field_of_view(detector):
    from bundle.inference import load_volume, segment_la

    network, plan = detector
    path = os.path.join(LA2018, "images", f"{CLEAN}.nii.gz")
    big, inside = _wide(path)
    small_la, big_la = segment_la(network, plan, load_volume(path)), segment_la(network, plan, big)
    assert _dice(small_la["mask"][0].numpy(), big_la["mask"][0].numpy()[inside]) >= 0.98
    assert small_la["selected"].tolist() == big_la["selected"].tolist()


def test_fresh_clone_assesses_the_exports_with_the_shipped_weights(tmp_path):
    from scripts import assess

    out = tmp_path / "out"
    assert assess.main([os.path.join(LA2018, "dicom"), "--output_dir", str(out), "--la_only"]) == 0
    with open(out / "qa_report.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    volumes = [r for r in rows if r["n_slices"] == "88"]
    assert len(volumes) == 2 and all(r["status"] == "ok" for r in volumes)
    assert all(40 <= int(r["n_la_slices"]) <= 75 for r in volumes)
