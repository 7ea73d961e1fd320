"""The stress test's contrast changes, by hand on a small volume."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.evaluation.stress import CONTRASTS, alter_contrast


def _volume(n: int = 12, box: slice = slice(4, 8)):
    image = np.full((n, n, n), 100.0, np.float32)
    image[0, 0, 0] = 1000.0  # one bright voxel: the 99.5th percentile sits between 100 and 1000
    label = np.zeros((n, n, n), np.uint8)
    label[box, box, box] = 1
    affine = np.diag([1.0, 1.0, 2.0, 1.0])  # 1 x 1 x 2 mm voxels
    return MetaTensor(torch.from_numpy(image)[None], affine=torch.from_numpy(affine)), torch.from_numpy(label)[None]


def test_dark_pool_darkens_the_label_and_brightens_a_shell_with_smooth_edges():
    image, label = _volume(28, slice(8, 20))  # a 12-voxel box: its centre is 6 mm (3 sigma) from the edge
    image[0, 0] = 1000.0  # a bright slab (3.6 % of the voxels): the 99.5th percentile is 1000, room to brighten
    out = alter_contrast("dark_pool", image, label)[0].numpy()
    top = np.percentile(image[0].numpy(), 99.5)
    assert out[14, 14, 14] == pytest.approx(40.0, abs=0.5)  # the pool's centre at 40 %
    assert 100.0 < out[6, 14, 14] <= top and out[6, 14, 14] > out[4, 14, 14] >= 100.0  # 2 mm out: brighter than 4 mm
    assert out[2, 2, 14] == pytest.approx(100.0, abs=0.5) and out[0, 0, 0] == 1000.0  # far away: unchanged
    edge = out[7:10, 14, 14]  # across the edge (x 7 out, 8 and 9 in): a ramp, not a step at the label
    assert edge[0] > edge[1] > edge[2] > 40.5
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


def test_the_scripts_bad_arguments_are_one_line(capsys, tmp_path):
    import importlib.util
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location(
        "stress_detector", os.path.join(root, "scripts", "stress_detector.py")
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for argv, message in (
        (["--ensemble", "m.pt", "--contrasts", "none,blur"], "--contrasts: unknown ['blur']"),
        (["--ensemble", "m.pt", "--cv_dir", "runs/cv"], "give one of --cv_dir or --ensemble"),
    ):
        with pytest.raises(SystemExit) as e:
            script.main(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err
