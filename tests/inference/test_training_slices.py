"""QA training slices: LA selection by mask and by the detector (cached, as inference selects), targets, masks."""

import json
import os

import numpy as np
import pytest
import torch

from bundle.data import prepare_data, to_binary
from bundle.errors import ConfigError, WeightsError, error_line
from bundle.inference import detect_la, select_qa_slices
from tests.conftest import write_known_detector
from tests.error_helpers import raises_error

LEVEL = 0.945  # the detector below marks pixels brighter than this (about half the demo slices hold one)


@pytest.fixture
def demo_split(tiny_demo, tmp_path):
    return prepare_data(datalist=tiny_demo, output_dir=str(tmp_path / "runs"), test_size=2, val_fraction=0.2)


@pytest.fixture
def detector(tmp_path):
    """A one-logit-per-pixel "detector" whose answer is known: logit = 20 * (intensity - LEVEL), with its plan."""
    return write_known_detector(tmp_path / "det", LEVEL)


def _inference_selection(ckpt, entries):
    """The LA slices inference's own step selects on each entry (the rule stage 2 sees at deployment)."""
    from bundle.inference import ScanResult, TwoStageStep, load_detector, load_volume, plan_inferer

    network, plan = load_detector(ckpt)
    step = TwoStageStep(
        la_threshold=plan["la_threshold"],
        min_slices=4,
        min_la_area_mm2=plan["min_la_area_mm2"],
        keep_largest=plan["keep_largest"],
    )
    out = []
    for e in entries:
        result = ScanResult(input=e["image"])
        with torch.no_grad():
            step.assess_volume(load_volume(e["image"]), network, plan_inferer(plan), result)
        out.append([s["index"] for s in result.detail.slices if s["selected"]])
    return out


def test_mask_selection_targets_and_step(demo_split, tmp_path):
    s = select_qa_slices(demo_split, "train", mode="mask", spatial_size=16, cache_dir=str(tmp_path / "cache"))
    c = s.cache
    assert s.indices.tolist() == np.flatnonzero(c.has_la).tolist() and len(s) > 0
    rec = s.records()[0]
    entry = c.entries[rec["volume"]]
    assert rec["target"].tolist() == [to_binary(entry[k]) for k in ("nulling", "sharpness", "enhancement", "fibrosis")]
    assert rec["target"].dtype == np.float32 and rec["image"].shape == (1, 16, 16) and rec["label"].any()
    assert s.slice_targets().shape == (len(s), 4)
    every_other = select_qa_slices(
        demo_split, "train", mode="mask", spatial_size=16, cache_dir=str(tmp_path / "cache"), step=2
    )
    for v in np.unique(c.volume[s.indices]):
        kept = s.indices[c.volume[s.indices] == v]
        assert every_other.indices[c.volume[every_other.indices] == v].tolist() == kept[::2].tolist()
    assert s.scan_names(demo_split.dataset_dir)[0].startswith("qa" + os.sep)


def test_detector_selection_is_inference_selection_and_is_cached(demo_split, detector, tmp_path):
    cache_dir = str(tmp_path / "cache")
    s = select_qa_slices(
        demo_split, "train", mode="detector", spatial_size=16, cache_dir=cache_dir, detector_ckpt=detector
    )
    c = s.cache
    assert 0 < len(s) < len(c)
    # one rule: the slices QA trains on are exactly those inference hands to stage 2
    expected = _inference_selection(detector, c.entries)
    for v, chosen in enumerate(expected):
        assert c.slice[s.indices[c.volume[s.indices] == v]].tolist() == chosen
    # the known detector marks pixels above LEVEL: every selected slice has one, most unselected ones none
    peaks = c.images.astype(np.float32).reshape(len(c), -1).max(1)
    assert (peaks[s.indices] > LEVEL - 0.05).all()
    assert [f for f in os.listdir(cache_dir) if f.startswith("la_selection_")]
    os.remove(os.path.splitext(detector)[0] + ".json")  # a cached selection is keyed by the plan too
    with raises_error(WeightsError, "no plan beside the checkpoint"):
        select_qa_slices(
            demo_split, "train", mode="detector", spatial_size=16, cache_dir=cache_dir, detector_ckpt=detector
        )


def test_detector_masks_replace_missing_labels(tiny_demo, detector, tmp_path):
    lists = json.load(open(tiny_demo))
    for e in lists["quality"]:
        e.pop("label", None)  # no quality scan has a mask now
        e["image"] = os.path.join(os.path.dirname(tiny_demo), e["image"])
    for e in lists["segmentation"]:
        for k in ("image", "label"):
            e[k] = os.path.join(os.path.dirname(tiny_demo), e[k])
    path = tmp_path / "nolabels.json"
    path.write_text(json.dumps(lists))
    data = prepare_data(datalist=str(path), output_dir=str(tmp_path / "runs"), test_size=2, val_fraction=0.2)
    assert select_qa_slices(data, "val", mode="mask", spatial_size=16).indices.size == 0  # no mask, no slice
    s = select_qa_slices(data, "val", mode="detector", spatial_size=8, detector_ckpt=detector)
    selected, masks = detect_la(s.cache, detector)
    np.testing.assert_array_equal(s.masks, masks)
    assert masks.any() and masks.shape[2:] == (8, 8)
    has_mask = masks.reshape(len(masks), -1).any(1)
    assert not has_mask[~selected].any() and has_mask[selected].mean() > 0.5  # masks only where the LA was found


def test_missing_detector_is_one_clear_line(demo_split, tmp_path):
    with raises_error(WeightsError) as e:
        select_qa_slices(
            demo_split, "train", mode="detector", spatial_size=16, detector_ckpt=str(tmp_path / "model.pt")
        )
    msg = error_line(e.value)
    assert (
        "\n" not in msg
        and "no LA detector checkpoint at" in msg
        and "configs/train.yaml" in msg
        and "--qa_slices mask" in msg
    )
    with raises_error(ConfigError, "qa_slices must be one of"):
        select_qa_slices(demo_split, "train", mode="other")
