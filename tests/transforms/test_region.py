"""The LA-region cut: exact copy at the scan's pixel size, the same crops inside a wider field of view, the window
mapped back onto the slice, the per-scan normalisation."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.transforms.region import center_window, la_centroid, la_region_slices, normalise_region, region_to_slice


def scan(shape=(40, 30, 10), spacing=0.625, pad=(0, 0)):
    rng = np.random.default_rng(0)
    img = np.zeros((shape[0] + 2 * pad[0], shape[1] + 2 * pad[1], shape[2]), np.float32)
    img[pad[0] : pad[0] + shape[0], pad[1] : pad[1] + shape[1]] = rng.random(shape) + 0.1
    mask = np.zeros_like(img)
    mask[pad[0] + 15 : pad[0] + 25, pad[1] + 10 : pad[1] + 16, 2:8] = 1
    affine = np.diag([spacing, spacing, 2.0, 1.0])
    return MetaTensor(torch.from_numpy(img)[None], affine=torch.as_tensor(affine)), torch.from_numpy(mask)


def test_centroid_and_exact_copy_at_native_pixel_size():
    vol, mask = scan()
    assert la_centroid(mask, 2) == pytest.approx((19.5, 12.5))
    out = la_region_slices(vol, mask, 2, [2, 5], pixel_mm=0.625, size=8)
    assert out.shape == (2, 1, 8, 8)
    # centre rounded to (20, 12) (round half to even: 19.5 -> 20, 12.5 -> 12); even width: rows 17..24, cols 9..16
    np.testing.assert_allclose(out[0, 0].numpy(), vol[0, 17:25, 9:17, 2].numpy(), atol=1e-5)  # float32 grid rounding
    np.testing.assert_allclose(out[1, 0].numpy(), vol[0, 17:25, 9:17, 5].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        la_region_slices(vol, torch.zeros_like(mask), 2, [2])
    with pytest.raises(ValueError, match="outside"):
        la_region_slices(vol, mask, 2, [10])


@pytest.mark.parametrize("pixel_mm, size", [(0.625, 24), (1.0, 16), (1.25, 12)])
def test_same_crops_inside_a_wider_field_of_view(pixel_mm, size):
    small, small_mask = scan()
    wide, wide_mask = scan(pad=(20, 16))  # the same scan centred in a field of view twice as wide, dark around it
    a = la_region_slices(small, small_mask, 2, [3, 4, 6], pixel_mm, size)
    b = la_region_slices(wide, wide_mask, 2, [3, 4, 6], pixel_mm, size)
    assert a.shape == (3, 1, size, size)
    # the window may reach past the small scan (zeros) where the wide scan is dark too (zeros): the same pixels
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_window_maps_back_onto_the_slice():
    vol, mask = scan()
    ones = np.ones((1, 8, 8), np.float32)
    back = region_to_slice(ones, mask, 2, (40, 30), (0.625, 0.625), 0.625, 8)
    assert back.shape == (1, 40, 30)
    rows, cols = np.nonzero(back[0] > 0.5)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (17, 24, 9, 16)  # where the window was cut


def test_normalise_region_sets_the_median_of_the_scan():
    x = np.array([[[0.0, 0.2, 0.4], [0.6, 0.8, 0.0]]], np.float32)  # median of the non-zero pixels: 0.5
    y = normalise_region(x, 0.5)
    np.testing.assert_allclose(y, x)
    np.testing.assert_allclose(normalise_region(torch.as_tensor(x), 1.0).numpy(), x * 2)
    assert normalise_region(np.zeros((1, 2, 2)), 0.5).sum() == 0


def test_normalise_region_by_the_window_centre():
    x = np.full((2, 6, 6), 0.9, np.float32)
    x[:, 1:5, 1:5] = 0.25  # the central 4 x 4: median 0.25; the whole stack: median 0.9
    np.testing.assert_allclose(normalise_region(x, 0.5, center=4), x * 2)
    np.testing.assert_allclose(normalise_region(x, 0.5), x * 0.5 / 0.9, rtol=1e-6)
    np.testing.assert_allclose(center_window(x, 4), x[:, 1:5, 1:5])
    assert center_window(x, None) is x and center_window(x, 8) is x
