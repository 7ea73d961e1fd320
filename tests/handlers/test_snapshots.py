"""BatchSnapshot draws what it is told the batch holds (segmentation, QA, multi-task, views), on a real ignite engine,
and refuses a batch that does not hold it in one line."""

import os

import pytest
import torch
from ignite.engine import Engine

from bundle.handlers.snapshots import BatchSnapshot


def _engine(output, batch=None) -> Engine:
    engine = Engine(lambda e, b: None)
    engine.state.output, engine.state.batch = output, batch
    return engine


def _slices(n=4, size=8):
    image = torch.rand(n, 3, size, size)
    label = torch.zeros(n, 1, size, size)
    label[:, :, 2:5, 2:5] = 1
    return image, label


def _drawn(handler, monkeypatch) -> dict:
    """The arguments BatchSnapshot gives save_slice_grid (the PNG is also written)."""
    import bundle.handlers.snapshots as snapshots

    seen = {}
    real = snapshots.save_slice_grid

    def spy(images, path, labels=None, preds=None, titles=None, suptitle=None):
        seen.update(images=images, labels=labels, preds=preds, titles=titles)
        return real(images, path, labels, preds, titles, suptitle)

    monkeypatch.setattr(snapshots, "save_slice_grid", spy)
    return seen


def test_segmentation_draws_the_mask_and_the_thresholded_prediction(tmp_path, monkeypatch):
    image, label = _slices()
    pred = torch.zeros(4, 1, 8, 8)
    pred[:, :, 3:6, 3:6] = 0.7  # above 0.5 on a 3x3 block
    out = [{"image": image[i], "label": label[i], "pred": pred[i]} for i in range(4)]  # decollated
    handler = BatchSnapshot(str(tmp_path / "seg.png"), max_images=2)
    seen = _drawn(handler, monkeypatch)
    handler(_engine(out))
    assert os.path.isfile(tmp_path / "seg.png")
    assert seen["images"].shape == (2, 8, 8) and seen["labels"].sum() == 2 * 9 and seen["preds"].sum() == 2 * 9


def test_qa_captions_probabilities_from_the_batched_output(tmp_path, monkeypatch):
    image, label = _slices()
    batch = {"image": image, "label": label, "target": torch.tensor([[1, 0, 1, 1]] * 4), "volume": torch.arange(4),
             "slice": torch.zeros(4)}  # fmt: skip
    out = {"pred": torch.zeros(4, 4)}  # logits 0: probabilities 0.5
    handler = BatchSnapshot(str(tmp_path / "qa.png"), max_images=4, source="batch", caption_key="target", content="qa")
    seen = _drawn(handler, monkeypatch)
    handler(_engine(out, batch))
    assert seen["preds"] is None and seen["labels"].shape == (4, 8, 8)
    assert seen["titles"][0] == "vol 0 slice 0\ny 1 0 1 1 p 0.50 0.50 0.50 0.50"


def test_multitask_draws_the_segmentation_head_and_captions_the_qa_head(tmp_path, monkeypatch):
    image, label = _slices(2)
    seg = torch.full((2, 1, 8, 8), -5.0)
    seg[:, :, :2, :2] = 5.0  # sigmoid > 0.5 on 4 pixels
    out = {"pred": {"qa": torch.zeros(2, 4), "seg": seg}}
    batch = {"image": image, "label": label, "volume": torch.arange(2), "slice": torch.zeros(2)}
    handler = BatchSnapshot(str(tmp_path / "mt.png"), source="batch", content="multitask")
    seen = _drawn(handler, monkeypatch)
    handler(_engine(out, batch))
    assert seen["preds"].sum() == 2 * 4 and seen["titles"][1] == "vol 1 slice 0"


def test_views_are_shown_side_by_side_in_whole_groups(tmp_path, monkeypatch):
    batch = {"image": torch.rand(3, 2, 1, 8, 8), "volume": torch.arange(3), "slice": torch.zeros(3)}
    handler = BatchSnapshot(str(tmp_path / "v.png"), max_images=5, show_pred=False, source="batch", content="views")
    seen = _drawn(handler, monkeypatch)
    handler(_engine({"loss": torch.tensor(1.0)}, batch))
    assert seen["images"].shape == (4, 8, 8)  # 5 slices asked: two whole pairs of views
    assert seen["titles"][:2] == ["vol 0 slice 0 view 1", "vol 0 slice 0 view 2"]


def test_a_batch_unlike_the_content_is_refused_in_one_line(tmp_path):
    image, label = _slices(2)
    out = [{"image": image[i], "label": label[i], "pred": torch.zeros(4)} for i in range(2)]  # QA logits
    with pytest.raises(ValueError, match=r"content='segmentation'\): pred of shape \(4,\) is not an LA map"):
        BatchSnapshot(str(tmp_path / "x.png"))(_engine(out))
    with pytest.raises(ValueError, match="content must be one of"):
        BatchSnapshot(str(tmp_path / "x.png"), content="volume")
    with pytest.raises(ValueError, match=r"content='views'\): image of shape \(3, 8, 8\)"):
        BatchSnapshot(str(tmp_path / "x.png"), content="views")(_engine(out))
