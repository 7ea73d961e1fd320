import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.transforms import ExtractSlices, ExtractSlicesd, RestoreSlices, RestoreSlicesd

Z_ON_AXIS_1 = torch.tensor([[0, 0, 1.5, 10.0], [1.25, 0, 0, -4.0], [0, 2.5, 0, 7.0], [0, 0, 0, 1]])


def _volume(shape=(2, 10, 12, 5)):
    return torch.arange(np.prod(shape), dtype=torch.float32).reshape(shape)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_exact_inverse_without_resize(axis):
    vol = _volume()
    in_plane = [s for i, s in enumerate(vol.shape[1:]) if i != axis]
    slices = ExtractSlices(spatial_size=in_plane, slice_axis=axis)(vol)
    out = RestoreSlices(slice_axis=axis)(slices, vol)
    assert not isinstance(out, MetaTensor)
    torch.testing.assert_close(out, vol)


def test_nearest_roundtrip_through_an_integer_zoom_is_exact():
    mask = torch.zeros(1, 4, 4, 3, dtype=torch.uint8)
    mask[0, 1:3, 0:2, 1] = 1
    mask[0, 3, 3, 2] = 1
    up = ExtractSlices(spatial_size=8, slice_axis=2, mode="nearest")(mask)  # 4x4 -> 8x8 per slice
    assert up.shape == (3, 1, 8, 8)
    out = RestoreSlices(slice_axis=2, mode="nearest", dtype=torch.uint8)(up, mask)
    assert out.dtype == torch.uint8 and out.shape == mask.shape
    assert torch.equal(out, mask)


def test_bilinear_restores_a_constant_slice_exactly():
    vol = torch.zeros(1, 6, 9, 4)
    slices = torch.zeros(4, 1, 16, 16)
    slices[2] = 0.75  # a constant slice stays constant through any linear resize
    out = RestoreSlices(slice_axis=2)(slices, vol)
    assert out.shape == (1, 6, 9, 4)
    torch.testing.assert_close(out[..., 2], torch.full((1, 6, 9), 0.75))
    assert float(out[..., [0, 1, 3]].abs().max()) == 0.0


def test_geometry_of_a_metatensor_reference_is_kept_and_axis_read_from_it():
    ref = MetaTensor(torch.rand(1, 4, 6, 8), affine=Z_ON_AXIS_1, meta={"filename_or_obj": "study.nii.gz"})
    slices = ExtractSlices(spatial_size=32)(ref)  # axis 1 from the affine
    assert slices.shape == (6, 1, 32, 32)
    out = RestoreSlices()(slices, ref)
    assert isinstance(out, MetaTensor) and out.shape == (1, 4, 6, 8)
    torch.testing.assert_close(out.affine, Z_ON_AXIS_1.to(out.affine.dtype))
    assert out.meta["filename_or_obj"] == "study.nii.gz"


def test_dict_version_uses_the_recorded_axis():
    img = MetaTensor(torch.rand(1, 4, 6, 8), affine=Z_ON_AXIS_1)
    d = ExtractSlicesd(keys="image", spatial_size=16)({"image": img})
    d["pred"] = (d["image"] > 0.5).float()
    plain_ref = img.as_tensor()  # no affine: only the recorded axis can say it was 1
    out = RestoreSlicesd(keys="pred", ref_key="ref", mode="nearest")({**d, "ref": plain_ref})
    assert d["slice_axis"] == 1 and out["pred"].shape == (1, 4, 6, 8)


def test_errors_name_the_problem():
    vol = torch.zeros(1, 4, 6, 8)
    with pytest.raises(ValueError, match="7 slices do not fit"):
        RestoreSlices(slice_axis=2)(torch.zeros(7, 1, 4, 6), vol)
    with pytest.raises(ValueError, match=r"\(S, C, h, w\)"):
        RestoreSlices(slice_axis=2)(torch.zeros(8, 4, 6), vol)
    with pytest.raises(ValueError):
        RestoreSlices(slice_axis=3)
    with pytest.raises(KeyError, match="image_volume"):
        RestoreSlicesd(keys="pred", ref_key="image_volume")({"pred": torch.zeros(8, 1, 4, 6)})
