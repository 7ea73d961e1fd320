"""Input discovery: a messy export, files, folders, datalists, and every kind of bad input as one row."""

import json
import os

import numpy as np
import pytest

from bundle.io.discover import discover_inputs, volume_name
from tests.conftest import write_nifti
from tests.dicom_helpers import phantom, write_corrupt_dicom, write_enhanced, write_junk, write_series


@pytest.fixture
def messy_export(tmp_path):
    """A PACS-like export: nested folders, opaque names, RLE, a localizer, junk, a CT series, a single image."""
    root = tmp_path / "export"
    study = "1.2.3.4.5"
    write_series(
        str(root / "DICOM" / "S0001" / "A"),
        phantom((20, 18, 14)),
        rle=True,
        study_uid=study,
        prefix="I",
        series_uid="1.2.3.4.5.7",
        description="LGE 3D PSIR",
        series_number=7,
    )
    write_series(
        str(root / "DICOM" / "S0001" / "B"),
        phantom((20, 18, 14)),
        study_uid=study,
        prefix="J",
        series_uid="1.2.3.4.5.7",
        description="LGE 3D PSIR",
        series_number=7,
        seed=1,
        origin=(-40.0, 30.0, 12.0 + 14 * 1.5),
    )  # the same series split over two folders
    write_series(
        str(root / "DICOM" / "S0002"),
        phantom((16, 16, 3)),
        spacing=(2, 2, 8),
        row=(0, 1, 0),
        col=(0, 0, -1),
        study_uid=study,
        series_uid="1.2.3.4.5.1",
        description="localizer",
        series_number=1,
    )
    write_series(
        str(root / "DICOM" / "S0003"),
        phantom((20, 18, 14)),
        modality="CT",
        study_uid=study,
        series_uid="1.2.3.4.5.3",
        description="calcium score",
        series_number=3,
    )
    write_series(
        str(root / "DICOM" / "S0004"),
        phantom((20, 18, 1)),
        study_uid=study,
        series_uid="1.2.3.4.5.4",
        description="single",
        series_number=4,
    )
    write_enhanced(
        str(root / "DICOM" / "S0005" / "MF0001"),
        phantom((20, 18, 12)),
        series_uid="1.2.3.4.5.5",
        description="enhanced",
        series_number=5,
    )
    write_junk(str(root))
    write_corrupt_dicom(str(root / "DICOM" / "S0006" / "BROKEN"))
    return root


def test_messy_export(messy_export):
    found = discover_inputs(str(messy_export), min_slices=10)
    by_uid = {s.series_uid: s for s in found.sources if s.series_uid}
    main = by_uid["1.2.3.4.5.7"]
    assert main.status == "ready" and main.n_slices == 28 and len(main.image) == 28  # both folders, one volume
    assert main.input.endswith(os.path.join("DICOM", "S0001"))
    assert main.name == "P001_s7_LGE_3D_PSIR"
    assert by_uid["1.2.3.4.5.5"].status == "ready" and by_uid["1.2.3.4.5.5"].image.endswith("MF0001")
    assert by_uid["1.2.3.4.5.1"].status == "skipped" and "only 3 slices" in by_uid["1.2.3.4.5.1"].message
    assert "'localizer'" in by_uid["1.2.3.4.5.1"].message
    assert by_uid["1.2.3.4.5.3"].status == "skipped" and "modality CT" in by_uid["1.2.3.4.5.3"].message
    assert by_uid["1.2.3.4.5.4"].status == "skipped" and "single 2D image" in by_uid["1.2.3.4.5.4"].message
    errors = [s for s in found.sources if s.status == "error"]
    assert len(errors) == 1 and errors[0].input.endswith("BROKEN") and "unreadable DICOM header" in errors[0].message
    assert sorted(os.path.basename(f) for f in found.ignored) == ["README.TXT", "VERSION", "index.html"]
    assert [v["series_uid"] for v in found.volumes] == [s.series_uid for s in found.sources if s.status == "ready"]
    names = [s.name for s in found.sources if s.name]
    assert len(names) == len(set(names))


def test_files_folders_and_datalist(tmp_path):
    a = write_nifti(str(tmp_path / "vols" / "a.nii.gz"), np.zeros((8, 8, 12), np.uint8))
    write_nifti(str(tmp_path / "vols" / "sub" / "a.nii.gz"), np.zeros((8, 8, 12), np.uint8))
    (tmp_path / "vols" / "notes.txt").write_text("x")
    found = discover_inputs(str(tmp_path / "vols"))
    assert [s.status for s in found.sources] == ["ready", "ready"]
    assert [s.name for s in found.sources] == ["a", "a_2"]  # unique output names
    assert found.ignored == [str(tmp_path / "vols" / "notes.txt")]
    assert discover_inputs(a).volumes[0]["image"] == a

    datalist = tmp_path / "list.json"
    quality = [{"image": "vols/a.nii.gz", "fibrosis": 3}, {"image": "vols/missing.nii.gz"}]
    datalist.write_text(json.dumps({"quality": quality, "segmentation": [{"image": "vols/a.nii.gz", "label": "x"}]}))
    found = discover_inputs(str(datalist))
    assert [s.status for s in found.sources] == ["ready", "error"]
    assert found.sources[1].message.endswith("missing.nii.gz: not found")


@pytest.mark.parametrize(
    "make, status, message",
    [
        (lambda p: str(p / "nope"), "error", "not found"),
        (lambda p: (p / "empty").mkdir() or str(p / "empty"), "error", "empty folder"),
        (lambda p: (p / "r.txt").write_text("hello") and str(p / "r.txt"), "error", "not a DICOM, NIfTI or NRRD image"),
        (lambda p: (p / "blob").write_bytes(os.urandom(300)) and str(p / "blob"), "error", "not a DICOM, NIfTI"),
        (lambda p: (p / "shot.png").write_bytes(b"\x89PNG") and str(p / "shot.png"), "skipped", "single 2D image"),
        (lambda p: write_junk(str(p / "junk")) and str(p / "junk"), "error", "no DICOM series or NIfTI/NRRD volume"),
        (lambda p: write_corrupt_dicom(str(p / "bad" / "X")), "error", "unreadable DICOM header"),
        (lambda p: "", "error", "no input given"),
        (lambda p: (p / "l.json").write_text("{not json") and str(p / "l.json"), "error", "unreadable datalist"),
    ],
    ids=["missing", "empty", "text", "blob", "png", "junk-folder", "corrupt", "none", "bad-json"],
)
def test_bad_inputs_are_one_row(tmp_path, make, status, message):
    found = discover_inputs(make(tmp_path))
    assert len(found.sources) == 1
    row = found.sources[0]
    assert row.status == status and message in row.message and "\n" not in row.message
    assert found.volumes == []


def test_volume_name():
    assert volume_name("P 1/s7: LGE*3D") == "P_1_s7_LGE_3D"
    assert volume_name("...") == "volume"


def test_nrrd_volume_is_read_like_monai_reads_it(tmp_path):
    itk = pytest.importorskip("itk")
    from monai.transforms import LoadImage

    from bundle.io import LoadVolume

    image = itk.image_from_array(np.arange(12 * 10 * 8, dtype=np.int16).reshape(12, 10, 8))  # itk order z, y, x
    image.SetSpacing([0.6, 0.7, 2.0])
    path = str(tmp_path / "scan.nrrd")
    itk.imwrite(image, path)
    found = discover_inputs(str(tmp_path))
    assert [(s.status, s.name, s.image) for s in found.sources] == [("ready", "scan", path)]
    ours, ref = LoadVolume(ensure_channel_first=True)(path), LoadImage(ensure_channel_first=True)(path)
    assert ours.shape == ref.shape == (1, 8, 10, 12)
    np.testing.assert_allclose(np.asarray(ours.affine), np.asarray(ref.affine))
