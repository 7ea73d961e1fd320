"""A real MONAI Label server on the bundle: start it, infer the LA mask and the QA scores, retrain, stop it.

The server runs from the MONAI Label environment (scripts/setup_monailabel_env.sh; its path from
LA_LGE_QA_MONAILABEL_VENV or the script's default). Where that environment is absent the test is skipped, unless
LA_LGE_QA_REQUIRE_MONAILABEL=1 (set by .ci/run), which turns the skip into a failure.

The QA task runs the bundle's real QA network (bundle.networks.QANet as configs/qa_baseline.yaml defines it, shrunk by
an overlay, with random weights saved here) through the bundle's two-stage step; since the weights are untrained,
the plumbing, the value ranges and the agreement with the command-line inference are checked, not the verdict.
"""

from __future__ import annotations

import contextlib
import csv
import email.parser
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import mlflow
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigWorkflow

from tests.apps.dicom_series import write_series
from tests.conftest import write_nifti

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = os.environ.get("LA_LGE_QA_MONAILABEL_VENV") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "la_lge_qa", "monailabel-venv"
)
REQUIRED = os.environ.get("LA_LGE_QA_REQUIRE_MONAILABEL") == "1"
# every workflow: small slices, quick epochs; the QA network reads its LA slices at its own size (24); the phantoms
# have 8 slices, fewer than the inference's localizer cut-off (10)
SITE = {"spatial_size": 32, "qa_spatial_size": 24, "batch_size": 16, "num_workers": 0, "min_slices": 4}
LA_NET = {"network_def#channels": [4, 8, 16, 32, 64]}  # the detector only: a small UNet
QA_SMALL = {
    "encoder_layers": [1, 1, 1, 1],
    "encoder_widths": [8, 16, 32, 64],
    "head_channels": 8,
    "qa_channels": 4,
}  # the QA network only: configs/qa_baseline.yaml's QANet, shrunk


def _oblique(ax: float = 0.21, az: float = -0.14, spacing=(1.2, 1.25, 2.5), origin=(-31.0, 18.5, 40.0)) -> np.ndarray:
    """A scanner-like geometry: axes tilted (about x, then z), anisotropic spacing, shifted origin."""
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = rz @ rx @ np.diag(spacing), origin
    return affine


# MONAI Label writes masks with ITK, whose direction matrices are orthonormal: a study's geometry comes back exactly
# when its axes are orthogonal, as a scanner's are (a sheared affine would be orthogonalised)
OBLIQUE = _oblique()
pytestmark = [pytest.mark.slow, pytest.mark.monailabel]


def _environment_problem() -> str | None:
    """Why the MONAI Label environment cannot be used (absent, unfinished, or built from other requirements)."""
    stamp, cfg = os.path.join(VENV, ".la_lge_qa_requirements.sha256"), os.path.join(VENV, "pyvenv.cfg")
    if (
        not os.path.isfile(stamp)
        or not os.path.isfile(cfg)
        or not os.access(os.path.join(VENV, "bin", "monailabel"), os.X_OK)
    ):
        return f"no MONAI Label environment at {VENV}"
    version = re.search(r"^version(?:_info)?\s*=\s*(\S+)", open(cfg).read(), re.M)
    lines = open(os.path.join(ROOT, "requirements-monailabel.txt")).read().splitlines()
    pinned = "".join(f"{line}\n" for line in lines if line.strip() and not line.strip().startswith("#"))
    expected = hashlib.sha256(f"{pinned}python {version.group(1) if version else '?'}\n".encode()).hexdigest()
    if open(stamp).read().strip() != expected:
        return f"the MONAI Label environment at {VENV} was built from other requirements"
    return None


def _monailabel() -> str:
    problem = _environment_problem()
    if problem:
        message = f"{problem}: run scripts/setup_monailabel_env.sh"
        if REQUIRED:
            pytest.fail(message + " (LA_LGE_QA_REQUIRE_MONAILABEL=1)")
        pytest.skip(message)
    return os.path.join(VENV, "bin", "monailabel")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(method: str, url: str, body: dict | None = None, timeout: float = 300) -> tuple[int, dict, bytes]:
    data = json.dumps(body).encode() if body is not None else b""
    req = urllib.request.Request(
        url,
        data=data if method != "GET" else None,
        method=method,
        headers={"Content-Type": "application/json"} if body is not None else {},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _multipart(headers: dict, body: bytes) -> dict[str, bytes]:
    content_type = next(v for k, v in headers.items() if k.lower() == "content-type")
    message = email.parser.BytesParser().parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    return {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
        for part in message.get_payload()
    }


def _md5(path) -> str:
    return hashlib.md5(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    exe = _monailabel()  # skips (or fails in CI) before any data is made
    tiny_demo = request.getfixturevalue("tiny_demo")
    tmp = tmp_path_factory.mktemp("monailabel")
    bundle_root, studies = tmp / "bundle", tmp / "studies"
    shutil.copytree(os.path.join(ROOT, "configs"), bundle_root / "configs")
    (bundle_root / "models").mkdir()
    (bundle_root / "site.yaml").write_text(yaml.safe_dump(SITE))
    (bundle_root / "la_net.yaml").write_text(yaml.safe_dump(LA_NET))
    (bundle_root / "qa_small.yaml").write_text(yaml.safe_dump(QA_SMALL))

    # studies: the demo's labelled volumes (ids = patients), an oblique unlabelled study and a DICOM series folder
    demo = json.load(open(tiny_demo))["segmentation"]
    demo_root = os.path.dirname(tiny_demo)
    (studies / "labels" / "final").mkdir(parents=True)
    for e in demo:
        shutil.copy(os.path.join(demo_root, e["image"]), studies / f"{e['patient']}.nii.gz")
        shutil.copy(os.path.join(demo_root, e["label"]), studies / "labels" / "final" / f"{e['patient']}.nii.gz")
    phantom = np.asarray(nib.load(os.path.join(demo_root, demo[0]["image"])).dataobj)
    write_nifti(str(studies / "oblique.nii.gz"), phantom, OBLIQUE)
    dicom_affine = write_series(str(studies / "dicom_study"), phantom.astype(np.uint16) * 4)

    # a detector trained for one epoch on the demo data, and an untrained QA network
    wf = ConfigWorkflow(
        config_file=[os.path.join(ROOT, "configs", f) for f in ("common.yaml", "train.yaml")],
        meta_file=os.path.join(ROOT, "configs", "metadata.json"),
        logging_file=os.path.join(ROOT, "configs", "logging.conf"),
        workflow_type="train",
        datalist=tiny_demo,
        output_dir=str(tmp / "runs"),
        ckpt_dir=str(bundle_root / "models"),
        max_epochs=1,
        test_size=2,
        val_fraction=0.2,
        **SITE,
        **LA_NET,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    torch.manual_seed(0)
    from bundle.networks import build_network

    qa_files = [os.path.join(ROOT, "configs", f) for f in ("common.yaml", "qa_baseline.yaml")]
    qa_net = build_network([*qa_files, str(bundle_root / "qa_small.yaml")])
    torch.save(qa_net.state_dict(), bundle_root / "models" / "qa_small.pt")

    with _running(exe, str(studies), bundle_root, tmp) as (url, info, tail):
        yield {
            "url": url,
            "info": info,
            "studies": studies,
            "bundle_root": bundle_root,
            "tail": tail,
            "dicom_affine": dicom_affine,
            "phantom": phantom,
        }


@contextlib.contextmanager
def _running(exe: str, studies: str, bundle_root, tmp, env: dict | None = None):
    """A MONAI Label server of the app on ``studies`` (a folder or a DICOMweb URL) with the test bundle's conf;
    yields ``(url, info, tail)`` and stops it (and the task processes it started) after."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "server.log", "w")
    log_config = tmp / "logging.json"  # to the console, captured in server.log (not <app>/logs/app.log)
    log_config.write_text(
        json.dumps(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "formatters": {
                    "plain": {"format": "[%(asctime)s] [%(process)s] [%(levelname)s] (%(name)s) - %(message)s"}
                },
                "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
                "root": {"level": "INFO", "handlers": ["console"]},
            }
        )
    )
    cmd = [
        exe,
        "start_server",
        "--app",
        os.path.join(ROOT, "apps", "monailabel"),
        "--studies",
        studies,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log_config",
        str(log_config),
        "--conf",
        "bundle_root",
        str(bundle_root),
        "--conf",
        "overlays",
        "site.yaml",
        "--conf",
        "la_overlays",
        "la_net.yaml",
        "--conf",
        "qa_overlays",
        "qa_small.yaml",
        "--conf",
        "qa_checkpoint",
        "models/qa_small.pt",
    ]
    env = {
        **os.environ,
        "PATH": os.path.join(VENV, "bin") + os.pathsep + os.environ.get("PATH", ""),
        "MONAI_LABEL_SESSIONS": "false",
        "PYTHONPATH": "",
        **(env or {}),
    }
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(tmp), start_new_session=True)

    def tail() -> str:
        log.flush()
        return "".join(open(tmp / "server.log").readlines()[-40:])

    try:
        deadline = time.time() + 240
        info = None
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"monailabel start_server exited with {proc.returncode}:\n{tail()}")
            try:
                status, _, body = _http("GET", f"{url}/info/", timeout=5)
                if status == 200:
                    info = json.loads(body)
                    break
            except OSError:
                pass
            time.sleep(1)
        if info is None:
            pytest.fail(f"no /info/ from {url} within 240 s:\n{tail()}")
        yield url, info, tail
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the task processes it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _infer_la(server, image_id: str, tmp_path) -> tuple[nib.Nifti1Image, dict]:
    status, headers, body = _http("POST", f"{server['url']}/infer/la_segmentation?image={image_id}&output=all")
    assert status == 200, f"{status} {body[:500]!r}\n{server['tail']()}"
    parts = _multipart(headers, body)
    path = tmp_path / f"{image_id}_mask.nii.gz"
    path.write_bytes(parts["image"])
    return nib.load(str(path)), json.loads(parts["params"])


def test_info_lists_the_tasks(server):
    models, trainers = server["info"]["models"], server["info"]["trainers"]
    assert models["la_segmentation"]["type"] == "segmentation"
    assert models["la_segmentation"]["labels"] == {"left_atrium": 1} and models["la_segmentation"]["dimension"] == 3
    assert models["qa"]["type"] == "classification"
    assert list(models["qa"]["labels"]) == ["nulling", "sharpness", "enhancement", "fibrosis"]
    assert "la_segmentation" in trainers
    status, _, body = _http("GET", f"{server['url']}/datastore/?output=all")
    ids = set(json.loads(body)["objects"])
    assert {"oblique", "dicom_study"} <= ids  # the DICOM series folder was converted to a study


@pytest.mark.parametrize("image_id", ["oblique", "dicom_study"])
def test_la_mask_has_the_study_geometry(server, image_id, tmp_path):
    mask, params = _infer_la(server, image_id, tmp_path)
    study = nib.load(str(server["studies"] / f"{image_id}.nii.gz"))
    assert mask.shape == study.shape == server["phantom"].shape
    np.testing.assert_allclose(mask.affine, study.affine, atol=1e-4)
    expected = OBLIQUE if image_id == "oblique" else server["dicom_affine"]
    np.testing.assert_allclose(study.affine, expected, atol=1e-4)
    values = set(np.unique(np.asarray(mask.dataobj)).tolist())
    assert values <= {0, 1}
    assert params["slice_axis"] == 2 and params["la_threshold"] == 0.5
    assert all(0 <= k < study.shape[2] for k in params["la_slices"])
    # the studies' slices are 32x32 = spatial_size, so nothing is resampled and the slices holding mask voxels are
    # exactly those stage 1 selects
    assert np.nonzero(np.asarray(mask.dataobj).any((0, 1)))[0].tolist() == params["la_slices"]


def test_qa_scores(server, tmp_path):
    _, la = _infer_la(server, "oblique", tmp_path)
    status, _, body = _http("POST", f"{server['url']}/infer/qa?image=oblique&output=json")
    assert la["la_slices"], "stage 1 found no LA slice in the study: the QA path cannot be exercised"
    assert status == 200, f"{status} {body[:500]!r}\n{server['tail']()}"
    qa = json.loads(body)
    assert [p["label"] for p in qa["prediction"]] == ["nulling", "sharpness", "enhancement", "fibrosis"]
    assert all(0.0 <= p["score"] <= 1.0 for p in qa["prediction"])
    assert qa["la_slices"] == la["la_slices"]  # stage 2 reads exactly the slices stage 1 selected
    assert np.shape(qa["slice_probabilities"]) == (len(la["la_slices"]), 4)
    assert np.all((np.asarray(qa["slice_probabilities"]) >= 0) & (np.asarray(qa["slice_probabilities"]) <= 1))
    assert qa["verdict"] in ("diagnostic", "non-diagnostic") and 0.0 <= qa["uncertainty"] <= 0.5
    assert qa["probabilities"]["fibrosis"] == pytest.approx(qa["prediction"][3]["score"])
    assert qa["refer"] in (0, 1) and qa["qa_threshold"] == 0.5

    # the same study through the command-line inference (the same config, overlays and weights): the same result
    root = server["bundle_root"]
    out = tmp_path / "cli"
    # (the detector's network comes from its checkpoint's plan: la_net.yaml is the training overlay only)
    wf = ConfigWorkflow(
        config_file=[
            str(root / "configs" / "common.yaml"),
            str(root / "configs" / "inference.yaml"),
            str(root / "site.yaml"),
        ],
        meta_file=str(root / "configs" / "metadata.json"),
        workflow_type="infer",
        ckpt_name="model.pt",
        bundle_root=str(root),
        input=str(server["studies"] / "oblique.nii.gz"),
        output_dir=str(out),
        qa_config=[
            str(root / "configs" / "common.yaml"),
            str(root / "configs" / "qa_baseline.yaml"),
            str(root / "site.yaml"),
            str(root / "qa_small.yaml"),
        ],
        qa_ckpt=str(root / "models" / "qa_small.pt"),
        device="$torch.device('cpu')",
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    row = next(csv.DictReader(open(out / "qa_report.csv", newline="")))
    assert row["status"] == "ok" and int(row["n_la_slices"]) == len(qa["la_slices"])
    for k in ("nulling", "sharpness", "enhancement", "fibrosis"):
        assert float(row[f"p_{k}"]) == pytest.approx(qa["probabilities"][k], abs=1e-4)
    assert int(row["diagnostic"]) == qa["diagnostic"] and float(row["uncertainty"]) == pytest.approx(
        qa["uncertainty"], abs=1e-4
    )


def test_training_through_the_server(server, tmp_path):
    models = server["bundle_root"] / "models"
    before = _md5(models / "model.pt")
    run_name = "monailabel_test_run"
    request = {"max_epochs": 1, "val_split": 0.25, "pretrained": True, "tracking_run_name": run_name}
    status, _, body = _http("POST", f"{server['url']}/train/la_segmentation", request)
    assert status == 200, body[:500]
    deadline, task = time.time() + 300, {}
    while time.time() < deadline:
        _, _, body = _http("GET", f"{server['url']}/train/", timeout=10)
        task = json.loads(body)
        if task.get("status") in ("DONE", "ERROR"):
            break
        time.sleep(2)
    assert task.get("status") == "DONE", f"{task}\n{server['tail']()}"

    # a new checkpoint, the previous one kept beside it
    assert _md5(models / "model.pt") != before
    backups = glob.glob(str(models / "model.*.pt"))
    assert [_md5(b) for b in backups] == [before]
    # the bundle's own MLflow run, with the datastore's patients in its split
    client = mlflow.MlflowClient(f"sqlite:///{server['bundle_root']}/runs/mlruns.db")
    runs = client.search_runs(
        [client.get_experiment_by_name("la_lge_qa").experiment_id], filter_string=f"attributes.run_name = '{run_name}'"
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "val_mean_dice" in runs[0].data.metrics and runs[0].data.params["max_epochs"] == "1"
    datalist = json.load(open(server["bundle_root"] / "runs" / "monailabel" / run_name / "datalist.json"))
    split = json.load(open(server["bundle_root"] / "runs" / run_name / "split.json"))
    assert {e["patient"] for e in datalist["segmentation"]} == set(split["train"]) | set(split["val"])
    assert len(split["val"]) >= 1 and split["test"] == []

    # the LA task serves the new weights
    mask, _ = _infer_la(server, "oblique", tmp_path)
    assert mask.shape == server["phantom"].shape


DW_STUDY, DW_SERIES = "1.2.826.1.990", "1.2.826.1.991"


@pytest.fixture(scope="module")
def dicomweb_server(server, tmp_path_factory):
    """The same app and bundle on a real Orthanc's DICOMweb (tests/orthanc.py) holding one generated series."""
    from tests.dicom_helpers import write_series as write_dicom
    from tests.orthanc import Orthanc

    tmp = tmp_path_factory.mktemp("monailabel_dicomweb")
    files, affine = write_dicom(
        str(tmp / "series"),
        server["phantom"].astype(np.uint16) * 4,
        study_uid=DW_STUDY,
        series_uid=DW_SERIES,
        patient_id="DW01",
        spacing=(1.0, 1.0, 2.0),
    )
    orthanc = Orthanc(str(tmp / "orthanc"))
    try:
        orthanc.upload(files)
        env = {"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(tmp / "cache")}  # not the user's ~/.cache
        with _running(_monailabel(), orthanc.dicomweb, server["bundle_root"], tmp, env) as (url, info, tail):
            yield {"url": url, "info": info, "tail": tail, "orthanc": orthanc, "files": files, "affine": affine}
    finally:
        orthanc.stop()


def test_dicomweb_round_trip_mask_saved_back_as_dicom_seg(dicomweb_server, tmp_path):
    from bundle.io.dicom_outputs import read_seg_mask
    from bundle.pacs import retrieve

    srv, orthanc = dicomweb_server, dicomweb_server["orthanc"]
    status, _, body = _http("GET", f"{srv['url']}/datastore/")  # the series the server offers, by QIDO-RS
    assert status == 200 and json.loads(body)["total"] == 1 and json.loads(body)["completed"] == 0, body[:500]
    assert "random" in srv["info"]["strategies"], srv["info"]["strategies"]
    status, _, body = _http("POST", f"{srv['url']}/activelearning/random", {})  # the next series to label
    assert status == 200 and json.loads(body)["id"] == DW_SERIES, f"{body[:500]!r}\n{srv['tail']()}"
    mask, params = _infer_la(srv, DW_SERIES, tmp_path)  # retrieved over WADO-RS, converted, segmented
    np.testing.assert_allclose(mask.affine, srv["affine"], atol=1e-4)  # the series' own geometry
    assert np.asarray(mask.dataobj).any() and params["la_slices"]

    # the annotator accepts the mask: MONAI Label stores it on the server as a DICOM SEG (STOW-RS)
    label = (tmp_path / f"{DW_SERIES}_mask.nii.gz").read_bytes()
    boundary = "la-lge-qa-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{{}}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="label"; filename="label.nii.gz"\r\n'
            "Content-Type: application/gzip\r\n\r\n"
        ).encode()
        + label
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        f"{srv['url']}/datastore/label?image={DW_SERIES}&tag=final",
        data=body,
        method="PUT",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        assert r.status == 200, srv["tail"]()
    series = {s["modality"]: s for s in orthanc.series_of(DW_STUDY)}
    assert set(series) == {"MR", "SEG"}, srv["tail"]()
    retrieve(orthanc.dicomweb, DW_STUDY, str(tmp_path / "back"), series["SEG"]["uid"])
    (seg_file,) = (tmp_path / "back" / series["SEG"]["uid"]).iterdir()
    import pydicom

    seg = pydicom.dcmread(seg_file)
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "Left atrium blood pool"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "82471001"  # SNOMED CT left atrium
    assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == DW_SERIES
    np.testing.assert_array_equal(read_seg_mask(str(seg_file), srv["files"]), np.asarray(mask.dataobj))
