"""Augmented views for contrastive pretraining."""

import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandAxisFlipd

from bundle.transforms import MultiView, MultiViewd, RandSliceAffined


def test_multiviewd_stacks_independent_views_with_shared_draw_per_view():
    img = torch.arange(64, dtype=torch.float32).reshape(1, 8, 8)
    aug = Compose(
        [
            RandAxisFlipd(keys=["image", "label"], prob=1.0),
            RandSliceAffined(keys=["image", "label"], prob=1.0, translate_range=2, mode="bilinear"),
        ]
    )
    t = MultiViewd(keys=["image", "label"], transform=aug, views=3)
    aug.set_random_state(0)
    out = t({"image": img, "label": img.clone(), "target": np.ones(4)})
    assert out["image"].shape == (3, 1, 8, 8) and out["label"].shape == (3, 1, 8, 8)
    assert not torch.equal(out["image"][0], out["image"][1]) or not torch.equal(out["image"][1], out["image"][2])
    torch.testing.assert_close(out["image"], out["label"])  # image and mask of a view share the draw (equal inputs)
    assert out["target"].tolist() == [1, 1, 1, 1]


def test_multiview_array():
    calls = iter(range(10))
    out = MultiView(lambda x: x + next(calls), views=2)(torch.zeros(1, 2, 2))
    assert out.shape == (2, 1, 2, 2) and out[1].sum() == 4.0
    with pytest.raises(ValueError):
        MultiView(lambda x: x, views=0)
