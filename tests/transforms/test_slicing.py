import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.transforms import ExtractSlices, ExtractSlicesd


def _volume(shape=(2, 10, 12, 5)):
    return torch.arange(np.prod(shape), dtype=torch.float32).reshape(shape)


def test_slices_along_last_axis_keep_values_without_resize():
    vol = _volume()
    out = ExtractSlices(spatial_size=(10, 12), slice_axis=2)(vol)
    assert out.shape == (5, 2, 10, 12) and out.dtype == torch.float32
    for k in range(5):
        torch.testing.assert_close(out[k], vol[..., k])


@pytest.mark.parametrize("axis, expected", [(0, (10, 1, 12, 5)), (1, (12, 1, 10, 5)), (-1, (5, 1, 10, 12))])
def test_shapes_per_axis(axis, expected):
    out = ExtractSlices(spatial_size=expected[2:], slice_axis=axis)(_volume((1, 10, 12, 5)))
    assert out.shape == expected


def test_resize_linear_and_nearest():
    vol = torch.zeros(1, 20, 20, 3)
    vol[:, 5:15, 5:15, 1] = 1
    img = ExtractSlices(spatial_size=8, slice_axis=2, mode="bilinear")(vol)
    mask = ExtractSlices(spatial_size=8, slice_axis=2, mode="nearest")(vol.to(torch.uint8))
    assert img.shape == mask.shape == (3, 1, 8, 8)
    assert set(torch.unique(mask).tolist()) == {0.0, 1.0}  # nearest keeps a mask binary
    assert float(mask[1].sum()) == pytest.approx(16, abs=4) and float(mask[0].sum()) == 0
    assert 0 < float(img[1].min()) or float(img[1].max()) == 1.0


def test_axis_from_geometry():
    affine = torch.tensor([[0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 1]])  # z on voxel axis 1
    vol = MetaTensor(_volume((1, 4, 6, 8)), affine=affine)
    out = ExtractSlices(spatial_size=(4, 8))(vol)
    assert out.shape == (6, 1, 4, 8)
    assert not isinstance(out, MetaTensor) or out.ndim == 4


def test_dict_version_shares_axis_and_modes():
    affine = torch.tensor([[0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 1]])
    img = MetaTensor(torch.rand(1, 4, 6, 8), affine=affine)
    lab = (torch.rand(1, 4, 6, 8) > 0.5).to(torch.uint8)  # no affine: must follow the image's axis
    out = ExtractSlicesd(keys=["image", "label"], spatial_size=16, mode=["bilinear", "nearest"])(
        {"image": img, "label": lab}
    )
    assert out["image"].shape == out["label"].shape == (6, 1, 16, 16)
    assert out["slice_axis"] == 1
    assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("kwargs", [{"spatial_size": 0}, {"slice_axis": 3}, {"mode": "cubic-spline"}])
def test_invalid_options(kwargs):
    with pytest.raises(ValueError):
        ExtractSlices(**kwargs)


def test_rejects_2d_input():
    with pytest.raises(ValueError, match="channel-first 3D"):
        ExtractSlices()(torch.zeros(1, 8, 8))


def test_output_is_a_plain_tensor():
    # a MetaTensor would send every network operation through MONAI's __torch_function__ (slow at inference)
    vol = MetaTensor(torch.rand(1, 20, 16, 4), affine=torch.eye(4))
    for size in ((20, 16), (8, 8)):  # without and with resizing
        assert type(ExtractSlices(spatial_size=size, slice_axis=2)(vol)) is torch.Tensor
