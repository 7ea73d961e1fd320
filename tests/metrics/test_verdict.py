"""The one verdict rule: hand-computed cases (ties both ways) and the agreement of evaluation, inference, training
validation and MONAI Label (which runs the inference config's TwoStageStep, i.e. qa_verdict) on the same slices."""

import numpy as np
import pytest
import torch

from bundle.inference import qa_verdict
from bundle.metrics import QALabelOutput, aggregate_scans, is_diagnostic, scan_verdict


@pytest.mark.parametrize(
    "probs, rule, expected",
    [
        ([0.5], "mode", 1),  # at the threshold: diagnostic
        ([0.4999], "mode", 0),
        ([0.9, 0.1], "mode", 0),  # a tie of votes: non-diagnostic, whatever the mean (0.5)
        ([0.6, 0.2], "mode", 0),  # a tie although the mean is 0.4
        ([0.9, 0.45, 0.45], "mode", 0),  # the majority votes 0; the mean (0.6) would say 1
        ([0.9, 0.1], "mean", 1),  # mean 0.5: at the threshold
        ([0.6, 0.2], "mean", 0),
        ([0.9, 0.1], "mean_logit", 1),  # logits +-2.197 average to 0: probability 0.5, at the threshold
        # logits (4.595 - 1.386 - 1.386) / 3 = 0.608 -> probability 0.647: diagnostic, where the mode (1 of 3) is not
        ([0.99, 0.2, 0.2], "mean_logit", 1),
        ([0.99, 0.2, 0.2], "mode", 0),
    ],
)
def test_scan_verdict_by_hand(probs, rule, expected):
    p, v = scan_verdict(probs, 0.5, rule)
    assert v == expected
    if rule == "mean_logit" and len(probs) == 3:
        assert p == pytest.approx(0.6474, abs=1e-4)


def test_threshold_rule_and_bad_rules():
    assert is_diagnostic(0.5, 0.5) == 1 and is_diagnostic(0.49, 0.5) == 0
    assert is_diagnostic(np.array([0.2, 0.7]), 0.7).tolist() == [0, 1]
    with pytest.raises(ValueError, match="rule"):
        scan_verdict([0.5], rule="max")
    with pytest.raises(ValueError):
        scan_verdict([], rule="mode")


@pytest.mark.parametrize("rule", ["mode", "mean", "mean_logit"])
def test_evaluation_inference_and_training_agree(rule):
    rng = np.random.default_rng(0)
    for _ in range(50):
        s = int(rng.integers(1, 7))
        slice_p = np.round(rng.random((s, 4)) * 4) / 4  # many exact 0.5s and even splits
        slice_p = np.clip(slice_p, 0.01, 0.99)
        slice_p[rng.random(slice_p.shape) < 0.3] = 0.5
        inference = qa_verdict(np.repeat(slice_p[None], 2, 0), threshold=0.5, rule=rule)
        evaluation = aggregate_scans(np.zeros(s, int), slice_p, threshold=0.5)
        own = [scan_verdict(slice_p[:, j], 0.5, rule)[1] for j in range(4)]
        assert inference["diagnostic"] == own[3]
        if rule == "mode":
            assert evaluation["mode"][0].tolist() == own
        if rule == "mean":
            assert evaluation["mean_pred"][0].tolist() == own
        # training's slice metric thresholds as the slice votes do
        logits = torch.logit(torch.as_tensor(slice_p, dtype=torch.float32), eps=1e-7)
        votes, _ = QALabelOutput("fibrosis")({"pred": logits, "label": torch.zeros(s, 4)})
        assert votes[:, 0].int().tolist() == inference["slice_votes"].tolist()
