"""The inference workflow end to end on a messy generated export: statuses, reports, masks in the input's geometry.

The networks are real but tiny: the detector is a 1x1 convolution that calls bright pixels "LA" (so the expected LA
slices and mask are known), the QA network the bundle's QANet as configs/qa_baseline.yaml defines it, shrunk by an
overlay and untrained (random weights saved here), at its own slice size (24, the detector's 32).
"""

import csv
import json
import os
import re
import subprocess

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from bundle.errors import InputError, WeightsError
from bundle.inference import CSV_COLUMNS
from scripts import assess
from tests.conftest import bundle_cmd, write_known_detector, write_nifti
from tests.dicom_helpers import (
    box_mask,
    phantom,
    truncate,
    write_corrupt_dicom,
    write_enhanced,
    write_junk,
    write_series,
)
from tests.error_helpers import raises_error
from tests.inference.test_stage2 import SMALL_QA, small_qanet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = [os.path.join(ROOT, "configs", "common.yaml"), os.path.join(ROOT, "configs", "inference.yaml")]
DETECTOR = {"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 1, "kernel_size": 1}
QA_SIZE = 24  # the QA network's slice size, other than the detector's (spatial_size 32): LA slices are cut again
SHAPE = (40, 36, 24)  # the phantom's box spans voxels 8..19, 10..25, 6..16


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    # normalised intensity above 0.5: LA; its answers are bright voxels, not anatomy (the phantoms' boxes are smaller
    # than an LA, on real scans it finds many pieces), so the plausibility bounds are open: these tests check reading,
    # statuses and geometry (tests/inference/test_selection.py checks the bounds)
    open_bounds = {"min_ml": 0.0, "max_ml": 1e9, "min_extent_mm": 0.0, "max_extent_mm": 1e9, "min_kept": 0.0}
    write_known_detector(folder, 0.5, spatial_size=32, la_bounds=open_bounds)
    torch.save(small_qanet().state_dict(), folder / "qa.pt")
    (folder / "qa_small.yaml").write_text(json.dumps(SMALL_QA))  # an overlay of configs/qa_baseline.yaml
    return folder


def qa_config(weights) -> list[str]:
    """The QA network's definition: the QA training workflow's files plus the shrinking overlay."""
    return [
        os.path.join(ROOT, "configs", "common.yaml"),
        os.path.join(ROOT, "configs", "qa_baseline.yaml"),
        str(weights / "qa_small.yaml"),
    ]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A messy DICOM export and a folder of NIfTI volumes, with every kind of bad input."""
    root = tmp_path_factory.mktemp("input")
    dicom = root / "export" / "DICOM"
    _, affine = write_series(
        str(dicom / "S1" / "A"),
        phantom(SHAPE),
        rle=True,
        series_uid="1.2.826.1.7",
        description="LGE main",
        row=(0.96, 0.28, 0.0),
        col=(0.0, 0.0, -1.0),
    )
    write_series(
        str(dicom / "S2"),
        phantom((16, 16, 3)),
        spacing=(2, 2, 8),
        series_uid="1.2.826.1.1",
        description="localizer",
        series_number=1,
    )
    write_series(str(dicom / "S3"), phantom((20, 18, 12)), modality="CT", series_uid="1.2.826.1.3", series_number=3)
    _, mf_affine = write_enhanced(str(dicom / "S4" / "MF0001"), phantom((40, 36, 12)), series_uid="1.2.826.1.4")
    files, _ = write_series(
        str(dicom / "S5"), phantom((20, 18, 12)), rle=True, series_uid="1.2.826.1.5", series_number=5
    )
    truncate(files[4], keep=0.9)
    write_corrupt_dicom(str(dicom / "S6" / "BROKEN"))
    write_junk(str(root / "export"))
    nifti_affine = np.array([[0, -0.8, 0, 3], [0, 0, 0.7, 40], [1.5, 0, 0, -5], [0, 0, 0, 1]], float)
    vol = np.transpose(phantom(SHAPE), (2, 0, 1)).astype(np.int16)  # slices along voxel axis 0 here
    write_nifti(str(root / "vols" / "scan.nii.gz"), vol, nifti_affine)
    write_nifti(str(root / "vols" / "flat.nii.gz"), phantom((20, 18, 1)).astype(np.int16))
    write_nifti(str(root / "vols" / "blank.nii.gz"), np.full((20, 18, 12), 100, np.int16))
    (root / "vols" / "notes.txt").write_text("x")
    (root / "vols" / "corrupt.nii.gz").write_bytes(b"\x1f\x8b" + os.urandom(200))  # a NIfTI name, garbage inside
    return {
        "root": root,
        "export": root / "export",
        "vols": root / "vols",
        "affine": affine,
        "mf_affine": mf_affine,
        "nifti_affine": nifti_affine,
        "truncated": files[4],
    }


def overrides(weights, input, output_dir, **extra):
    return {
        "input": input,
        "output_dir": str(output_dir),
        "ckpt_path": str(weights / "model.pt"),
        "qa_ckpt": str(weights / "qa.pt"),
        "network_def": DETECTOR,
        "qa_config": qa_config(weights),
        "spatial_size": 32,
        "qa_spatial_size": QA_SIZE,
        "min_slices": 10,
        **extra,
    }


def run_workflow(**kw):
    wf = ConfigWorkflow(
        config_file=CONFIG, meta_file=os.path.join(ROOT, "configs", "metadata.json"), workflow_type="infer", **kw
    )
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    return wf


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Divide by zero")  # the blank volume: MONAI warns, the result is all zeros
def test_messy_export_and_volumes(weights, export, tmp_path):
    out = tmp_path / "out"
    run_workflow(**overrides(weights, [str(export["export"]), str(export["vols"])], out))

    columns, rows = read_csv(out / "qa_report.csv")
    assert tuple(columns) == CSV_COLUMNS
    by_uid = {r["series_uid"]: r for r in rows if r["series_uid"]}
    by_input = {os.path.basename(r["input"]): r for r in rows}
    main = by_uid["1.2.826.1.7"]
    # its columns run head-to-foot: the axial slices are along voxel axis 1 (36 of them, the box on 10..25)
    assert main["status"] == "ok" and main["n_slices"] == "36" and main["n_la_slices"] == "16"
    for k in ("p_nulling", "p_sharpness", "p_enhancement", "p_fibrosis", "uncertainty"):
        assert 0.0 <= float(main[k]) <= 1.0
    assert main["diagnostic"] in ("0", "1") and main["refer"] in ("0", "1")
    assert by_uid["1.2.826.1.4"]["status"] == "ok" and by_uid["1.2.826.1.4"]["n_slices"] == "12"  # enhanced
    assert by_uid["1.2.826.1.1"]["status"] == "skipped" and "only 3 slices" in by_uid["1.2.826.1.1"]["message"]
    assert by_uid["1.2.826.1.3"]["status"] == "skipped" and "modality CT" in by_uid["1.2.826.1.3"]["message"]
    bad = by_uid["1.2.826.1.5"]
    assert bad["status"] == "error" and f"{export['truncated']}: truncated" in bad["message"]
    assert by_input["BROKEN"]["status"] == "error" and "unreadable DICOM header" in by_input["BROKEN"]["message"]
    assert by_input["scan.nii.gz"]["status"] == "ok" and by_input["scan.nii.gz"]["n_la_slices"] == "11"
    assert by_input["flat.nii.gz"]["status"] == "skipped" and "2D image" in by_input["flat.nii.gz"]["message"]
    blank = by_input["blank.nii.gz"]
    assert blank["status"] == "no_left_atrium" and blank["p_fibrosis"] == "" and blank["refer"] == "1"
    corrupt = by_input["corrupt.nii.gz"]
    assert corrupt["status"] == "error" and corrupt["message"].startswith(str(export["vols"] / "corrupt.nii.gz"))
    assert len(rows) == 10 and all("\n" not in r["message"] for r in rows)

    # masks in the input's own grid: same shape and affine as the volume read from the input
    main_mask = nib.load(out / "P001_s7_LGE_main_la_mask.nii.gz")
    assert main_mask.shape == SHAPE
    np.testing.assert_allclose(main_mask.affine, export["affine"], atol=1e-4)
    m, box = np.asarray(main_mask.dataobj) > 0, box_mask(SHAPE)
    assert 2 * (m & box).sum() / (m.sum() + box.sum()) > 0.95
    scan_mask = nib.load(out / "scan_la_mask.nii.gz")
    src = nib.load(export["vols"] / "scan.nii.gz")
    assert scan_mask.shape == src.shape
    np.testing.assert_allclose(scan_mask.affine, src.affine, atol=1e-5)
    m = np.asarray(scan_mask.dataobj) > 0
    box_t = np.transpose(box, (2, 0, 1))
    assert 2 * (m & box_t).sum() / (m.sum() + box_t.sum()) > 0.95
    enhanced_mask = nib.load(out / "P001_s9_LGE_3D_enhanced_la_mask.nii.gz")
    np.testing.assert_allclose(enhanced_mask.affine, export["mf_affine"], atol=1e-4)
    assert not np.asarray(nib.load(out / "blank_la_mask.nii.gz").dataobj).any()

    # the JSON report: the same rows plus per-slice detail
    report = json.load(open(out / "qa_report.json", encoding="utf-8"))
    scans = {s["name"]: s for s in report["scans"]}
    detail = scans["P001_s7_LGE_main"]
    assert [s["index"] for s in detail["slices"]] == list(range(36)) and detail["slice_axis"] == 1
    la = [s for s in detail["slices"] if s["selected"]]
    assert [s["index"] for s in la] == list(range(10, 26)) and all(s["la_prob"] > 0.99 for s in la)
    assert all(set(s) >= {"p_nulling", "p_sharpness", "p_enhancement", "p_fibrosis", "vote"} for s in la)
    assert set(detail["cam_slices"]) <= set(range(10, 26)) and len(detail["cam_slices"]) == 4
    assert report["counts"] == {"ok": 3, "implausible_la": 0, "no_left_atrium": 1, "skipped": 3, "error": 3}
    assert report["settings"]["la_threshold"] == 0.5 and "README.TXT" in " ".join(report["ignored_files"])
    assert report["settings"]["qa_network"] == "QANet" and report["settings"]["qa_spatial_size"] == QA_SIZE

    # the HTML page: self-contained, with the montage and the HiResCAM maps
    page = (out / "P001_s7_LGE_main_report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 16 + 2 * 4
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "HiResCAM" in page and ("NON-DIAGNOSTIC" in page or "DIAGNOSTIC" in page)
    assert "No left atrium found" in (out / "blank_report.html").read_text(encoding="utf-8")
    assert not (out / "flat_report.html").exists()


@pytest.mark.slow
def test_outputs_are_never_overwritten_unasked(weights, export, tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        str(export["vols"] / "scan.nii.gz"),
        "--output_dir",
        str(out),
        "--weights",
        str(weights / "model.pt"),
        "--qa_weights",
        str(weights / "qa.pt"),
        "--config",
        str(tmp_path / "tiny.yaml"),
    ]
    tiny = {"network_def": DETECTOR, "qa_config": qa_config(weights), "spatial_size": 32, "qa_spatial_size": QA_SIZE}
    (tmp_path / "tiny.yaml").write_text(json.dumps(tiny))
    assert assess.main(args) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert set(before) == {"qa_report.csv", "qa_report.json", "scan_la_mask.nii.gz", "scan_report.html"}
    assert assess.main(args) == 2  # refused before any work: the reports are there
    assert re.search(
        r"ERROR output: .* already holds qa_report.csv, qa_report.json; pass --overwrite", capsys.readouterr().err
    )
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert assess.main([*args, "--overwrite", "--la_only"]) == 0
    _, rows = read_csv(out / "qa_report.csv")
    assert rows[0]["status"] == "ok" and rows[0]["p_fibrosis"] == "" and "stage 2 (QA) not run" in rows[0]["message"]


@pytest.mark.slow
def test_nothing_assessable_exits_non_zero(weights, export, tmp_path):
    with raises_error(InputError, "ERROR input: nothing could be assessed"):
        run_workflow(
            **overrides(weights, [str(export["vols"] / "flat.nii.gz"), str(tmp_path / "missing")], tmp_path / "out")
        )
    _, rows = read_csv(tmp_path / "out" / "qa_report.csv")
    assert [r["status"] for r in rows] == ["skipped", "error"]
    assert rows[1]["message"] == f"{tmp_path / 'missing'}: not found"


@pytest.mark.slow
def test_missing_weights_name_the_remedy(weights, export, tmp_path):
    kw = overrides(weights, str(export["vols"]), tmp_path / "out")
    with raises_error(
        WeightsError,
        r"ERROR weights: LA detector checkpoint .*nope.pt not found: the bundle ships "
        r"models/detector.pt .* or train the LA detector with `python -m monai.bundle "
        r"run training",
    ):
        run_workflow(**{**kw, "ckpt_path": str(tmp_path / "nope.pt")})
    with raises_error(
        WeightsError,
        r"ERROR weights: QA network checkpoint .*nope_qa.pt not found: the bundle "
        r"ships models/qa.pt .* or train the QA "
        r"network with `python -m monai.bundle run training --config_file "
        r"\"\['configs/common.yaml','configs/qa_baseline.yaml'\]\"` .*run_qa",
    ):
        run_workflow(**{**kw, "qa_ckpt": str(tmp_path / "nope_qa.pt")})


@pytest.mark.slow
def test_bundle_cli(weights, export, tmp_path):
    out = tmp_path / "out"
    kw = overrides(weights, str(export["vols"] / "scan.nii.gz"), out)
    cmd = bundle_cmd(
        "inference",
        CONFIG,
        *[f"--{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in kw.items()],
    )
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "assessed 1 of 1 input volume(s)/series" in res.stdout
    assert {p.name for p in out.iterdir()} == {
        "qa_report.csv",
        "qa_report.json",
        "scan_la_mask.nii.gz",
        "scan_report.html",
    }


@pytest.mark.slow
def test_dicom_series_get_a_segmentation_and_a_structured_report(weights, export, tmp_path):
    from bundle.io.dicom_outputs import read_seg_mask, read_sr_values

    out = tmp_path / "out"
    dicom = export["export"] / "DICOM"
    run_workflow(
        **overrides(
            weights, [str(dicom / "S1"), str(dicom / "S4"), str(export["vols"] / "scan.nii.gz")], out, write_html=False
        )
    )
    _, rows = read_csv(out / "qa_report.csv")
    by_uid = {r["series_uid"]: r for r in rows}
    scans = {s["name"]: s for s in json.load(open(out / "qa_report.json", encoding="utf-8"))["scans"]}
    classic = sorted(str(p) for p in (dicom / "S1" / "A").iterdir())
    for name, uid, files in (
        ("P001_s7_LGE_main", "1.2.826.1.7", classic),
        ("P001_s9_LGE_3D_enhanced", "1.2.826.1.4", str(dicom / "S4" / "MF0001")),
    ):
        outputs = scans[name]["outputs"]
        assert outputs["seg"] == name + "_la_seg.dcm" and outputs["sr"] == name + "_qa_sr.dcm"
        nifti = np.asarray(nib.load(out / outputs["mask"]).dataobj)
        assert nifti.any()
        np.testing.assert_array_equal(read_seg_mask(str(out / outputs["seg"]), files), nifti)  # voxel-exact
        values, row = read_sr_values(str(out / outputs["sr"])), by_uid[uid]
        for k in ("p_nulling", "p_sharpness", "p_enhancement", "p_fibrosis", "uncertainty"):
            assert values[k] == pytest.approx(float(row[k]), abs=1e-4), k
        assert values["diagnostic"] == int(row["diagnostic"]) and values["refer"] == int(row["refer"])
        assert values["n_la_slices"] == int(row["n_la_slices"]) and values["segment_uid"]
        assert values["la_volume_ml"] == pytest.approx(scans[name]["la_volume_ml"], abs=1e-6)
    assert set(scans["scan"]["outputs"]) == {"mask"}  # a NIfTI input: no DICOM outputs

    off = tmp_path / "off"
    run_workflow(**overrides(weights, str(dicom / "S1"), off, write_html=False, dicom_outputs=False))
    assert not list(off.glob("*.dcm")) and (off / "P001_s7_LGE_main_la_mask.nii.gz").exists()
