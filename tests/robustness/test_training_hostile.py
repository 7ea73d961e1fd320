"""The training workflows against hostile datalists and interrupts: one line, no traceback, MLflow runs closed."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess

import mlflow
import nibabel as nib
import numpy as np
import pytest

from bundle.data.datalist import DatalistError, load_datalist, validate_datalist
from bundle.data.prepare import cached_slices, prepare_data
from bundle.errors import DataError
from tests.conftest import bundle_cmd
from tests.error_helpers import raises_error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = ["configs/common.yaml", "configs/train.yaml"]
TINY = [
    "--spatial_size",
    "32",
    "--batch_size",
    "16",
    "--max_epochs",
    "3",
    "--num_workers",
    "0",
    "--test_size",
    "2",
    "--val_fraction",
    "0.2",
]


def variant(datalist: str, folder, name: str, change) -> str:
    """A copy of ``datalist`` (its paths made absolute) changed by ``change(dict)``, written as ``folder/name``."""
    data = json.load(open(datalist))
    root = os.path.dirname(datalist)
    for key in ("segmentation", "quality"):
        for e in data.get(key, []):
            for k in ("image", "label"):
                if e.get(k):
                    e[k] = os.path.join(root, e[k])
    change(data)
    path = os.path.join(str(folder), name)
    with open(path, "w") as f:
        json.dump(data, f)  # Python writes NaN and Infinity, as its JSON reader accepts them
    return path


def check(path: str) -> None:
    validate_datalist(load_datalist(path), check_geometry=False)


@pytest.mark.parametrize("score", [float("nan"), float("inf"), float("-inf"), "abc", 0, 6, 2.5, True])
def test_bad_scores_are_one_line(tiny_demo, tmp_path, score):
    path = variant(tiny_demo, tmp_path, "bad.json", lambda d: d["quality"][1].update(fibrosis=score))
    with pytest.raises(DatalistError) as e:
        check(path)
    msg = str(e.value)
    assert msg.startswith("bad.json: quality[1] (patient ") and "score 'fibrosis' must be an integer in 1..5" in msg
    assert "\n" not in msg


def test_one_image_under_two_patients_is_an_error(tiny_demo, tmp_path):
    def same_file(d):
        d["quality"].append({**d["quality"][0], "patient": "someone_else"})

    with pytest.raises(
        DatalistError,
        match=r"quality\[\d+\] \(patient someone_else\): the same image file as "
        r"leak.json: quality\[0\] \(patient demo000\)",
    ):
        check(variant(tiny_demo, tmp_path, "leak.json", same_file))
    # the same voxels in another file (a copy with another name and header) under another patient
    first = json.load(open(tiny_demo))["quality"][0]
    src = nib.load(os.path.join(os.path.dirname(tiny_demo), first["image"]))
    copy = tmp_path / "renamed_copy.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(src.dataobj), src.affine * np.diag([1, 1, 1.01, 1])), str(copy))

    def same_voxels(d):
        d["quality"].append({**d["quality"][0], "patient": "someone_else", "image": str(copy)})

    with pytest.raises(DatalistError, match="an image with the same voxels as"):
        check(variant(tiny_demo, tmp_path, "leak2.json", same_voxels))


def test_exact_duplicates_are_counted_once(tiny_demo, tmp_path, caplog):
    path = variant(tiny_demo, tmp_path, "dupe.json", lambda d: d["quality"].append(dict(d["quality"][3])))
    lists = load_datalist(path)
    n = len(lists["quality"])
    with caplog.at_level(logging.WARNING):
        validate_datalist(lists, check_geometry=False)
    assert len(lists["quality"]) == n - 1
    assert "dupe.json: quality[" in caplog.text and "the same entry as dupe.json: quality[3]" in caplog.text
    # the same image and patient with other scores is not a duplicate: both stay (two raters)
    path = variant(
        tiny_demo,
        tmp_path,
        "two.json",
        lambda d: d["quality"].append({**d["quality"][3], "fibrosis": 6 - d["quality"][3]["fibrosis"]}),
    )
    lists = load_datalist(path)
    validate_datalist(lists, check_geometry=False)
    assert len(lists["quality"]) == n


def test_empty_list_is_one_line(tiny_demo, tmp_path):
    path = variant(tiny_demo, tmp_path, "noq.json", lambda d: d.update(quality=[]))
    data = prepare_data(datalist=path, output_dir=str(tmp_path), test_size=2, val_fraction=0.2)
    with raises_error(
        DataError,
        r"ERROR data: noq.json: no 'quality' entries for the train part \(\d+ "
        r"patients\); the workflow needs at least one",
    ):
        cached_slices(data, "quality", "train", spatial_size=16)


def _bundle_run(*args, timeout=300):
    cmd = bundle_cmd("training", TRAIN, *args)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)


@pytest.mark.slow
def test_training_on_a_nan_score_stops_in_one_line(tiny_demo, tmp_path):
    path = variant(tiny_demo, tmp_path, "nan.json", lambda d: d["quality"][0].update(nulling=float("nan")))
    res = _bundle_run("--datalist", path, "--output_dir", str(tmp_path / "runs"), "--ckpt_dir", str(tmp_path), *TINY)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.stderr.strip().splitlines()[-1] == (
        "ERROR data: nan.json: quality[0] (patient demo000): score 'nulling' must be an integer in 1..5, got nan"
    )


@pytest.mark.slow
def test_interrupted_training_is_killed_in_mlflow_and_resumes(tiny_demo, tmp_path):
    overlay = tmp_path / "stop.json"
    overlay.write_text(
        json.dumps(
            {
                "+train#handlers": [
                    {
                        "_target_": "tests.robustness.helpers.InterruptAfter",
                        "n": 1,
                        "signal_name": "SIGTERM",
                        "event": "EPOCH_COMPLETED",
                    }
                ]
            }
        )
    )
    out = tmp_path / "runs"
    common = ["--datalist", tiny_demo, "--output_dir", str(out), "--ckpt_dir", str(tmp_path / "models"), *TINY]
    cmd = bundle_cmd(
        "training",
        [*TRAIN, str(overlay)],
        *common,
    )
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted in epoch 1: MLflow run ") and "marked KILLED" in last, last
    checkpoint = last.split("--resume_from ")[1].split(" ")[0]
    assert os.path.isfile(checkpoint) and checkpoint.endswith("last.pt")
    client = mlflow.MlflowClient(f"sqlite:///{out}/mlruns.db")
    experiment = client.get_experiment_by_name("la_lge_qa").experiment_id
    assert [r.info.status for r in client.search_runs([experiment])] == ["KILLED"]
    # the hint works when copied: the run continues after epoch 1 and trains epochs 2 and 3 only
    res = _bundle_run(*common, "--resume_from", checkpoint)
    assert res.returncode == 0, res.stderr[-3000:]
    log = res.stdout + res.stderr
    assert f"resumed from {checkpoint}: continuing after epoch 1" in log
    trained = [line for line in log.splitlines() if "SupervisedTrainer - INFO - Epoch[" in line]
    assert [line.split("Epoch[")[1][0] for line in trained] == ["2", "3"], trained
    assert sorted(r.info.status for r in client.search_runs([experiment])) == ["FINISHED", "KILLED"]
    shutil.rmtree(out / "cache", ignore_errors=True)


@pytest.mark.slow
def test_two_trainings_logging_into_one_sqlite_store_both_finish(tiny_demo, tmp_path):
    """Parallel runs (e.g. folds started by hand) into one SQLite MLflow store, which is created by whichever
    starts first: both finish with all their params and every epoch's metrics."""
    (tmp_path / "store").mkdir()
    uri = f"sqlite:///{tmp_path / 'store' / 'mlruns.db'}"
    procs = []
    for i in (0, 1):
        cmd = bundle_cmd(
            "training",
            TRAIN,
            "--datalist",
            tiny_demo,
            "--output_dir",
            str(tmp_path / f"runs{i}"),
            "--ckpt_dir",
            str(tmp_path / f"models{i}"),
            "--tracking_uri",
            uri,
            "--run_name",
            f"parallel{i}",
            *TINY,
        )
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT))
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    for rc, err in results:
        assert rc == 0 and "database is locked" not in err, err[-3000:]
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("la_lge_qa").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["parallel0", "parallel1"]
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.params["max_epochs"] == "3"
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_mean_dice")] == [1, 2, 3]
