"""Stage-2 slices: LA selection by mask and by the detector (cached), binary targets, masks, batches."""

import json
import os

import numpy as np
import pytest
import torch

from bundle.data import PrepareQABatch, detect_la, prepare_data, qa_slices, to_binary
from bundle.networks import load_network

DETECTOR_YAML = """
network_def: {_target_: torch.nn.Conv2d, in_channels: 1, out_channels: 1, kernel_size: 1}
"""
LEVEL = 0.945  # the detector below marks pixels brighter than this (about half the demo slices hold one)


@pytest.fixture
def demo_split(tiny_demo, tmp_path):
    return prepare_data(datalist=tiny_demo, output_dir=str(tmp_path / "runs"), test_size=2, val_fraction=0.2)


@pytest.fixture
def detector(tmp_path):
    """A one-logit-per-pixel "detector" whose answer is known: logit = 20 * (intensity - LEVEL)."""
    cfg = tmp_path / "detector.yaml"
    cfg.write_text(DETECTOR_YAML)
    conv = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(20.0)
        conv.bias.fill_(-20.0 * LEVEL)
    torch.save(conv.state_dict(), tmp_path / "model.pt")
    return str(cfg), str(tmp_path / "model.pt")


def test_mask_selection_targets_and_step(demo_split, tmp_path):
    s = qa_slices(demo_split, "train", mode="mask", spatial_size=16, cache_dir=str(tmp_path / "cache"))
    c = s.cache
    assert s.indices.tolist() == np.flatnonzero(c.has_la).tolist() and len(s) > 0
    rec = s.records()[0]
    entry = c.entries[rec["volume"]]
    assert rec["target"].tolist() == [to_binary(entry[k]) for k in ("nulling", "sharpness", "enhancement", "fibrosis")]
    assert rec["target"].dtype == np.float32 and rec["image"].shape == (1, 16, 16) and rec["label"].any()
    assert s.slice_targets().shape == (len(s), 4)
    every_other = qa_slices(demo_split, "train", mode="mask", spatial_size=16, cache_dir=str(tmp_path / "cache"), step=2)
    for v in np.unique(c.volume[s.indices]):
        kept = s.indices[c.volume[s.indices] == v]
        assert every_other.indices[c.volume[every_other.indices] == v].tolist() == kept[::2].tolist()
    assert s.scan_names(demo_split.dataset_dir)[0].startswith("qa" + os.sep)


def test_detector_selection_follows_the_detector_and_is_cached(demo_split, detector, tmp_path):
    cfg, ckpt = detector
    cache_dir = str(tmp_path / "cache")
    s = qa_slices(demo_split, "train", mode="detector", spatial_size=16, cache_dir=cache_dir, la_threshold=0.5,
                  detector_ckpt=ckpt, detector_config=cfg, detector_size=16)  # fmt: skip
    expected = np.flatnonzero(s.cache.images.astype(np.float32).reshape(len(s.cache), -1).max(1) > LEVEL)
    assert s.indices.tolist() == expected.tolist() and 0 < len(s) < len(s.cache)
    assert [f for f in os.listdir(cache_dir) if f.startswith("la_selection_")]
    open(cfg, "w").write("not: [a config")  # a cached selection needs neither the config nor a forward pass
    again = qa_slices(demo_split, "train", mode="detector", spatial_size=16, cache_dir=cache_dir, la_threshold=0.5,
                      detector_ckpt=ckpt, detector_config=cfg, detector_size=16)  # fmt: skip
    assert again.indices.tolist() == s.indices.tolist()


def test_detector_masks_replace_missing_labels(tiny_demo, detector, tmp_path):
    cfg, ckpt = detector
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
    assert qa_slices(data, "val", mode="mask", spatial_size=16).indices.size == 0  # no mask, no slice
    s = qa_slices(data, "val", mode="detector", spatial_size=8, la_threshold=0.5, detector_ckpt=ckpt,
                  detector_config=cfg, detector_size=16)  # fmt: skip
    det_cache = qa_slices(data, "val", mode="mask", spatial_size=16).cache
    pred = torch.as_tensor(det_cache.images.astype(np.float32) > LEVEL, dtype=torch.float32)
    expected = torch.nn.functional.interpolate(pred, size=(8, 8), mode="nearest").numpy().astype(np.uint8)
    assert expected.any() and np.mean(s.masks == expected) > 0.99  # pixels within float16 rounding of LEVEL may differ
    _, direct = detect_la(load_network(cfg, ckpt), det_cache.images, 0.5)
    np.testing.assert_array_equal(s.masks, torch.nn.functional.interpolate(torch.as_tensor(direct, dtype=torch.float32),
                                  size=(8, 8), mode="nearest").numpy().astype(np.uint8))  # fmt: skip


def test_missing_detector_is_one_clear_line(demo_split, tmp_path):
    with pytest.raises(SystemExit) as e:
        qa_slices(demo_split, "train", mode="detector", spatial_size=16, detector_ckpt=str(tmp_path / "model.pt"))
    msg = str(e.value)
    assert "\n" not in msg and "no LA detector checkpoint at" in msg and "configs/train.yaml" in msg and "--qa_slices mask" in msg
    with pytest.raises(SystemExit, match="qa_slices must be one of"):
        qa_slices(demo_split, "train", mode="other")


def test_prepare_batch_modes():
    batch = {"image": torch.rand(2, 1, 8, 8), "label": torch.ones(2, 1, 8, 8), "target": torch.ones(2, 4)}
    x, y = PrepareQABatch("qa")(batch)
    assert x.shape == (2, 1, 8, 8) and y.shape == (2, 4)
    x, y = PrepareQABatch("multitask")(batch)
    assert set(y) == {"qa", "seg"} and y["seg"].shape == (2, 1, 8, 8)
    x, y = PrepareQABatch("views")({**batch, "image": torch.rand(2, 2, 1, 8, 8)})
    assert x.shape == (2, 2, 1, 8, 8)
    with pytest.raises(ValueError):
        PrepareQABatch("other")
