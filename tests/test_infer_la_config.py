"""configs/infer_la.yaml: the LA-mask inference pieces MONAI Label's bundle infer task runs, in-process."""

import os

import nibabel as nib
import numpy as np
import pytest
import torch

from monai.bundle import ConfigParser
from monai.data import MetaTensor

from bundle.data import volume_transform
from tests.conftest import write_nifti

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = [os.path.join(ROOT, "configs", "common.yaml"), os.path.join(ROOT, "configs", "infer_la.yaml")]
# oblique, anisotropic, shifted, and with the head-foot direction on voxel axis 1 (so the slice axis is 1)
AFFINE = np.array([[0.0, 0.3, 1.2, -30.0], [1.1, 0.0, 0.2, 12.0], [0.0, 2.4, -0.3, 55.0], [0, 0, 0, 1]])


class Brightness(torch.nn.Module):
    """A stand-in detector whose logit is positive exactly where the normalised intensity exceeds 0.5."""

    def forward(self, x):
        return 40.0 * (x - 0.5)


def _parser(**overrides):
    parser = ConfigParser()
    parser.read_config(CONFIG)
    parser.update({"device": "cpu", **overrides})
    return parser


def _run(parser, path, network):
    data = parser.get_parsed_content("preprocessing")({"image": path})
    inferer = parser.get_parsed_content("inferer")
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None], network)[0]
    return data, parser.get_parsed_content("postprocessing")(data)


def _block_volume(tmp_path, shape, block):
    vol = np.zeros(shape, np.float32)
    vol[block] = 100.0
    return write_nifti(str(tmp_path / "study.nii.gz"), vol, AFFINE), vol > 50


def test_mask_is_on_the_volume_grid_and_exact_without_resizing(tmp_path):
    path, truth = _block_volume(tmp_path, (32, 9, 32), np.s_[8:20, 2:6, 10:30])
    data, out = _run(_parser(spatial_size=32), path, Brightness())
    assert data["slice_axis"] == 1 and data["image"].shape == (1, 9, 32, 32)
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


def test_preprocessing_is_the_training_preprocessing(tmp_path):
    rng = np.random.default_rng(0)
    path = write_nifti(str(tmp_path / "noise.nii.gz"), rng.integers(0, 255, (20, 6, 18)).astype(np.uint8), AFFINE)
    ours = _parser(spatial_size=16).get_parsed_content("preprocessing")({"image": path})["image"]
    train = volume_transform(spatial_size=16, with_label=False)({"image": path})["image"]  # (S, 1, h, w)
    assert ours.shape == (1, 6, 16, 16)
    torch.testing.assert_close(torch.as_tensor(ours)[0], torch.as_tensor(train)[:, 0])


def test_slice_inferer_runs_the_detector_slice_by_slice():
    parser = _parser(spatial_size=32, slice_batch_size=3)
    parser["network_def"]["channels"] = [4, 8, 16, 32, 64]
    net = parser.get_parsed_content("network_def").eval()
    stack = torch.rand(1, 1, 7, 32, 32)
    with torch.no_grad():
        via_inferer = parser.get_parsed_content("inferer")(stack, net)
        direct = net(stack[0].permute(1, 0, 2, 3))  # (S, 1, h, w) as in training
    torch.testing.assert_close(via_inferer[0].permute(1, 0, 2, 3), direct, atol=1e-5, rtol=1e-4)


def test_threshold_is_la_threshold(tmp_path):
    path, truth = _block_volume(tmp_path, (32, 5, 32), np.s_[4:12, 1:3, 4:12])
    _, low = _run(_parser(spatial_size=32, la_threshold=1e-30), path, Brightness())
    assert int(low["pred"].sum()) == low["pred"].numel()  # every sigmoid output exceeds 1e-30
    assert nib.load(path).shape == tuple(low["pred"].shape[1:])
