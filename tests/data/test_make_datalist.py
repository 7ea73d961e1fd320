import json
import os
import subprocess
import sys

import pytest

from bundle.data import DatalistError, load_datalist, validate_datalist
from bundle.data.make_datalist import datalist_from_csv

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEADER = "image,label,patient,nulling,sharpness,enhancement,fibrosis\n"


def _csv(tmp_path, rows, header=HEADER):
    path = tmp_path / "scores.csv"
    path.write_text(header + "".join(rows))
    return str(path)


def test_csv_and_folders_to_valid_datalist(toy_dataset, tmp_path):
    toy_dataset()
    root = str(toy_dataset.root)
    csv_path = _csv(tmp_path, ["images/a.nii.gz,labels/a.nii.gz,a,3,4,2,3\n", "images/b.nii.gz,,b,1,1,1,2\n"])
    d = datalist_from_csv(csv_path, root, "images", "labels")
    assert d["quality"][0] == {
        "image": "images/a.nii.gz",
        "label": "labels/a.nii.gz",
        "patient": "a",
        "nulling": 3,
        "sharpness": 4,
        "enhancement": 2,
        "fibrosis": 3,
    }
    assert "label" not in d["quality"][1]
    assert [e["patient"] for e in d["segmentation"]] == ["a", "b"]
    out = tmp_path / "dl.json"
    out.write_text(json.dumps(d))
    validate_datalist(load_datalist(str(out), root))


def test_patient_from_name(toy_dataset, tmp_path):
    toy_dataset()
    csv_path = _csv(
        tmp_path, ["images/a.nii.gz,,,3,3,3,3\n"], header="image,label,patient,nulling,sharpness,enhancement,fibrosis\n"
    )
    assert datalist_from_csv(csv_path, str(toy_dataset.root))["quality"][0]["patient"] == "a"
    d = datalist_from_csv(None, str(toy_dataset.root), "images", "labels", patient_pattern=r"^(\w)")
    assert [e["patient"] for e in d["segmentation"]] == ["a", "b"]


@pytest.mark.parametrize(
    "rows, header, message",
    [
        (["images/a.nii.gz,,a,3,3,6,3\n"], HEADER, r"scores.csv:2: score 'enhancement' must be an integer in 1..5"),
        (["images/a.nii.gz,,a,3,x,3,3\n"], HEADER, r"scores.csv:2: score 'sharpness' is not a number"),
        ([",,a,3,3,3,3\n"], HEADER, r"scores.csv:2: empty 'image'"),
        ([], "image,patient,nulling\n", r"missing columns \['sharpness', 'enhancement', 'fibrosis'\]"),
    ],
)
def test_bad_rows(tmp_path, rows, header, message):
    with pytest.raises(DatalistError, match=message):
        datalist_from_csv(_csv(tmp_path, rows, header), str(tmp_path))


def test_script_refuses_to_overwrite_and_reports_missing_files(toy_dataset, tmp_path):
    toy_dataset()
    script = os.path.join(ROOT, "scripts", "make_datalist.py")
    out = tmp_path / "out.json"
    out.write_text("keep me")
    csv_path = _csv(tmp_path, ["images/zz.nii.gz,,z,3,3,3,3\n"])
    args = [sys.executable, script, "--dataset_dir", str(toy_dataset.root), "--csv", csv_path, "--output"]
    res = subprocess.run(args + [str(out)], capture_output=True, text=True)
    assert res.returncode == 1 and "exists" in res.stderr and out.read_text() == "keep me"
    res = subprocess.run(args + [str(tmp_path / "new.json")], capture_output=True, text=True)
    assert res.returncode == 1 and "quality[0] (patient z): image not found" in res.stderr
    assert not (tmp_path / "new.json").exists() and not (tmp_path / "new.json.tmp").exists()
