"""The LA-region stacks of QA training: scaled as inference scales the window it cuts."""

import os

import numpy as np

from bundle.data.datalist import load_datalist
from bundle.data.region_cache import load_region_scans, region_cache, region_scans
from bundle.transforms.region import center_window, normalise_region


def test_training_stacks_are_scaled_as_the_inference_window(tiny_demo, tmp_path):
    entries = load_datalist(tiny_demo, os.path.dirname(tiny_demo), ("quality",))["quality"][:3]
    recipe = {"pixel_mm": 2.5, "size": 16, "margin": 2, "normalise": 0.5}
    scans = region_scans(entries, str(tmp_path / "cache"), recipe)  # cut 20 wide: training shifts within it
    # inference cuts the 16-pixel window itself and scales it by its own median (bundle.inference.QAStage.cut)
    window = load_region_scans(region_cache(entries, str(tmp_path / "cache"), 2.5, 16))
    for s, w in zip(scans, window):
        assert s.images.shape[1:] == (20, 20) and w.images.shape[1:] == (16, 16)
        centre = center_window(s.images.astype(np.float32), 16)
        inner = centre[centre > 0]
        assert abs(float(np.median(inner)) - 0.5) < 2e-3  # the window's median, not the wider cut's, is 0.5
        expected = normalise_region(w.images.astype(np.float32), 0.5)
        np.testing.assert_allclose(centre, expected, rtol=2e-3, atol=2e-3)
