"""The inference config as a MONAI Label segmentation task uses it: network_def, pre/postprocessing, inferer."""

import os

import numpy as np
import torch

from monai.bundle import ConfigParser

from tests.conftest import write_nifti

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_image_in_pred_out_in_the_image_grid(tmp_path):
    parser = ConfigParser()
    parser.read_config([os.path.join(ROOT, "configs", "common.yaml"), os.path.join(ROOT, "configs", "inference.yaml")])
    parser["spatial_size"] = 32
    affine = np.array([[0.7, 0, 0, 1], [0, 0.7, 0, 2], [0, 0, 2.0, 3], [0, 0, 0, 1]], float)
    vol = np.zeros((30, 26, 14), np.int16)
    vol[5:20, 8:18, 3:9] = 500
    path = write_nifti(str(tmp_path / "img.nii.gz"), vol, affine)
    network = parser.get_parsed_content("network_def")  # MONAI Label loads models/model.pt into it
    assert isinstance(network, torch.nn.Module)
    network = torch.nn.Conv2d(1, 1, 1)  # a stand-in with known behaviour: bright is LA
    with torch.no_grad():
        network.weight.fill_(40.0)
        network.bias.fill_(-20.0)
    data = parser.get_parsed_content("preprocessing")({"image": path})
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network)[0]
    data = parser.get_parsed_content("postprocessing")(data)
    pred = data["pred"]
    assert tuple(pred.shape) == (1, 30, 26, 14)
    np.testing.assert_allclose(np.asarray(pred.affine), affine)
    mask = pred[0].numpy() > 0.5
    assert 2 * (mask & (vol > 0)).sum() / (mask.sum() + (vol > 0).sum()) > 0.95
