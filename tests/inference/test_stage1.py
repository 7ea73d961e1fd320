"""Stage 1 over a volume: the same slices as training, and the geometry round trip back to the input's grid."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.data import volume_transform
from bundle.inference import ResizedSliceInferer
from tests.conftest import write_nifti


def identity_net(x):
    return x


class Threshold(torch.nn.Module):
    """A real 1x1 convolution that turns bright pixels (normalised intensity > 0.5) into positive logits."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(40.0)
            self.conv.bias.fill_(-20.0)

    def forward(self, x):
        return self.conv(x)


AFFINES = {
    "axial": np.diag([0.7, 0.8, 2.0, 1.0]),  # slices along axis 2
    "axis0": np.array([[0, 0.7, 0, 5], [0, 0, 0.9, -3], [1.6, 0, 0, 1], [0, 0, 0, 1]], float),  # z along voxel axis 0
    "axis1": np.array([[-0.6, 0, 0, 1], [0, 0, -0.9, 2], [0, 1.8, 0, -7], [0, 0, 0, 1]], float),  # z along voxel axis 1
}


def test_slices_are_the_training_slices(tmp_path):
    rng = np.random.default_rng(0)
    path = write_nifti(
        str(tmp_path / "v.nii.gz"), rng.integers(0, 255, (37, 29, 11)).astype(np.uint8), AFFINES["axial"]
    )
    train = volume_transform(spatial_size=32, with_label=False)({"image": path})["image"]
    from monai.transforms import LoadImage

    from bundle.transforms import ScaleForegroundPercentiles

    vol = ScaleForegroundPercentiles(0.5, 99.5)(LoadImage(ensure_channel_first=True)(path))
    out = ResizedSliceInferer(spatial_size=32, batch_size=4).predict_slices(vol, identity_net)
    assert out.axis == 2 and out.in_plane == (37, 29)
    torch.testing.assert_close(out.slices, torch.as_tensor(train))
    torch.testing.assert_close(out.logits, out.slices)  # batches of 4 reassembled in order


@pytest.mark.parametrize("name", list(AFFINES))
def test_round_trip_without_resizing_is_exact(name):
    shape = (32, 32, 32)
    vol = MetaTensor(torch.rand(1, *shape), affine=torch.as_tensor(AFFINES[name]))
    inferer = ResizedSliceInferer(spatial_size=32)
    with torch.no_grad():
        back = inferer(vol[None], identity_net)
    assert back.shape == (1, 1, *shape)
    torch.testing.assert_close(back[0].as_tensor(), vol.as_tensor())
    np.testing.assert_allclose(np.asarray(back.affine[0] if back.affine.ndim == 3 else back.affine), AFFINES[name])


@pytest.mark.parametrize("name", list(AFFINES))
def test_round_trip_with_resizing_recovers_the_structure(name):
    shape = (45, 23, 30)
    box = np.zeros(shape, bool)
    box[10:30, 6:17, 8:22] = True
    vol = MetaTensor(torch.as_tensor(box[None].astype(np.float32)), affine=torch.as_tensor(AFFINES[name]))
    inferer = ResizedSliceInferer(spatial_size=64, batch_size=7)
    with torch.no_grad():
        s1 = inferer.predict_slices(vol, Threshold())
    axis = int(np.argmax(np.abs(AFFINES[name][2, :3]) / np.linalg.norm(AFFINES[name][:3, :3], axis=0)))
    assert s1.axis == axis and len(s1.slices) == shape[axis] and s1.slices.shape[2:] == (64, 64)
    back = inferer.to_volume(s1.logits, vol, s1.axis)
    assert tuple(back.shape) == (1, *shape)
    np.testing.assert_allclose(np.asarray(back.affine), AFFINES[name])  # the volume's geometry
    mask = back[0].numpy() > 0
    dice = 2 * (mask & box).sum() / (mask.sum() + box.sum())
    assert dice > 0.97, dice
    assert not mask[:, :, :8].any() and not mask[:30, :6].any()  # nothing far from the box


def test_validation():
    with pytest.raises(ValueError):
        ResizedSliceInferer(batch_size=0)
    with pytest.raises(ValueError):
        ResizedSliceInferer().predict_slices(torch.zeros(1, 4, 4), identity_net)
