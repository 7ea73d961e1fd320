"""The attribute ceiling: the fibrosis verdict from the experts' own attribute scores, out of fold, by hand."""

import os
import subprocess
import sys

import numpy as np
import pytest

from bundle.evaluation.reference import attribute_ceiling


def _entry(patient, n, s, e, f):
    return {
        "image": f"{patient}.nii.gz",
        "patient": patient,
        "nulling": n,
        "sharpness": s,
        "enhancement": e,
        "fibrosis": f,
    }


ENTRIES = [
    _entry("A", 4, 4, 4, 4),  # mean 4 -> diagnostic, right
    _entry("B", 2, 2, 3, 2),  # mean 2.33 -> non-diagnostic, right
    _entry("C", 3, 3, 3, 2),  # mean 3 -> diagnostic, wrong (the verdict is not a function of the attributes)
    _entry("D", 1, 2, 2, 1),  # mean 1.67 -> non-diagnostic, right
    _entry("E", 5, 4, 4, 5),
    _entry("F", 2, 1, 2, 2),
    _entry("G", 4, 3, 5, 3),
    _entry("H", 1, 1, 2, 1),
]
FOLDS = [
    {"train": ["E", "F", "G"], "val": ["H"], "test": ["A", "B", "C", "D"]},
    {"train": ["A", "B", "C"], "val": ["D"], "test": ["E", "F", "G", "H"]},
]


def test_mean_rule_by_hand_and_the_logistic_rule_is_fitted_out_of_fold():
    out = attribute_ceiling(ENTRIES, FOLDS)
    mean = out["mean_rule"]
    # fold 0: positives {A} right, negatives {B, D} right, {C} wrong: recall 1, specificity 2/3 -> 0.833; AUROC: A's
    # mean 4 beats B 2.33, C 3, D 1.67 -> 1. Fold 1: all four right -> 1.0 and 1.0. Pooled: recall 1, specificity
    # 4/5 -> 0.9; AUROC: C (3) ties G (3.67)? no: G is 4, 3, 5 -> 4 > 3; every positive (A 4, E 4.33, G 4) above
    # every negative (max C 3) -> 1.0.
    assert mean["balanced_accuracy"] == pytest.approx((5 / 6 + 1) / 2)
    assert mean["balanced_accuracy_std"] == pytest.approx(np.std([5 / 6, 1.0]))
    assert mean["pooled_balanced_accuracy"] == pytest.approx(0.9)
    assert mean["auroc"] == pytest.approx(1.0) and mean["pooled_auroc"] == pytest.approx(1.0)
    logistic = out["logistic"]
    assert 0.5 <= logistic["pooled_balanced_accuracy"] <= 1.0 and 0.5 <= logistic["pooled_auroc"] <= 1.0


def test_folds_must_cover_the_entries_and_entries_need_their_scores():
    with pytest.raises(ValueError, match="no fold's test part"):
        attribute_ceiling([*ENTRIES, _entry("Z", 3, 3, 3, 3)], FOLDS)
    bad = dict(ENTRIES[0])
    del bad["enhancement"]
    with pytest.raises(ValueError, match="four scores"):
        attribute_ceiling([bad, *ENTRIES[1:]], FOLDS)


def test_the_script_prints_both_rules(tmp_path):
    import json

    (tmp_path / "dataset.json").write_text(json.dumps({"quality": [{**e, "label": "l.nii.gz"} for e in ENTRIES]}))
    (tmp_path / "folds.json").write_text(json.dumps({"folds": FOLDS}))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cli = [sys.executable, os.path.join(root, "scripts", "qa_label_ceiling.py"), "--dataset_dir", str(tmp_path)]
    out = subprocess.run([*cli, "--folds", str(tmp_path / "folds.json")], capture_output=True, text=True, check=True)
    assert "| mean_rule | 0.917 ± 0.083 (0.900) | 1.000 ± 0.000 (1.000) |" in out.stdout
    bad = subprocess.run([*cli, "--folds", str(tmp_path / "none.json")], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip().startswith("ERROR") and len(bad.stderr.strip().splitlines()) == 1
