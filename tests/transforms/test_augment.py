import numpy as np
import pytest
import torch

from bundle.transforms import RandSliceAffine, RandSliceAffined


def _pair():
    img = torch.zeros(1, 32, 32)
    img[:, 10:22, 8:20] = 1.0
    return {"image": img, "label": (img > 0.5).to(torch.uint8)}


def test_keeps_shape_dtype_and_binary_mask():
    t = RandSliceAffined(keys=["image", "label"], prob=1.0, mode=["bilinear", "nearest"]).set_random_state(0)
    for _ in range(10):
        out = t(_pair())
        assert out["image"].shape == out["label"].shape == (1, 32, 32)
        assert out["image"].dtype == torch.float32
        assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}


def test_image_and_mask_share_the_draw():
    t = RandSliceAffined(keys=["image", "label"], prob=1.0, mode=["nearest", "nearest"]).set_random_state(3)
    out = t(_pair())
    torch.testing.assert_close(torch.as_tensor(out["image"]).float(), torch.as_tensor(out["label"]).float())


def test_prob_zero_is_identity_and_prob_one_changes():
    data = _pair()
    out = RandSliceAffined(keys=["image", "label"], prob=0.0)(data)
    torch.testing.assert_close(torch.as_tensor(out["image"]), data["image"])
    moved = RandSliceAffined(keys=["image", "label"], prob=1.0).set_random_state(1)(data)
    assert not torch.equal(torch.as_tensor(moved["image"]), data["image"])


def test_components_drawn_independently():
    t = RandSliceAffine(prob=0.5).set_random_state(0)
    counts = np.zeros(4)
    n = 400
    for _ in range(n):
        t.randomize()
        counts += [k in t.params for k in ("rotate_params", "shear_params", "translate_params", "scale_params")]
    np.testing.assert_allclose(counts / n, 0.5, atol=0.08)


def test_seeded_draws_repeat():
    a = RandSliceAffined(keys="image", prob=1.0).set_random_state(7)(_pair())["image"]
    b = RandSliceAffined(keys="image", prob=1.0).set_random_state(7)(_pair())["image"]
    torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b))


@pytest.mark.parametrize("kwargs", [{"prob": 1.5}, {"rotate_range": -0.1}, {"translate_range": (-1, 2)}])
def test_invalid_options(kwargs):
    with pytest.raises(ValueError):
        RandSliceAffine(**kwargs)


def test_label_contrast_darkens_the_pool_and_brightens_a_ring_by_hand():
    from bundle.transforms import RandLabelContrastd

    image = torch.full((3, 9, 9), 0.5)
    image[0, 0, 0] = 0.9  # the image's maximum, which the ring is clipped to
    label = torch.zeros((1, 9, 9))
    label[0, 3:6, 3:6] = 1
    t = RandLabelContrastd(keys="image", pool_factor=(0.4, 0.4), wall_factor=(2.0, 2.0), wall_px=1, prob=1.0)
    out = t({"image": image, "label": label})["image"]
    assert torch.allclose(out[:, 4, 4], torch.tensor(0.2))  # every channel: the centre slice's mask
    assert torch.allclose(out[:, 2, 2], torch.tensor(0.9)) and torch.allclose(out[:, 6, 4], torch.tensor(0.9))
    assert torch.allclose(out[:, 1, 4], torch.tensor(0.5)) and out[0, 0, 0] == 0.9  # outside the 1-pixel ring
    empty = {"image": image, "label": torch.zeros((1, 9, 9))}
    assert torch.equal(t(empty)["image"], image)  # no LA on the slice: unchanged
    never = RandLabelContrastd(keys="image", prob=0.0)
    assert torch.equal(never({"image": image, "label": label})["image"], image)


def test_label_contrast_validates_its_ranges():
    from bundle.transforms import RandLabelContrastd

    for kw in ({"pool_factor": (1.0, 0.5)}, {"wall_factor": (-1.0, 1.0)}, {"wall_px": -1}):
        with pytest.raises(ValueError):
            RandLabelContrastd(keys="image", **kw)
