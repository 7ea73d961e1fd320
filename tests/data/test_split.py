import json

import pytest

from bundle.data import DatalistError, assign_split, check_split, load_split, save_split, split_patients

PATIENTS = [f"p{i:02d}" for i in range(30)]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("test_size", [20, 6, 0.2, 0])
def test_no_patient_crosses_parts_and_all_are_used(seed, test_size):
    split = split_patients(PATIENTS, test_size=test_size, seed=seed)
    parts = [set(split[p]) for p in ("train", "val", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == set(PATIENTS)


@pytest.mark.parametrize("test_size, n_test, n_val", [(20, 20, 1), (6, 6, 2), (0.2, 6, 2), (0, 0, 3)])
def test_sizes(test_size, n_test, n_val):
    split = split_patients(PATIENTS, test_size=test_size, val_fraction=0.1)
    assert len(split["test"]) == n_test and len(split["val"]) == n_val
    assert len(split["train"]) == 30 - n_test - n_val


def test_deterministic_and_order_independent():
    a = split_patients(PATIENTS, test_size=6, seed=3)
    assert a == split_patients(list(reversed(PATIENTS)) + PATIENTS[:3], test_size=6, seed=3)
    assert a != split_patients(PATIENTS, test_size=6, seed=4)


def test_too_few_patients():
    with pytest.raises(DatalistError, match="cannot hold 20 test"):
        split_patients(PATIENTS[:21], test_size=20)


def test_patient_in_two_parts_is_an_error(tmp_path):
    with pytest.raises(DatalistError, match="patient p01 is in both 'train' and 'test'"):
        check_split({"train": ["p00", "p01"], "val": [], "test": ["p01"]})
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["a"], "val": ["a"], "test": []}))
    with pytest.raises(DatalistError, match="split.json: patient a is in both 'train' and 'val'"):
        load_split(str(path))


def test_assign_by_patient_and_unknown_patient():
    entries = [{"patient": "a", "image": "1"}, {"patient": "b", "image": "2"}, {"patient": "a", "image": "3"}]
    parts = assign_split(entries, {"train": ["a"], "val": ["b"], "test": []})
    assert [e["image"] for e in parts["train"]] == ["1", "3"] and len(parts["val"]) == 1
    with pytest.raises(DatalistError, match="patient is in no part"):
        assign_split(entries + [{"patient": "c", "_list": "quality", "_index": 3}], {"train": ["a", "b"]})


def test_save_and_load_round_trip(tmp_path):
    split = split_patients(PATIENTS, test_size=6)
    path = save_split({**split, "seed": 0}, str(tmp_path / "s" / "split.json"))
    assert load_split(path) == split
