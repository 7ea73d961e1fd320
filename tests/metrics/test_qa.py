"""Per-scan aggregation (mode with ties, mean probability) and binary metrics against scikit-learn."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from bundle.metrics import QALabelOutput, aggregate_scans, binary_metrics, mode_vote, qa_mse_output, qa_outputs


@pytest.mark.parametrize(
    "preds, expected",
    [
        ([1, 1, 0], 1),
        ([0, 0, 1], 0),
        ([1], 1),
        ([0], 0),
        ([1, 0], 0),  # tie: non-diagnostic
        ([1, 1, 0, 0], 0),  # tie
        ([1, 1, 1, 0, 0, 0], 0),  # tie
        ([1, 1, 1, 0, 0], 1),
    ],
)
def test_mode_vote_with_ties_non_diagnostic(preds, expected):
    assert mode_vote(preds) == expected


def test_mode_vote_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        mode_vote([])
    with pytest.raises(ValueError, match="binary"):
        mode_vote([0, 2])


def test_aggregate_scans():
    volumes = np.array([3, 3, 3, 1, 1, 7, 7])
    probs = np.array(
        [
            [0.9, 0.2],
            [0.8, 0.6],
            [0.1, 0.7],  # scan 3: mode 1 / 1, mean 0.6 / 0.5
            [0.6, 0.1],
            [0.3, 0.9],  # scan 1: tie / tie -> 0 / 0, mean 0.45 / 0.5
            [0.51, 0.49],
            [0.2, 0.4],
        ]
    )
    out = aggregate_scans(volumes, probs)
    assert out["volume"].tolist() == [1, 3, 7] and out["slices"].tolist() == [2, 3, 2]
    assert out["mode"].tolist() == [[0, 0], [1, 1], [0, 0]]
    assert np.allclose(out["mean"], [[0.45, 0.5], [0.6, 0.5], [0.355, 0.445]])
    assert out["mean_pred"].tolist() == [[0, 1], [1, 1], [0, 0]]  # 0.5 is at the threshold: diagnostic
    assert np.allclose(out["mode_score"], [[0.5, 0.5], [2 / 3, 2 / 3], [0.5, 0.0]])


@pytest.mark.parametrize("seed", range(4))
def test_binary_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 2, 30)
    t[:2] = [0, 1]
    score = np.clip(t * 0.3 + rng.random(30) * 0.7, 0, 1)
    p = (score > 0.5).astype(int)
    m = binary_metrics(t, p, score)
    assert m["precision"] == pytest.approx(precision_score(t, p, zero_division=0))
    assert m["recall"] == pytest.approx(recall_score(t, p))
    assert m["f1"] == pytest.approx(f1_score(t, p, zero_division=0))
    assert m["specificity"] == pytest.approx(((p == 0) & (t == 0)).sum() / (t == 0).sum())
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(t, p))
    assert m["auroc"] == pytest.approx(roc_auc_score(t, score))


def test_binary_metrics_hand_computed_and_undefined():
    # truth 1 1 1 0 0, prediction 1 1 0 1 0: TP 2, FN 1, FP 1, TN 1
    m = binary_metrics([1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
    assert (m["precision"], m["recall"], m["specificity"]) == pytest.approx((2 / 3, 2 / 3, 1 / 2))
    assert (
        m["f1"] == pytest.approx(2 / 3) and m["balanced_accuracy"] == pytest.approx(7 / 12) and math.isnan(m["auroc"])
    )
    only_pos = binary_metrics([1, 1], [1, 0], [0.9, 0.1])
    assert math.isnan(only_pos["specificity"]) and math.isnan(only_pos["auroc"]) and only_pos["recall"] == 0.5
    assert binary_metrics([0, 1], [0, 0])["precision"] == 0.0


def test_output_transforms_on_batched_and_decollated_outputs():
    logits = torch.tensor([[0.0, 2.0, -2.0, 1.0], [3.0, -1.0, 0.5, -3.0]])
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]])
    batched = {"pred": logits, "label": target}
    multitask = {"pred": {"qa": logits, "seg": torch.zeros(2, 1, 4, 4)}, "label": {"qa": target, "seg": None}}
    decollated = [{"pred": logits[i], "label": target[i]} for i in range(2)]
    for out in (batched, multitask, decollated):
        prob, tgt = qa_outputs(out)
        assert torch.allclose(prob, torch.sigmoid(logits)) and torch.equal(tgt, target)
    p, t = qa_mse_output(batched)
    assert p.shape == (8,) and float(((p - t) ** 2).mean()) == pytest.approx(
        float(((torch.sigmoid(logits) - target) ** 2).mean())
    )
    pred, tgt = QALabelOutput("fibrosis")(batched)
    assert pred.tolist() == [[1.0], [0.0]] and tgt.tolist() == [[0.0], [0.0]]
    assert QALabelOutput(0)(batched)[0].tolist() == [[1.0], [1.0]]  # sigmoid(0) = 0.5 is at 0.5: diagnostic
    with pytest.raises(ValueError):
        QALabelOutput("other")
