"""Brief QA training and evaluation on the real la2018 data (skipped where ../shared/data/la2018 is absent)."""

import glob
import json
import os
import subprocess

import pytest

from tests.conftest import LA2018, bundle_cmd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isfile(os.path.join(LA2018, "dataset.json")), reason="no la2018 data"),
]

# A brief budget (64x64 slices, every 20th LA slice, one epoch): the point is that the commands of docs/qa_training.md
# and docs/evaluation.md run on real data, and that the test split is what the docs say (6 patients, 12 scored
# scans, 732 slices with LA by the ground-truth masks).
BRIEF = [
    "--dataset_dir",
    LA2018,
    "--datalist",
    os.path.join(LA2018, "dataset.json"),
    "--test_size",
    "6",
    "--qa_slices",
    "mask",
    "--spatial_size",
    "64",
    "--train_slice_step",
    "20",
    "--max_epochs",
    "1",
    "--batch_size",
    "32",
    "--num_workers",
    "1",
]


def test_brief_baseline_training_and_evaluation(tmp_path):
    common = BRIEF + ["--output_dir", str(tmp_path / "runs"), "--ckpt_dir", str(tmp_path / "models")]
    train = "['configs/common.yaml','configs/qa_baseline.yaml']"
    res = subprocess.run(
        bundle_cmd("training", train, *common),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert os.path.isfile(tmp_path / "models" / "qa_baseline.pt")
    evaluate = "['configs/common.yaml','configs/qa_baseline.yaml','configs/evaluate.yaml']"
    res = subprocess.run(
        bundle_cmd("evaluating", evaluate, *common),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "test (12 scans, 732 slices, verdict by mode): fibrosis" in res.stdout
    summary = json.load(open(glob.glob(str(tmp_path / "runs" / "evaluate_baseline_*" / "metrics.json"))[0]))
    assert summary["n_scans"] == 12 and summary["n_slices"] == 732
    for level in ("slice", "mode", "mean"):
        assert 0.0 <= summary["metrics"][level]["fibrosis"]["f1"] <= 1.0
