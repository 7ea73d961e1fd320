"""Stage 1's decisions: the LA mask (largest component), the slice rule (minimum area), plausibility, FOV invariance."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.inference import LABounds, SpacingSliceInferer, detect_la_volume, implausible_la, la_mask, la_slices
from bundle.networks import Ensemble


def _logits(mask: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.where(mask, 10.0, -10.0)[None], dtype=torch.float32)


def test_la_mask_keeps_the_largest_component_and_reports_its_share():
    m = np.zeros((10, 10, 6), bool)
    m[1:5, 1:5, 1:5] = True  # 64 voxels
    m[8, 8, 0] = True  # a speck far away
    mask, kept = la_mask(_logits(m), 0.5, keep_largest=True)
    assert mask.dtype == torch.uint8 and int(mask.sum()) == 64 and kept == pytest.approx(64 / 65)
    raw, kept_raw = la_mask(_logits(m), 0.5, keep_largest=False)
    assert int(raw.sum()) == 65 and kept_raw == 1.0
    assert la_mask(torch.full((1, 4, 4, 4), -10.0), 0.5)[1] == 1.0  # nothing found: nothing removed
    with pytest.raises(ValueError):
        la_mask(_logits(m), 1.0)


def test_threshold_is_at_or_above():
    logits = torch.zeros((1, 2, 2, 2))  # sigmoid exactly 0.5
    assert int(la_mask(logits, 0.5, keep_largest=False)[0].sum()) == 8


def test_slice_rule_minimum_area_by_hand():
    m = np.zeros((1, 6, 6, 4), np.uint8)
    m[0, :2, :2, 0] = 1  # 4 pixels
    m[0, :3, :3, 1] = 1  # 9 pixels
    m[0, 0, 0, 3] = 1  # 1 pixel
    areas, sel = la_slices(m, axis=2, pixel_area_mm2=0.5, min_area_mm2=0)
    assert areas.tolist() == [2.0, 4.5, 0.0, 0.5] and sel.tolist() == [0, 1, 3]  # the paper's rule: any pixel
    assert la_slices(m, 2, 0.5, 2.0)[1].tolist() == [0, 1]  # at or above the area
    assert la_slices(m, 2, 0.5, 4.6)[1].tolist() == []


def test_plausibility_reasons():
    assert implausible_la(50, 40, 1.0) == []
    small = implausible_la(0.3, 40, 1.0)
    assert len(small) == 1 and "0.3 ml" in small[0]
    assert len(implausible_la(50, 5, 0.5)) == 2
    assert implausible_la(300, 40, 1.0, LABounds(max_ml=400)) == []
    with pytest.raises(ValueError):
        LABounds(min_ml=10, max_ml=5)


def test_detect_la_volume_flags_a_tiny_la():
    m = np.zeros((20, 20, 20), bool)
    m[5:8, 5:8, 5:8] = True  # 27 voxels of 1 mm^3: 0.027 ml
    vol = MetaTensor(torch.zeros((1, 20, 20, 20)), affine=torch.eye(4))
    out = detect_la_volume(MetaTensor(_logits(m), affine=torch.eye(4)), vol, 2)
    assert out["selected"].tolist() == [5, 6, 7] and out["la_volume_ml"] == pytest.approx(0.027)
    assert out["la_extent_mm"] == 3.0 and any("volume" in r for r in out["reasons"])


class _Bright(torch.nn.Module):
    """A translation-equivariant stand-in detector (3x3 mean of the middle channel minus a level)."""

    def forward(self, x):
        c = x[:, x.shape[1] // 2 : x.shape[1] // 2 + 1]
        return 20 * (torch.nn.functional.avg_pool2d(c, 3, 1, 1) - 0.5)


def test_same_mask_and_slices_for_a_scan_inside_a_wider_field_of_view():
    rng = np.random.default_rng(0)
    img = np.zeros((80, 60, 12), np.float32)  # 50 x 37.5 mm at 0.625 mm
    img[15:65, 12:48, 3:9] = 1.0  # a 31 x 22 mm "LA"
    img += rng.uniform(0, 0.2, img.shape).astype(np.float32)
    affine = torch.diag(torch.tensor([0.625, 0.625, 1.25, 1.0], dtype=torch.float64))
    small = MetaTensor(torch.as_tensor(img)[None], affine=affine)
    wide = np.zeros(
        (160, 120, 12), np.float32
    )  # twice the field of view (even offsets: see the model card on odd ones)
    wide[40:120, 30:90] = img
    big = MetaTensor(torch.as_tensor(wide)[None], affine=affine)
    inferer = SpacingSliceInferer(pixel_mm=1.25, roi_size=32, context=1, batch_size=4)
    net = _Bright()
    outs = []
    for v in (small, big):
        s1 = inferer.predict_slices(v, net)
        outs.append(detect_la_volume(inferer.to_volume(s1.logits, v, s1.axis), v, s1.axis))
    a, b = outs[0]["mask"][0].numpy(), outs[1]["mask"][0].numpy()[40:120, 30:90]
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert a.sum() > 100 and dice >= 0.98
    assert outs[0]["selected"].tolist() == outs[1]["selected"].tolist() == list(range(3, 9))
    assert int(outs[1]["mask"][0].numpy().sum()) == int(b.sum())  # nothing found in the dark margin


def test_ensemble_averages_probabilities():
    a, b = torch.nn.Conv2d(1, 1, 1), torch.nn.Conv2d(1, 1, 1)
    for conv, bias in ((a, 2.0), (b, -1.0)):
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.fill_(bias)
    ens = Ensemble.from_networks([a, b])
    out = ens(torch.zeros(1, 1, 2, 2))
    expected = (torch.sigmoid(torch.tensor(2.0)) + torch.sigmoid(torch.tensor(-1.0))) / 2
    assert torch.allclose(torch.sigmoid(out), expected.expand_as(out), atol=1e-5)
    assert set(Ensemble(a, members=3).state_dict()) == {
        f"members.{k}.{p}" for k in range(3) for p in ("weight", "bias")
    }


def test_an_implausible_la_is_referred_not_ok():
    from bundle.inference import ResizedSliceInferer, ScanResult, TwoStageStep

    vol = np.zeros((1, 32, 32, 16), np.float32)
    vol[0, 10:14, 10:14, 6:10] = 1.0  # a 4 x 4 x 4 mm "LA" of 1 mm voxels: 0.064 ml
    volume = MetaTensor(torch.as_tensor(vol), affine=torch.eye(4, dtype=torch.float64))
    step = TwoStageStep(la_threshold=0.5, min_slices=4)
    result = ScanResult(input="tiny")
    with torch.no_grad():
        step.assess_volume(volume, lambda x: 20 * (x - 0.5), ResizedSliceInferer(spatial_size=32), result)
    assert result.status == "implausible_la" and result.refer == 1
    assert result.message.startswith("implausible LA: LA volume 0.1 ml outside 15-250 ml")
    assert result.n_la_slices == 4 and result.detail.qa_reliable is False


def test_largest_component_is_monai_s():
    """The bounded-memory largest component equals MONAI's KeepLargestConnectedComponent (connectivity 3)."""
    from monai.transforms import KeepLargestConnectedComponent

    from bundle.transforms.selection import largest_component

    rng = np.random.default_rng(0)
    for density in (0.05, 0.2, 0.35):
        for _ in range(5):
            m = torch.as_tensor(rng.random((1, 30, 28, 20)) < density, dtype=torch.uint8)
            expected = KeepLargestConnectedComponent(applied_labels=[1], connectivity=3)(m).to(torch.uint8)
            assert torch.equal(torch.as_tensor(expected), largest_component(m))
    assert int(largest_component(torch.zeros((1, 4, 4, 4), dtype=torch.uint8)).sum()) == 0
