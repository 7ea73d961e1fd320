"""Slices by physical pixel size, the training canvas, 2.5D context, and the foreground intensity mapping."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.transforms import ExtractSlices, ScaleForegroundPercentiles, random_crop


def _vol(shape, spacing):
    return MetaTensor(torch.rand(1, *shape), affine=torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64)))


def test_pixel_size_sets_the_slice_size_and_the_canvas_pads_or_crops():
    v = _vol((40, 30, 5), (0.625, 1.25, 2.0))
    assert ExtractSlices(None, pixel_mm=1.25)(v).shape == (5, 1, 20, 30)  # 25 mm x 37.5 mm at 1.25 mm
    canvas = ExtractSlices(24, pixel_mm=1.25)(v)
    assert canvas.shape == (5, 1, 24, 24)
    plain = ExtractSlices(None, pixel_mm=1.25)(v)
    torch.testing.assert_close(canvas[:, :, 2:22, :], plain[:, :, :, 3:27])  # rows padded 2+2, columns cropped 3+3
    assert (canvas[:, :, :2] == 0).all() and (canvas[:, :, 22:] == 0).all()
    with pytest.raises(ValueError):
        ExtractSlices(None)


def test_context_channels_are_the_neighbours_in_order_edges_repeated():
    v = MetaTensor(
        torch.arange(4.0).reshape(1, 1, 1, 4).expand(1, 2, 2, 4).clone(),
        affine=torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)),
    )
    out = ExtractSlices(None, pixel_mm=1.0, context=1)(v)
    assert out.shape == (4, 3, 2, 2)
    assert out[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    far = ExtractSlices(None, pixel_mm=1.0, context=1, context_mm=2.0)(v)  # 2 mm apart: every other slice
    assert far[:, :, 0, 0].tolist() == [[0, 0, 2], [0, 1, 3], [0, 2, 3], [1, 3, 3]]


def test_foreground_percentiles_ignore_a_dark_margin():
    rng = np.random.default_rng(0)
    img = torch.as_tensor(rng.uniform(1, 200, (1, 20, 20, 4)), dtype=torch.float32)
    wide = torch.zeros((1, 60, 60, 4))
    wide[:, 20:40, 20:40] = img
    a, b = ScaleForegroundPercentiles()(img), ScaleForegroundPercentiles()(wide)
    torch.testing.assert_close(b[:, 20:40, 20:40], a)
    assert float(a.min()) == 0.0 and float(a.max()) == 1.0 and (b[:, :20] == 0).all()
    binary = torch.zeros((1, 4, 4, 4))
    binary[:, 1:3] = 100.0  # a constant foreground maps to 1, the rest to 0
    assert set(ScaleForegroundPercentiles()(binary).unique().tolist()) == {0.0, 1.0}


def test_random_crop_only_with_spacing_slices():
    assert random_crop(96, None) == [] and random_crop(None, 1.25) == []
    (crop,) = random_crop(8, 1.25)
    out = crop({"image": torch.zeros(3, 16, 16), "label": torch.zeros(1, 16, 16)})
    assert out["image"].shape == (3, 8, 8) and out["label"].shape == (1, 8, 8)
