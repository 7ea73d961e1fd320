"""From PACS to PACS against a real Orthanc (tests/orthanc.py): a study retrieved over DICOMweb, assessed, and its
DICOM SEG and SR stored back (STOW-RS); every failure one line naming the server and the UID.

The networks are the known ones of tests/test_workflow_inference.py (bright voxels are "LA", a small untrained QANet),
so the expected mask is known. One test runs the shipped weights on the shared la2018 DICOM export (skipped where
absent). Orthanc missing: skipped, unless LA_LGE_QA_REQUIRE_ORTHANC=1 (.ci/run), which makes it a failure.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import threading
import time

import nibabel as nib
import numpy as np
import pytest

from bundle.io.dicom_outputs import read_seg_mask, read_sr_values
from bundle.pacs import DicomWebError, retrieve
from scripts import assess
from tests.conftest import LA2018
from tests.dicom_helpers import box_mask, phantom, write_series
from tests.orthanc import Orthanc, free_port
from tests.test_workflow_inference import DETECTOR, QA_SIZE, qa_config, weights  # noqa: F401 (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.orthanc]
SHAPE = (40, 36, 24)
STUDY, SERIES, OTHER = "1.2.826.1.900", "1.2.826.1.901", "1.2.826.1.902"
REJECT_SEG_SR = """
function ReceivedInstanceFilter(dicom, origin, info)
  if dicom.Modality == 'SEG' or dicom.Modality == 'SR' then
    return false
  end
  return true
end
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A generated study of two series: the LGE volume to assess and a second one."""
    root = tmp_path_factory.mktemp("study")
    files, affine = write_series(
        str(root / "lge"), phantom(SHAPE), study_uid=STUDY, series_uid=SERIES, patient_id="PACS01", description="LGE 3D"
    )
    other, _ = write_series(
        str(root / "other"),
        phantom(SHAPE, seed=3),
        study_uid=STUDY,
        series_uid=OTHER,
        patient_id="PACS01",
        description="LGE repeat",
        series_number=8,
    )
    return {"files": files, "other": other, "affine": affine}


@pytest.fixture()
def orthanc(tmp_path, study):
    server = Orthanc(str(tmp_path / "orthanc"))
    server.upload(study["files"] + study["other"])
    yield server
    server.stop()


def args_for(weights, tmp_path, *extra) -> list[str]:  # noqa: F811
    tiny = {"network_def": DETECTOR, "qa_config": qa_config(weights), "spatial_size": 32, "qa_spatial_size": QA_SIZE}
    (tmp_path / "tiny.yaml").write_text(json.dumps(tiny))
    return [
        "--weights",
        str(weights / "model.pt"),
        "--qa_weights",
        str(weights / "qa.pt"),
        "--config",
        str(tmp_path / "tiny.yaml"),
        "--no_html",
        *extra,
    ]


def rows_of(out) -> list[dict]:
    with open(out / "qa_report.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_study_from_orthanc_assessed_and_stored_back(weights, orthanc, study, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    before = orthanc.instance_count()
    t0 = time.perf_counter()
    status = assess.main(
        [
            "--dicomweb",
            orthanc.dicomweb,
            "--study",
            STUDY,
            "--series",
            SERIES,
            "--store",
            "--output_dir",
            str(out),
            *args_for(weights, tmp_path),
        ]
    )
    elapsed = time.perf_counter() - t0
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert f"retrieved 24 instance(s) of study {STUDY}" in printed
    assert f"stored 2 instance(s) (SEG and SR) in study {STUDY} on {orthanc.dicomweb}" in printed
    (row,) = rows_of(out)
    assert row["status"] == "ok" and row["series_uid"] == SERIES and row["n_la_slices"] == "11"

    # the server holds the study's two series and, new in the same study, the SEG and the SR
    series = {s["modality"]: s for s in orthanc.series_of(STUDY)}
    assert orthanc.instance_count() == before + 2
    assert set(series) == {"MR", "SEG", "SR"} and series["SEG"]["instances"] == 1 and series["SR"]["instances"] == 1
    # what the server gives back is what was assessed: the mask voxel-exact, the numbers those of the CSV
    back = tmp_path / "back"
    retrieve(orthanc.dicomweb, STUDY, str(back), series["SEG"]["uid"])
    retrieve(orthanc.dicomweb, STUDY, str(back), series["SR"]["uid"])
    (seg_file,) = (back / series["SEG"]["uid"]).iterdir()
    (sr_file,) = (back / series["SR"]["uid"]).iterdir()
    nifti = np.asarray(nib.load(out / "PACS01_s7_LGE_3D_la_mask.nii.gz").dataobj)
    np.testing.assert_array_equal(read_seg_mask(str(seg_file), study["files"]), nifti)
    assert 2 * (nifti.astype(bool) & box_mask(SHAPE)).sum() / (nifti.sum() + box_mask(SHAPE).sum()) > 0.95
    values = read_sr_values(str(sr_file))
    for k in ("p_nulling", "p_sharpness", "p_enhancement", "p_fibrosis", "uncertainty"):
        assert round(values[k], 4) == pytest.approx(float(row[k]), abs=1e-4), k
    assert values["diagnostic"] == int(row["diagnostic"]) and values["refer"] == int(row["refer"])
    assert values["n_la_slices"] == 11
    report = json.loads((out / "qa_report.json").read_text())
    assert report["settings"]["dicomweb"] == {"url": orthanc.dicomweb, "study": STUDY, "series": SERIES, "store": True}
    print(f"round trip of one study (retrieve, assess, store): {elapsed:.1f} s")


def test_without_store_nothing_reaches_the_server(weights, orthanc, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    before = orthanc.instance_count()
    assert (
        assess.main(
            ["--dicomweb", orthanc.dicomweb, "--study", STUDY, "--output_dir", str(out), *args_for(weights, tmp_path)]
        )
        == 0
    )
    assert orthanc.instance_count() == before
    rows = rows_of(out)
    assert sorted(r["series_uid"] for r in rows) == sorted([SERIES, OTHER])  # the whole study: both series
    assert len(list(out.glob("*_la_seg.dcm"))) == 2 and len(list(out.glob("*_qa_sr.dcm"))) == 2
    assert "stored" not in capsys.readouterr().out


def test_unreachable_server_and_unknown_uid_are_one_line_with_a_report(weights, tmp_path, capsys):  # noqa: F811
    server = Orthanc(str(tmp_path / "orthanc"))
    url = server.dicomweb
    out = tmp_path / "unknown"
    assert (
        assess.main(["--dicomweb", url, "--study", "1.2.3.4", "--output_dir", str(out), *args_for(weights, tmp_path)])
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ERROR dicomweb: study 1.2.3.4: not found on {url}; see {out / 'qa_report.csv'}"]
    (row,) = rows_of(out)
    assert row["status"] == "error" and row["input"] == f"{url} study 1.2.3.4" and "not found on" in row["message"]
    server.stop()  # a server that was there and is gone
    out = tmp_path / "stopped"
    assert (
        assess.main(["--dicomweb", url, "--study", STUDY, "--output_dir", str(out), *args_for(weights, tmp_path)]) == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ERROR dicomweb: study {STUDY}: cannot reach the DICOMweb server {url}")
    assert rows_of(out)[0]["status"] == "error"


def test_server_that_does_not_answer_times_out(weights, tmp_path, capsys):  # noqa: F811
    port = free_port()
    listener = socket.socket()
    listener.bind(("127.0.0.1", port))
    listener.listen(4)  # accepts connections, never answers
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}/dicom-web"
        t0 = time.perf_counter()
        assert (
            assess.main(
                [
                    "--dicomweb",
                    url,
                    "--study",
                    STUDY,
                    "--dicomweb_timeout",
                    "1",
                    "--output_dir",
                    str(tmp_path / "out"),
                    *args_for(weights, tmp_path),
                ]
            )
            == 1
        )
        assert time.perf_counter() - t0 < 30
        err = capsys.readouterr().err.strip().splitlines()
        assert err and err[-1].startswith(f"ERROR dicomweb: study {STUDY}: no answer from {url} within 1 s")
    finally:
        stop.set()
        thread.join()
        for c in held:
            c.close()
        listener.close()


def test_store_refused_by_the_server_keeps_local_outputs(weights, study, tmp_path, capsys):  # noqa: F811
    server = Orthanc(str(tmp_path / "orthanc"), lua=REJECT_SEG_SR)  # takes images, refuses SEG and SR
    try:
        server.upload(study["files"])
        before = server.instance_count()
        out = tmp_path / "out"
        status = assess.main(
            [
                "--dicomweb",
                server.dicomweb,
                "--study",
                STUDY,
                "--store",
                "--output_dir",
                str(out),
                *args_for(weights, tmp_path),
            ]
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 3
        assert len(err) == 1 and err[0].startswith(f"ERROR store: study {STUDY}:") and server.dicomweb in err[0]
        assert f"the local outputs in {out} are complete" in err[0]
        assert server.instance_count() == before and {s["modality"] for s in server.series_of(STUDY)} == {"MR"}
        (row,) = rows_of(out)
        assert row["status"] == "ok"
        assert len(list(out.glob("*_la_seg.dcm"))) == 1 and len(list(out.glob("*_qa_sr.dcm"))) == 1
    finally:
        server.stop()


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--study", "1.2.3"], "pass either input paths or --dicomweb"),
        (["--dicomweb", "http://127.0.0.1:1/dicom-web"], "--dicomweb needs --study"),
        (["--dicomweb", "http://127.0.0.1:1/dicom-web", "--study", "../../etc"], "is not a DICOM UID"),
        (["--dicomweb", "ftp://x", "--study", "1.2"], "must be an http:// or https:// URL"),
        (["--store"], "go with --dicomweb"),
    ],
)
def test_dicomweb_arguments_are_checked_first(bad, message, tmp_path, capsys):
    argv = bad if bad[0] != "--study" else ["some_input", "--dicomweb", "http://127.0.0.1:1/dicom-web", *bad]
    if bad == ["--store"]:
        argv = ["some_input", "--store"]
    with pytest.raises(SystemExit) as e:
        assess.main([*argv, "--output_dir", str(tmp_path / "out")])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_retrieve_never_writes_outside_its_folder(study, tmp_path):
    server = Orthanc(str(tmp_path / "orthanc"))
    try:
        server.upload(study["files"][:12])
        files = retrieve(server.dicomweb, STUDY, str(tmp_path / "in"), SERIES)
        assert len(files) == 12
        assert all(os.path.commonpath([f, str(tmp_path / "in")]) == str(tmp_path / "in") for f in files)
        with pytest.raises(DicomWebError, match=f"study {STUDY} series 1.2.9: not found on"):
            retrieve(server.dicomweb, STUDY, str(tmp_path / "in"), "1.2.9")
        with pytest.raises(ValueError, match="is not a DICOM UID"):
            retrieve(server.dicomweb, "1.2/../../x", str(tmp_path / "in"))
    finally:
        server.stop()


@pytest.mark.integration
@pytest.mark.skipif(not os.path.isdir(os.path.join(LA2018, "dicom")), reason="no la2018 data")
def test_shared_export_round_trip_with_the_shipped_weights(tmp_path, capsys):
    import pydicom

    folder = os.path.join(LA2018, "dicom", "0RZDK210BSMWAA6467LU_q0")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    server = Orthanc(str(tmp_path / "orthanc"))
    try:
        server.upload(files)
        out = tmp_path / "out"
        t0 = time.perf_counter()
        assert (
            assess.main(
                ["--dicomweb", server.dicomweb, "--study", study_uid, "--store", "--no_html", "--output_dir", str(out)]
            )
            == 0
        )
        elapsed = time.perf_counter() - t0
        assert {s["modality"] for s in server.series_of(study_uid)} == {"MR", "SEG", "SR"}
        (row,) = rows_of(out)
        assert row["status"] == "ok" and int(row["n_la_slices"]) > 30
        (seg,) = out.glob("*_la_seg.dcm")
        nifti = np.asarray(nib.load(next(out.glob("*_la_mask.nii.gz"))).dataobj)
        np.testing.assert_array_equal(read_seg_mask(str(seg), files), nifti)
        capsys.readouterr()
        print(f"shared export round trip (retrieve, assess with the shipped weights, store): {elapsed:.1f} s")
    finally:
        server.stop()
