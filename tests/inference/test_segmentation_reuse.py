"""configs/inference.yaml as MONAI Label's bundle infer task runs it, in-process: `network_def`, `preprocessing`
(image path in), `inferer`, `postprocessing` (pred out: the LA mask, uint8, on the volume's own grid)."""

import os

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from bundle.data import volume_transform
from bundle.transforms import ExtractSlices
from tests.conftest import write_nifti

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = [os.path.join(ROOT, "configs", "common.yaml"), os.path.join(ROOT, "configs", "inference.yaml")]
# oblique, anisotropic, shifted, and with the head-foot direction on voxel axis 1 (so the slice axis is 1)
AFFINE = np.array([[0.0, 0.3, 1.2, -30.0], [1.1, 0.0, 0.2, 12.0], [0.0, 2.4, -0.3, 55.0], [0, 0, 0, 1]])


class Brightness(torch.nn.Module):
    """A detector with known behaviour: its logit is positive exactly where the normalised intensity exceeds 0.5."""

    def forward(self, x):
        return 40.0 * (x - 0.5)


# the paper's resized slices, plain 2D, the mask as thresholded: what these known-answer detectors need
RESIZED = {"pixel_mm": None, "context_slices": 0, "context_mm": None, "keep_largest": False}


def _parser(**overrides):
    parser = ConfigParser()
    parser.read_config(CONFIG)
    parser.update({"device": "cpu", **RESIZED, **overrides})
    return parser


def _run(parser, path, network):
    data = parser.get_parsed_content("preprocessing")({"image": path})
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network)[0]
    return data, parser.get_parsed_content("postprocessing")(data)


def _block_volume(tmp_path, shape, block):
    vol = np.zeros(shape, np.float32)
    vol[block] = 100.0
    return write_nifti(str(tmp_path / "study.nii.gz"), vol, AFFINE), vol > 50


def test_network_def_is_the_shipped_detector():
    parser = ConfigParser()
    parser.read_config(CONFIG)
    network = parser.get_parsed_content("network_def")  # from models/detector.json; MONAI Label loads its weights
    assert type(network).__name__ == "Ensemble" and type(network.members[0]).__name__ == "UNet"
    # the 1.25 mm members run inside the plan's 1.0 mm inferer, their 160 px windows resampled to 128 px
    assert type(network.members[-1]).__name__ == "Rescaled" and network.members[-1].scale == 0.8
    assert parser.get_parsed_content("pixel_mm") == 1.0 and parser.get_parsed_content("spatial_size") == 160
    assert parser.get_parsed_content("context_slices") == 1


def test_mask_is_on_the_volume_grid_and_exact_without_resizing(tmp_path):
    path, truth = _block_volume(tmp_path, (32, 9, 32), np.s_[8:20, 2:6, 10:30])
    data, out = _run(_parser(spatial_size=32), path, Brightness())
    assert data["image"].shape == (1, 32, 9, 32)  # the volume, not its slices: MONAI Label's image in
    mask = out["pred"]
    assert isinstance(mask, MetaTensor) and mask.dtype == torch.uint8 and mask.shape == (1, 32, 9, 32)
    np.testing.assert_allclose(mask.affine.numpy(), AFFINE, atol=1e-5)
    assert np.array_equal(mask[0].numpy().astype(bool), truth)


def test_mask_after_resizing_matches_the_block(tmp_path):
    path, truth = _block_volume(tmp_path, (40, 7, 24), np.s_[10:30, 1:5, 6:18])
    _, out = _run(_parser(spatial_size=16), path, Brightness())
    mask = out["pred"][0].numpy().astype(bool)
    assert mask.shape == truth.shape
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.9 and not mask[:, [0, 5, 6], :].any()  # slices without the block stay empty


def test_slices_are_the_training_slices(tmp_path):
    rng = np.random.default_rng(0)
    path = write_nifti(str(tmp_path / "noise.nii.gz"), rng.integers(0, 255, (20, 6, 18)).astype(np.uint8), AFFINE)
    parser = _parser(spatial_size=16, slice_batch_size=4)
    volume = parser.get_parsed_content("preprocessing")({"image": path})["image"]
    train = volume_transform(spatial_size=16, with_label=False)({"image": path})["image"]  # (S, 1, h, w)
    torch.testing.assert_close(torch.as_tensor(ExtractSlices(spatial_size=16)(volume)), torch.as_tensor(train))
    parser["network_def"] = {
        "_target_": "UNet",
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 1,
        "channels": [4, 8, 16, 32, 64],
        "strides": [2, 2, 2, 2],
        "num_res_units": 2,
        "norm": "batch",
    }
    net = parser.get_parsed_content("network_def").eval()
    with torch.no_grad():
        s1 = parser.get_parsed_content("inferer").predict_slices(volume, net)  # in batches of 4
        direct = net(torch.as_tensor(train))
    torch.testing.assert_close(s1.logits, direct, atol=1e-5, rtol=1e-4)


def test_threshold_is_la_threshold(tmp_path):
    path, _ = _block_volume(tmp_path, (32, 5, 32), np.s_[4:12, 1:3, 4:12])
    _, low = _run(_parser(spatial_size=32, la_threshold=1e-30), path, Brightness())
    assert int(low["pred"].sum()) == low["pred"].numel()  # every sigmoid output exceeds 1e-30
    assert nib.load(path).shape == tuple(low["pred"].shape[1:])
