"""The report's rows, columns and statuses, and the refusal to overwrite."""

import csv

import numpy as np
import pytest

from bundle.errors import InputError
from bundle.inference import CSV_COLUMNS, ReportWriter, ScanDetail, ScanResult, exit_status, prepare_outputs
from bundle.io import discover_inputs
from bundle.outputs import OutputError
from tests.conftest import write_nifti
from tests.error_helpers import raises_error


def test_row_format():
    r = ScanResult(
        input="/x",
        series_uid="1.2",
        n_slices=88,
        n_la_slices=30,
        p_nulling=0.123456,
        p_sharpness=0.5,
        p_enhancement=1.0,
        p_fibrosis=0.3333333,
        diagnostic=0,
        uncertainty=float("nan"),
        refer=True,
        status="ok",
        message="m",
    )
    row = r.row()
    assert tuple(row) == CSV_COLUMNS
    assert row["p_nulling"] == 0.1235 and row["p_fibrosis"] == 0.3333 and row["uncertainty"] == "" and row["refer"] == 1
    skipped = ScanResult(input="/y", status="skipped", message="why").row()
    assert skipped["p_fibrosis"] == "" and skipped["diagnostic"] == "" and skipped["status"] == "skipped"
    assert r.to_dict()["uncertainty"] is None and r.to_dict()["refer"] is True
    with pytest.raises(ValueError, match="status"):
        ScanResult(input="/z", status="fine")


def test_json_record_holds_the_source_fields_and_only_the_detail_that_is_set():
    detail = ScanDetail(source={"series_description": "LGE 3D", "modality": "MR"}, slice_axis=2, la_kept=0.98)
    detail.slices = [{"index": 0, "la_prob": np.float32(0.25), "la_area_mm2": 0.0, "selected": False}]
    record = ScanResult(input="/x", status="ok", name="x", detail=detail).to_dict()
    assert list(record)[len(CSV_COLUMNS) :] == [
        "name",
        "series_description",
        "modality",
        "slice_axis",
        "la_kept",
        "slices",
    ]
    assert record["slices"][0]["la_prob"] == 0.25 and isinstance(record["slices"][0]["la_prob"], float)
    assert "qa_reliable" not in record and "verdict" not in record  # unset: not written
    detail.qa_reliable = False
    assert ScanResult(input="/x", status="ok", detail=detail).to_dict()["qa_reliable"] is False
    back = ScanResult.from_dict(ScanResult(input="/x", status="ok", name="x", detail=detail).to_dict())  # a resume
    assert back.detail.source == {"series_description": "LGE 3D", "modality": "MR"} and back.detail.slice_axis == 2
    assert back.detail.qa_reliable is False and back.detail.slices[0]["la_prob"] == 0.25 and back.detail.verdict is None


def test_report_lists_every_source_in_order(tmp_path):
    write_nifti(str(tmp_path / "in" / "a.nii.gz"), np.zeros((8, 8, 12), np.uint8))
    found = discover_inputs([str(tmp_path / "in"), str(tmp_path / "missing")])
    files = prepare_outputs(found, str(tmp_path / "out"))
    assert [f.split("/")[-1] for f in files] == ["qa_report.csv", "qa_report.json", "a_la_mask.nii.gz", "a_report.html"]
    writer = ReportWriter(str(tmp_path / "out"), found, html=False)
    writer.add(
        ScanResult(
            input=found.sources[0].input,
            name="a",
            status="no_left_atrium",
            n_slices=12,
            n_la_slices=0,
            refer=1,
            message="no slice",
        )
    )
    writer.write()
    rows = list(csv.DictReader(open(tmp_path / "out" / "qa_report.csv", encoding="utf-8")))
    assert [(r["status"], r["n_la_slices"]) for r in rows] == [("no_left_atrium", "0"), ("error", "")]
    assert exit_status(writer) == 0
    with raises_error(OutputError, "already holds qa_report.csv, qa_report.json"):
        prepare_outputs(found, str(tmp_path / "out"))
    assert prepare_outputs(found, str(tmp_path / "out"), overwrite="True")  # a flag as the command line passes it
    empty = ReportWriter(str(tmp_path / "out2"), discover_inputs(str(tmp_path / "missing")), overwrite=True)
    with raises_error(InputError, "nothing could be assessed .*missing: not found"):
        exit_status(empty)
