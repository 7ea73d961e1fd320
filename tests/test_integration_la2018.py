"""Brief LA-detector training on the real la2018 data (skipped where ../shared/data/la2018 is absent)."""

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

# Predicting "LA" on every pixel of the LA slices scores a mean slice Dice of 0.23 on la2018, and calling every
# slice an LA slice a slice F1 of 0.80; a brief training (64x64 slices, 10 epochs, about 2 minutes on 2 cores)
# must clearly beat the first.
DICE_FLOOR = 0.40


def test_brief_detector_training_beats_floor(tmp_path):
    out = tmp_path / "runs"
    cmd = bundle_cmd(
        "training",
        "['configs/common.yaml','configs/train.yaml']",
        "--dataset_dir",
        LA2018,
        "--datalist",
        os.path.join(LA2018, "dataset.json"),
        "--test_size",
        "6",
        "--spatial_size",
        "64",
        "--batch_size",
        "32",
        "--max_epochs",
        "10",
        "--num_workers",
        "1",
        "--output_dir",
        str(out),
        "--ckpt_dir",
        str(tmp_path / "models"),
    )
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.load(open(next(out.glob("detector_*/best_metrics.json"))))
    print(summary)
    assert summary["metrics"]["val_mean_dice"] >= DICE_FLOOR, summary
    assert summary["metrics"]["val_volume_dice"] >= DICE_FLOOR, summary
    assert os.path.isfile(tmp_path / "models" / "model.pt")
