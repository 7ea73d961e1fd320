"""The QA engines' batches: what the network gets and what the loss compares it with, per mode."""

import pytest
import torch

from bundle.data import PrepareQABatch


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
