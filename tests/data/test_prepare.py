import json
import os

from bundle.data import cached_slices, prepare_data
from bundle.errors import DataError, error_line
from tests.error_helpers import raises_error


def test_split_saved_and_parts_disjoint(tiny_demo, tmp_path):
    data = prepare_data(
        datalist=tiny_demo,
        output_dir=str(tmp_path),
        test_size=0.25,
        seed=1,
        save_split_to=str(tmp_path / "run" / "split.json"),
    )
    saved = json.load(open(tmp_path / "run" / "split.json"))
    assert saved["test"] == data.split["test"] and len(saved["test"]) == 2
    assert set(saved["images"]) == {"segmentation", "quality"}
    seen = {}
    for list_name in ("segmentation", "quality"):
        for part in ("train", "val", "test"):
            for e in data.entries(list_name, part):
                assert seen.setdefault(e["patient"], part) == part  # a patient's volumes share one part


def test_no_dataset_makes_the_demo_inside_output_dir(tmp_path):
    data = prepare_data(output_dir=str(tmp_path / "out"), test_size=20)
    assert data.datalist == str(tmp_path / "out" / "demo" / "dataset.json")
    assert len(data.split["test"]) == 20 and data.split["train"]


def test_bad_entry_stops_with_one_line_and_writes_nothing(toy_dataset, tmp_path):
    path = toy_dataset(
        quality=[
            {"image": "images/a.nii.gz", "patient": "a", "nulling": 7, "sharpness": 3, "enhancement": 3, "fibrosis": 3}
        ]
    )
    out = tmp_path / "out"
    with raises_error(DataError) as err:
        prepare_data(datalist=path, output_dir=str(out), save_split_to=str(out / "run" / "split.json"))
    assert error_line(err.value).startswith("ERROR data: dataset.json: quality[0] (patient a): score 'nulling'")
    assert "\n" not in error_line(err.value)
    assert not out.exists()


def test_user_split_with_leak_is_refused(toy_dataset, tmp_path):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["a", "b"], "val": ["b"], "test": []}))
    with raises_error(DataError, "patient b is in both 'train' and 'val'"):
        prepare_data(datalist=toy_dataset(), output_dir=str(tmp_path / "o"), split_file=str(split))


def test_dataset_dir_without_datalist(toy_dataset, tmp_path):
    toy_dataset()
    data = prepare_data(
        dataset_dir=str(toy_dataset.root), output_dir=str(tmp_path / "o"), test_size=0, val_fraction=0.5
    )
    assert sorted(data.split["train"] + data.split["val"]) == ["a", "b"]
    with raises_error(DataError, "no dataset.json"):
        prepare_data(dataset_dir=str(tmp_path / "o"), output_dir=str(tmp_path / "o2"))


def test_cached_slices_unreadable_volume_exits(toy_dataset, tmp_path):
    path = toy_dataset()
    data = prepare_data(datalist=path, output_dir=str(tmp_path / "o"), test_size=0, val_fraction=0.5)
    (toy_dataset.root / "images" / "a.nii.gz").write_bytes(b"garbage")
    part = "train" if "a" in data.split["train"] else "val"
    with raises_error(DataError, r"\(patient a\): cannot read"):
        cached_slices(data, "segmentation", part, spatial_size=16)
    assert os.path.exists(toy_dataset.root / "images" / "b.nii.gz")
