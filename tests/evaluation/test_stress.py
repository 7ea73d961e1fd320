"""The stress test's contrast changes, by hand on a small volume."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.evaluation.stress import CONTRASTS, alter_contrast


def _volume():
    image = np.full((12, 12, 12), 100.0, np.float32)
    image[0, 0, 0] = 1000.0  # one bright voxel: the 99.5th percentile sits between 100 and 1000
    label = np.zeros((12, 12, 12), np.uint8)
    label[4:8, 4:8, 4:8] = 1
    affine = np.diag([1.0, 1.0, 2.0, 1.0])  # 1 x 1 x 2 mm voxels
    return MetaTensor(torch.from_numpy(image)[None], affine=torch.from_numpy(affine)), torch.from_numpy(label)[None]


def test_dark_pool_darkens_the_label_and_brightens_a_3_mm_shell():
    image, label = _volume()
    out = alter_contrast("dark_pool", image, label)[0].numpy()
    top = np.percentile(image[0].numpy(), 99.5)
    assert out[5, 5, 5] == pytest.approx(40.0)  # the pool at 40 %
    assert out[3, 5, 5] == pytest.approx(min(160.0, top)) and out[1, 5, 5] == pytest.approx(min(160.0, top))  # 1, 3 mm
    assert out[0, 5, 5] == 100.0  # 4 mm away in x: outside the shell
    assert out[5, 5, 3] == pytest.approx(min(160.0, top)) and out[5, 5, 2] == 100.0  # 2 mm along z in, 4 mm out
    assert alter_contrast("none", image, label) is image
    assert isinstance(alter_contrast("dark_pool", image, label), MetaTensor)


def test_gamma_and_noise():
    image, label = _volume()
    g = alter_contrast("gamma_2", image, label)[0].numpy()
    assert g[5, 5, 5] == pytest.approx(1000 * 0.1**2) and g[0, 0, 0] == pytest.approx(1000.0)
    assert alter_contrast("gamma_0.5", image, label)[0, 5, 5, 5].item() == pytest.approx(1000 * 0.1**0.5, rel=1e-5)
    a, b = alter_contrast("noise", image, label, seed=1), alter_contrast("noise", image, label, seed=1)
    torch.testing.assert_close(a, b)  # seeded
    assert not torch.equal(a, alter_contrast("noise", image, label, seed=2)) and float(a.mean()) > 100.0  # Rician bias


def test_bad_names_and_shapes():
    image, label = _volume()
    with pytest.raises(ValueError, match="unknown contrast 'blur'"):
        alter_contrast("blur", image, label)
    with pytest.raises(ValueError, match="label shape"):
        alter_contrast("dark_pool", image, label[:, :6])
    assert set(CONTRASTS) >= {"none", "dark_pool", "gamma_0.5", "gamma_2", "noise"}
