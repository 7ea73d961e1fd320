import json
import os

import nibabel as nib
import numpy as np

from bundle.data import load_datalist, make_demo_dataset, validate_datalist


def test_demo_is_valid_deterministic_and_reused(tmp_path):
    kw = dict(n_patients=3, shape=(24, 24, 8), spacing=(2.5, 2.5, 5.0))
    a = make_demo_dataset(str(tmp_path / "a"), **kw)
    make_demo_dataset(str(tmp_path / "b"), **kw)  # compared with a file by file below
    lists = load_datalist(a)
    validate_datalist(lists)
    assert len(lists["segmentation"]) == 3 and len(lists["quality"]) == 6
    for e in lists["quality"]:
        assert all(1 <= e[k] <= 5 for k in ("nulling", "sharpness", "enhancement", "fibrosis"))
    for rel in ("images/demo001.nii.gz", "qa/demo002_q1.nii.gz", "labels/demo000.nii.gz"):
        np.testing.assert_array_equal(
            nib.load(os.path.join(tmp_path, "a", rel)).get_fdata(),
            nib.load(os.path.join(tmp_path, "b", rel)).get_fdata(),
        )
    mask = nib.load(os.path.join(tmp_path, "a", "labels/demo000.nii.gz")).get_fdata()
    assert 0 < mask.sum() < mask.size / 4 and 0 < (mask.sum((0, 1)) > 0).sum() < 8  # LA in some slices only
    mtime = os.path.getmtime(a)
    assert make_demo_dataset(str(tmp_path / "a"), **kw) == a and os.path.getmtime(a) == mtime
    assert json.load(open(a))["demo_params"]["n_patients"] == 3


def test_la_is_bright_in_the_clean_image(tmp_path):
    path = make_demo_dataset(str(tmp_path), n_patients=1, shape=(40, 40, 12), spacing=(2.0, 2.0, 4.0))
    root = os.path.dirname(path)
    img = nib.load(os.path.join(root, "images/demo000.nii.gz")).get_fdata()
    mask = nib.load(os.path.join(root, "labels/demo000.nii.gz")).get_fdata() > 0
    assert img[mask].mean() > 2 * img[~mask].mean()
