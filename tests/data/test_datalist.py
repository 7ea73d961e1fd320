import json

import numpy as np
import pytest

from bundle.data import DatalistError, load_datalist, to_binary, validate_datalist
from tests.conftest import write_nifti


def test_loads_and_resolves_paths(toy_dataset):
    lists = load_datalist(toy_dataset())
    assert len(lists["segmentation"]) == 2 and len(lists["quality"]) == 2
    e = lists["segmentation"][0]
    assert e["image"] == str(toy_dataset.root / "images" / "a.nii.gz") and e["patient"] == "a"
    validate_datalist(lists)


def test_dataset_dir_overrides_datalist_folder(toy_dataset, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "list.json"
    elsewhere.write_text(open(toy_dataset()).read())
    lists = load_datalist(str(elsewhere), dataset_dir=str(toy_dataset.root))
    validate_datalist(lists)


def SEG(**kw):
    return [{"image": "images/a.nii.gz", "label": "labels/a.nii.gz", "patient": "a", **kw}]


def Q(**kw):
    scores = {"nulling": 3, "sharpness": 3, "enhancement": 3, "fibrosis": 3}
    return [{"image": "images/a.nii.gz", "patient": "a", **scores, **kw}]


@pytest.mark.parametrize(
    "seg, quality, message",
    [
        (SEG(image="images/zz.nii.gz"), [], r"segmentation\[0\] \(patient a\): image not found: .*zz.nii.gz"),
        (SEG(label="labels/zz.nii.gz"), [], r"segmentation\[0\] \(patient a\): label not found"),
        (SEG(label=None), [], r"segmentation\[0\] \(patient a\): segmentation entry has no 'label'"),
        (SEG(patient=""), [], r"segmentation\[0\]: no 'patient'"),
        ([], Q(fibrosis=0), r"quality\[0\] \(patient a\): score 'fibrosis' must be an integer in 1..5, got 0"),
        ([], Q(nulling=6), r"quality\[0\] \(patient a\): score 'nulling' must be an integer in 1..5, got 6"),
        ([], Q(sharpness=2.5), r"score 'sharpness' must be an integer in 1..5, got 2.5"),
        ([], Q(enhancement="3"), r"score 'enhancement' must be an integer in 1..5, got '3'"),
        ([], Q(enhancement=None), r"score 'enhancement' must be an integer in 1..5, got None"),
    ],
)
def test_bad_entry_gives_one_line_naming_it(toy_dataset, seg, quality, message):
    with pytest.raises(DatalistError, match=message) as err:
        validate_datalist(load_datalist(toy_dataset(seg, quality)))
    assert "\n" not in str(err.value)
    assert "dataset.json" in str(err.value)


def test_mask_shape_mismatch(toy_dataset):
    write_nifti(str(toy_dataset.root / "labels" / "small.nii.gz"), np.zeros((16, 12, 5), np.uint8))
    with pytest.raises(DatalistError, match=r"segmentation\[0\] \(patient a\): mask shape \(16, 12, 5\) differs"):
        validate_datalist(load_datalist(toy_dataset(SEG(label="labels/small.nii.gz"), [])))


def test_mask_geometry_mismatch(toy_dataset):
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    write_nifti(str(toy_dataset.root / "labels" / "thick.nii.gz"), np.zeros((16, 12, 6), np.uint8), affine)
    with pytest.raises(DatalistError, match=r"mask geometry \(affine\) differs"):
        validate_datalist(load_datalist(toy_dataset(SEG(label="labels/thick.nii.gz"), [])))
    validate_datalist(load_datalist(toy_dataset(SEG(label="labels/thick.nii.gz"), [])), check_geometry=False)


def test_all_problems_counted_first_raised(toy_dataset):
    path = toy_dataset(SEG(image="images/x.nii.gz") + SEG(image="images/y.nii.gz"), Q(fibrosis=9))
    with pytest.raises(DatalistError, match=r"x.nii.gz \(and 2 more problems"):
        validate_datalist(load_datalist(path))


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not a readable JSON"),
        ('{"other": []}', "holds none"),
        ('{"segmentation": {}}', "must be a list"),
        ('{"segmentation": [3]}', r"segmentation\[0\]: entry must be an object"),
    ],
)
def test_malformed_files(tmp_path, content, message):
    path = tmp_path / "d.json"
    path.write_text(content)
    with pytest.raises(DatalistError, match=message):
        load_datalist(str(path))
    with pytest.raises(DatalistError, match="datalist not found"):
        load_datalist(str(tmp_path / "missing.json"))


def test_empty_datalist(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"segmentation": [], "quality": []}))
    with pytest.raises(DatalistError, match="no entries"):
        validate_datalist(load_datalist(str(path)))


@pytest.mark.parametrize("score, expected", [(1, 0), (2, 0), (3, 1), (4, 1), (5, 1)])
def test_binarisation(score, expected):
    assert to_binary(score) == expected
