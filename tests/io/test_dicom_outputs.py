"""DICOM Segmentation and Structured Report of an assessed series: content, references, read-back, dciodvfy.

``dciodvfy`` (Debian package dicom3tools) is needed for the validation tests; where it is absent they are skipped,
unless LA_LGE_QA_REQUIRE_DICOM_TOOLS=1 (set by .ci/run), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest

from bundle.io.dicom import DicomSeriesReader
from bundle.io.dicom_outputs import (
    SCHEME,
    SEGMENT_LABEL,
    DicomOutputError,
    read_seg_mask,
    read_sr_values,
    series_headers,
    write_seg,
    write_sr,
)
from tests.dicom_helpers import box_mask, phantom, write_enhanced, write_series

SHAPE = (40, 36, 24)
REQUIRED = os.environ.get("LA_LGE_QA_REQUIRE_DICOM_TOOLS") == "1"
RESULT = {
    "p_nulling": 0.91,
    "p_sharpness": 0.125,
    "p_enhancement": 0.3333,
    "p_fibrosis": 0.618034,
    "uncertainty": 0.042,
    "diagnostic": 1,
    "refer": 1,
    "n_la_slices": 11,
    "la_volume_ml": 1.7766,
    "status": "ok",
    "message": "uncertain: fibrosis probability spreads 0.21 over flipped views <b>",
}


def dciodvfy_errors(path: str) -> list[str]:
    """The error lines of dciodvfy on ``path`` (warnings are not errors)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        if REQUIRED:
            pytest.fail("dciodvfy not found (apt-get install dicom3tools); LA_LGE_QA_REQUIRE_DICOM_TOOLS=1")
        pytest.skip("dciodvfy not found (apt-get install dicom3tools)")
    out = subprocess.run([exe, path], capture_output=True, text=True, timeout=120)
    lines = (out.stdout + out.stderr).splitlines()
    assert any(line.strip() in ("Segmentation", "ComprehensiveSR") for line in lines), lines  # it read the IOD
    return [line for line in lines if line.startswith("Error")]


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """An oblique, shuffled, RLE-compressed classic series lacking some Type 2 attributes, and its volume."""
    folder = tmp_path_factory.mktemp("series")
    files, affine = write_series(
        str(folder / "S1"),
        phantom(SHAPE),
        rle=True,
        series_uid="1.2.826.1.77",
        study_uid="1.2.826.1.70",
        row=(0.96, 0.28, 0.0),
        col=(0.0, 0.0, -1.0),
    )
    reader = DicomSeriesReader()
    volume, meta = reader.get_data(reader.read(files))
    return {"files": files, "affine": affine, "volume": volume, "mtimes": {f: os.stat(f).st_mtime_ns for f in files}}


def test_segmentation_holds_the_mask_on_the_source_frames(series, tmp_path):
    mask = box_mask(SHAPE).astype(np.uint8)
    mask[9, 11, 7] = 0  # not a plain box: a voxel-exact read-back is meaningful
    seg = write_seg(str(tmp_path / "seg.dcm"), mask, series["affine"], series["files"], "9.9.9")

    back = read_seg_mask(str(tmp_path / "seg.dcm"), series["files"])
    np.testing.assert_array_equal(back, mask)  # voxel-exact
    ds = pydicom.dcmread(tmp_path / "seg.dcm")
    sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in series["files"]}
    first = pydicom.dcmread(series["files"][0], stop_before_pixels=True)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == first.StudyInstanceUID == "1.2.826.1.70"
    assert ds.FrameOfReferenceUID == first.get("FrameOfReferenceUID", ds.FrameOfReferenceUID)
    assert ds.SeriesInstanceUID != first.SeriesInstanceUID and ds.SoftwareVersions == "9.9.9"
    # one segment, coded: SNOMED CT anatomical structure / left atrium, automatic
    (segment,) = ds.SegmentSequence
    assert segment.SegmentLabel == SEGMENT_LABEL and segment.SegmentAlgorithmType == "AUTOMATIC"
    prop = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (prop.CodeValue, prop.CodingSchemeDesignator, prop.CodeMeaning) == ("82471001", "SCT", "Left atrium")
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodingSchemeDesignator == "SCT"
    # frames: only those holding LA (the box spans 11 of 24 slices), each referencing its source image
    assert int(ds.NumberOfFrames) == 11
    refs = [
        fr.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for fr in ds.PerFrameFunctionalGroupsSequence
    ]
    assert len(set(refs)) == 11 and set(refs) <= set(sources)
    assert {str(r.SeriesInstanceUID) for r in ds.ReferencedSeriesSequence} == {"1.2.826.1.77"}
    assert seg.SOPInstanceUID == ds.SOPInstanceUID
    # the sources are read, never written (their Type 2 gaps are filled on copies)
    assert {f: os.stat(f).st_mtime_ns for f in series["files"]} == series["mtimes"]
    assert "PatientBirthDate" not in first


def test_segmentation_of_a_mask_in_a_flipped_grid_and_of_an_empty_mask(series, tmp_path):
    mask = box_mask(SHAPE).astype(np.uint8)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = SHAPE[0] - 1
    flipped_affine = series["affine"] @ flip  # voxel i of the flipped mask is voxel 39 - i of the series
    write_seg(str(tmp_path / "seg.dcm"), mask[::-1], flipped_affine, series["files"], "9.9.9")
    np.testing.assert_array_equal(read_seg_mask(str(tmp_path / "seg.dcm"), series["files"]), mask)
    with pytest.raises(DicomOutputError, match="the mask is empty"):
        write_seg(str(tmp_path / "empty.dcm"), np.zeros(SHAPE, np.uint8), series["affine"], series["files"], "1")
    assert not (tmp_path / "empty.dcm").exists()
    resampled = series["affine"] @ np.diag([2.0, 1.0, 1.0, 1.0])
    with pytest.raises(DicomOutputError, match="not in the series' voxel grid"):
        write_seg(str(tmp_path / "bad.dcm"), mask, resampled, series["files"], "1")


def test_segmentation_of_an_enhanced_multiframe_source(tmp_path):
    path, affine = write_enhanced(str(tmp_path / "MF" / "MF0001"), phantom((40, 36, 12)), series_uid="1.2.826.1.4")
    mask = box_mask((40, 36, 12)).astype(np.uint8)
    write_seg(str(tmp_path / "seg.dcm"), mask, affine, path, "1.0")
    np.testing.assert_array_equal(read_seg_mask(str(tmp_path / "seg.dcm"), path), mask)
    assert dciodvfy_errors(str(tmp_path / "seg.dcm")) == []


def test_structured_report_holds_the_result_and_references_the_segment(series, tmp_path):
    headers = series_headers(series["files"])
    seg = write_seg(str(tmp_path / "seg.dcm"), box_mask(SHAPE), series["affine"], series["files"], "9.9.9", headers)
    write_sr(str(tmp_path / "sr.dcm"), RESULT, series["files"], "9.9.9", seg, headers)

    values = read_sr_values(str(tmp_path / "sr.dcm"))
    for k in ("p_nulling", "p_sharpness", "p_enhancement", "p_fibrosis", "uncertainty", "la_volume_ml"):
        assert values[k] == pytest.approx(RESULT[k], abs=1e-9), k
    assert values["n_la_slices"] == 11 and values["diagnostic"] == 1 and values["refer"] == 1
    assert values["message"] == RESULT["message"] and values["segment_uid"] == seg.SOPInstanceUID

    ds = pydicom.dcmread(tmp_path / "sr.dcm")
    assert ds.Modality == "SR" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert ds.StudyInstanceUID == "1.2.826.1.70" and ds.CompletionFlag == "COMPLETE"
    title = ds.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("126000", "DCM")  # Imaging Measurement Report
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    evidence = {
        str(s.SeriesInstanceUID): len(s.ReferencedSOPSequence)
        for st in ds.CurrentRequestedProcedureEvidenceSequence
        for s in st.ReferencedSeriesSequence
    }
    assert evidence == {"1.2.826.1.77": 24, seg.SeriesInstanceUID: 1}  # the source series and the SEG
    assert ds.SoftwareVersions == "9.9.9"
    report = hd.sr.srread(tmp_path / "sr.dcm")
    assert "la-lge-qa" in str(report.ContentSequence)  # the observer: the bundle as a device
    assert SCHEME in str(ds.ContentSequence)


def test_structured_report_without_a_left_atrium(series, tmp_path):
    result = {
        "status": "no_left_atrium",
        "refer": 1,
        "diagnostic": None,
        "n_la_slices": 0,
        "la_volume_ml": 0.0,
        "message": "no slice above the LA threshold",
    }
    write_sr(str(tmp_path / "sr.dcm"), result, series["files"], "9.9.9")
    values = read_sr_values(str(tmp_path / "sr.dcm"))
    assert values["refer"] == 1 and values["la_volume_ml"] == 0 and "diagnostic" not in values
    assert "segment_uid" not in values and values["message"] == result["message"]
    assert dciodvfy_errors(str(tmp_path / "sr.dcm")) == []


def test_both_objects_pass_dciodvfy(series, tmp_path):
    headers = series_headers(series["files"])
    seg = write_seg(str(tmp_path / "seg.dcm"), box_mask(SHAPE), series["affine"], series["files"], "9.9.9", headers)
    write_sr(str(tmp_path / "sr.dcm"), RESULT, series["files"], "9.9.9", seg, headers)
    assert dciodvfy_errors(str(tmp_path / "seg.dcm")) == []
    assert dciodvfy_errors(str(tmp_path / "sr.dcm")) == []
