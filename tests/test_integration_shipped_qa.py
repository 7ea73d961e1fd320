"""The shipped QA network (models/qa.pt with models/qa.json) with the shipped detector, as a fresh clone runs them
(scripts/assess.py with no weight options), on the two shared DICOM exports: the verdicts of their scores.

Both exports are non-diagnostic for fibrosis (0RZDK210BSMWAA6467LU_q0 scores 2, 1MHBF3G6DCPWHSKG7XCP_q1 scores 2).
The shipped model was trained on every la2018 patient, these two included, so this checks that the weights load
and run as shipped, not how they generalise (docs/qa_crossval.md has the out-of-fold figures).
"""

import csv
import json
import os

import pytest

from scripts import assess
from tests.conftest import LA2018, ROOT

DICOM = os.path.join(LA2018, "dicom")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isdir(DICOM), reason="no la2018 data"),
]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("shipped") / "out"
    assert assess.main([DICOM, "--output_dir", str(out), "--no_html"]) == 0
    with open(out / "qa_report.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return rows, json.load(open(out / "qa_report.json"))["settings"]


@pytest.mark.parametrize(
    "export",
    [
        "0RZDK210BSMWAA6467LU_q0",
        # scored 3/3/3 on the attributes but 2 for fibrosis (the label noise the issue speaks of): the ensemble says
        # p 0.65 (0.12.0; 0.61 in 0.10.0, 0.58 in 0.7.0) and out of fold every strategy said diagnostic too; a strict
        # expected failure documents the unmet goal
        pytest.param(
            "1MHBF3G6DCPWHSKG7XCP_q1_messy",
            marks=pytest.mark.xfail(
                strict=True, reason="fibrosis 2 with attributes 3/3/3: called diagnostic (p 0.65), out of fold too"
            ),
        ),
    ],
)
def test_shipped_weights_give_the_verdicts_of_the_scores(report, export):
    assert os.path.isfile(os.path.join(ROOT, "models", "qa.pt")) and os.path.isfile(
        os.path.join(ROOT, "models", "qa.json")
    )
    scores = {}
    with open(os.path.join(LA2018, "qa_scores.csv"), newline="") as f:
        for r in csv.DictReader(f):
            scores[os.path.basename(r["image"]).replace(".nii.gz", "")] = int(r["fibrosis"])
    rows, settings = report
    assert settings["qa_rule"] == "mean_logit" and settings["qa_plan"].endswith("qa.json")
    r = next(r for r in rows if os.path.basename(r["input"]) == export and r["n_slices"] == "88")
    assert r["status"] == "ok", r
    assert int(r["diagnostic"]) == int(float(r["p_fibrosis"]) >= settings["qa_threshold"])  # the one threshold rule
    name = export.replace("_messy", "")
    assert int(r["diagnostic"]) == int(scores[name] >= 3), (name, r["p_fibrosis"])
