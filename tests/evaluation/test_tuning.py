"""bundle.evaluation.tuning's choice of qa_threshold and refer_uncertainty, on hand-made per-flip probabilities."""

import numpy as np
import pytest

from bundle.evaluation.tuning import DEFAULTS, tune_verdict


def scan(label, fibrosis, spread=0.0):
    """A scan of 3 LA slices under 4 flips: fibrosis probability ``fibrosis`` +- ``spread`` (alternating flips)."""
    f = np.array([fibrosis + spread, fibrosis - spread, fibrosis + spread, fibrosis - spread])[:, None]
    probs = np.concatenate([np.full((4, 3, 3), 0.5), np.repeat(f, 3, axis=1)[..., None]], axis=-1)
    return {"label": label, "probs": probs}


def test_threshold_is_the_best_balanced_accuracy_closest_to_half():
    # diagnostic scans at 0.45, non-diagnostic at 0.2: thresholds 0.25 .. 0.45 separate them (balanced accuracy 1),
    # up to 0.2 everything is diagnostic, from 0.5 nothing (0.5); the separating one closest to 0.5 is 0.45
    res = tune_verdict([scan(1, 0.45)] * 4 + [scan(0, 0.2)] * 4, max_refer=0.25, min_scans=8)
    by_t = {r["qa_threshold"]: r for r in res["thresholds"]}
    assert [by_t[t]["balanced_accuracy"] for t in (0.2, 0.25, 0.45, 0.5)] == [0.5, 1.0, 1.0, 0.5]
    assert res["tuned"]["qa_threshold"] == 0.45
    assert res["recommended"] == res["tuned"] and res["kept_defaults_because"] == []


def test_referral_takes_the_uncertain_wrong_scan():
    # a non-diagnostic scan at 0.7 whose flips spread by 0.04 (views 0.74, 0.66, ...: std 0.04, every view above the
    # threshold, so only the spread can refer it): wrong at 0.45; referred for u < 0.04 (accuracy of the rest 1),
    # kept from 0.05 (8 of 9 right); the largest candidate referring it: 0.03
    scans = [scan(1, 0.45)] * 4 + [scan(0, 0.2)] * 4 + [scan(0, 0.7, spread=0.04)]
    res = tune_verdict(scans, max_refer=0.25, min_scans=9)
    assert res["tuned"]["qa_threshold"] == 0.45
    by_u = {r["refer_uncertainty"]: r for r in res["refer"]}
    assert by_u[0.03]["referred"] == 1 and by_u[0.03]["accuracy_kept"] == 1.0
    assert by_u[0.05]["referred"] == 0 and by_u[0.05]["accuracy_kept"] == pytest.approx(8 / 9)
    assert res["tuned"]["refer_uncertainty"] == 0.03
    # referring more than max_refer is not allowed: with max_refer 0.1 (< 1/9) nothing may be referred
    assert tune_verdict(scans, max_refer=0.1, min_scans=9)["tuned"]["refer_uncertainty"] == 1.0


def test_too_few_or_one_class_keeps_the_defaults():
    res = tune_verdict([scan(1, 0.6)] * 4, max_refer=0.25, min_scans=20)
    assert res["recommended"] == DEFAULTS
    assert any("only 4" in r for r in res["kept_defaults_because"])
    assert any("single class" in r for r in res["kept_defaults_because"])


def test_cli_keeps_an_earlier_tuning(tmp_path, capsys):
    from scripts.tune_inference import main

    (tmp_path / "tuning.json").write_text("{}")
    assert main(["--split_file", "x", "--qa_ckpt", "y", "--output_dir", str(tmp_path)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"ERROR output: {tmp_path} already holds tuning.json; choose another --output_dir"
    )
    assert (tmp_path / "tuning.json").read_text() == "{}"
