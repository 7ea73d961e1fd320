"""Evaluation report (scores per slice and per scan, files) and the logistic-regression reference."""

import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest

from bundle.evaluation import (
    FEATURES,
    fit_predict_reference,
    flatten_metrics,
    score_predictions,
    slice_features,
    write_report,
)


def _example():
    # scan 0 (diagnostic fibrosis): slices 0.9, 0.8, 0.2 -> mode 1; scan 1 (non-diagnostic): 0.6, 0.4 -> tie -> 0
    volumes = np.array([0, 0, 0, 1, 1])
    probs = np.zeros((5, 4))
    probs[:, 3] = [0.9, 0.8, 0.2, 0.6, 0.4]
    probs[:, :3] = 0.7
    targets = np.zeros((5, 4), int)
    targets[:3] = 1
    return volumes, probs, targets


def test_score_predictions_per_slice_and_scan():
    s = score_predictions(*_example())
    assert (s["n_slices"], s["n_scans"]) == (5, 2)
    mode = s["metrics"]["mode"]["fibrosis"]
    assert (mode["precision"], mode["recall"], mode["specificity"], mode["f1"]) == (1.0, 1.0, 1.0, 1.0)
    sl = s["metrics"]["slice"]["fibrosis"]  # slices: TP 2, FN 1, FP 1, TN 1
    assert (sl["precision"], sl["recall"], sl["specificity"]) == pytest.approx((2 / 3, 2 / 3, 1 / 2))
    mean = s["metrics"]["mean"]["fibrosis"]  # means 0.633, 0.5 -> 1, 1 (0.5 is at the threshold: diagnostic)
    assert mean["precision"] == 0.5 and mean["recall"] == 1.0 and mean["specificity"] == 0.0 and mean["auroc"] == 1.0
    nulling = s["metrics"]["mode"]["nulling"]  # everything predicted diagnostic
    assert nulling["recall"] == 1.0 and nulling["specificity"] == 0.0
    flat = flatten_metrics(s["metrics"], "test")
    assert (
        flat["test_mode_fibrosis_f1"] == 1.0
        and "test_slice_nulling_auroc" in flat
        and not any(k.endswith("_n") for k in flat)
    )


def test_write_report_files(tmp_path):
    summary = write_report(
        str(tmp_path),
        *_example()[:1],
        np.array([3, 4, 5, 3, 4]),
        *_example()[1:],
        ["a.nii.gz", "b.nii.gz"],
        part="test",
        title="baseline",
    )
    for f in (
        "metrics.json",
        "metrics.csv",
        "slice_predictions.csv",
        "scan_predictions.csv",
        "confusion_mode.png",
        "confusion_mean.png",
    ):
        assert os.path.getsize(tmp_path / f) > 0, f
    assert (
        json.load(open(tmp_path / "metrics.json"))["metrics"]["mode"]["fibrosis"]["f1"]
        == 1.0
        == summary["metrics"]["mode"]["fibrosis"]["f1"]
    )
    import pandas as pd

    scans = pd.read_csv(tmp_path / "scan_predictions.csv")
    assert scans["scan"].tolist() == ["a.nii.gz", "b.nii.gz"] and scans["fibrosis_mode"].tolist() == [1, 0]
    assert scans["fibrosis_true"].tolist() == [1, 0] and scans["slices"].tolist() == [3, 2]


def test_slice_features_hand_computed():
    img = np.full((32, 32), 0.1)
    img[10:20, 10:20] = 0.8  # the LA
    mask = np.zeros((32, 32), bool)
    mask[10:20, 10:20] = True
    f = dict(zip(FEATURES, slice_features(img, mask)))
    assert f["la_mean"] == pytest.approx(0.8) and f["la_std"] == pytest.approx(0.0, abs=1e-12)
    assert f["wall_mean"] == pytest.approx(0.1) and f["background_mean"] == pytest.approx(0.1)
    assert f["la_wall_contrast"] == pytest.approx(0.7 / 0.9, rel=1e-5)
    assert f["edge_gradient"] > 0
    from scipy.ndimage import gaussian_filter

    blurred = gaussian_filter(img, 2.0)
    fb = dict(zip(FEATURES, slice_features(blurred, mask)))
    assert fb["edge_gradient"] < f["edge_gradient"] and fb["laplacian_var"] < f["laplacian_var"]  # sharpness
    assert np.isnan(slice_features(img, np.zeros_like(mask))).all()


def _slices(brightness, labels, rng):
    n = len(brightness)
    images = np.full((n, 1, 24, 24), 0.1, np.float16) + rng.random((n, 1, 24, 24)).astype(np.float16) * 0.05
    masks = np.zeros((n, 1, 24, 24), np.uint8)
    masks[:, :, 8:16, 8:16] = 1
    images[:, :, 8:16, 8:16] = np.asarray(brightness, np.float16)[:, None, None, None]
    targets = np.repeat(np.asarray(labels)[:, None], 4, axis=1).astype(np.float32)
    return _Slices(SimpleNamespace(images=images, volume=np.arange(n) // 2), masks, targets)


class _Slices:
    """What the reference reads of :class:`bundle.data.QASlices`, on made-up slices."""

    def __init__(self, cache, masks, targets):
        self.cache, self.masks, self.targets, self.indices = cache, masks, targets, np.arange(len(masks))

    def __len__(self):
        return len(self.indices)

    def slice_targets(self):
        return self.targets


def test_reference_learns_a_separable_rule():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 20)
    train = _slices(0.3 + 0.5 * labels + rng.random(40) * 0.1, labels, rng)
    test_labels = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    test = _slices(0.3 + 0.5 * test_labels + rng.random(8) * 0.1, test_labels, rng)
    probs, volumes, targets = fit_predict_reference(train, test)
    assert probs.shape == (8, 4) and volumes.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert ((probs[:, 3] > 0.5) == test_labels.astype(bool)).all()
    scores = score_predictions(volumes, probs, targets)["metrics"]["mode"]["fibrosis"]
    assert scores["f1"] == 1.0 and scores["specificity"] == 1.0 and not math.isnan(scores["auroc"])
