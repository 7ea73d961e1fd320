import numpy as np
import pytest
import torch

from bundle.transforms import BatchRandSliceAffine, DecodeSlice, DecodeSliced, slice_pipeline


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.array([[0, 51, 255]], np.uint8), [[0.0, 0.2, 1.0]]),
        (np.array([[0.0, 0.5, 1.0]], np.float16), [[0.0, 0.5, 1.0]]),
    ],
)
def test_decode(array, expected):
    out = DecodeSlice()(array)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor(expected))
    d = DecodeSliced(keys="image")({"image": array, "label": np.ones(3, np.uint8)})
    assert d["label"].dtype == np.uint8  # only the keys given are decoded
    d = DecodeSliced(keys=["image", "label"], scale_uint8=[True, False])(
        {"image": array, "label": np.ones(3, np.uint8)}
    )
    torch.testing.assert_close(d["label"], torch.ones(3))  # masks keep their values
    readonly = np.frombuffer(bytes([0, 255, 51]), np.uint8)
    assert not readonly.flags.writeable
    torch.testing.assert_close(DecodeSlice()(readonly), torch.tensor([0.0, 1.0, 0.2]))


def test_slice_pipeline_with_and_without_augment():
    rec = {"image": np.full((1, 16, 16), 128, np.uint8), "label": np.zeros((1, 16, 16), np.uint8)}
    out = slice_pipeline()(rec)
    assert out["image"].dtype == out["label"].dtype == torch.float32 and type(out["image"]) is torch.Tensor
    assert float(out["image"].max()) == pytest.approx(128 / 255)


def _batch(n=8, size=24):
    img = torch.zeros(n, 1, size, size)
    img[:, :, 6:18, 8:14] = 1.0
    return img, img.clone().to(torch.uint8)


def test_batch_augment_shapes_binary_mask_and_shared_draw():
    aug = BatchRandSliceAffine(prob=1.0, seed=0)
    img, lab = _batch()
    out, out_lab = aug(img, lab)
    assert out.shape == img.shape and out_lab.shape == lab.shape and out_lab.dtype == torch.uint8
    assert set(torch.unique(out_lab).tolist()) <= {0, 1}
    # image and mask move together: the mask covers the bright pixels of the image
    assert float(out[out_lab.bool()].mean()) > 0.9 and float(out[~out_lab.bool()].mean()) < 0.1
    assert not torch.equal(out, img)


def test_batch_augment_prob_zero_is_identity_and_seeded():
    img, lab = _batch()
    out, out_lab = BatchRandSliceAffine(prob=0.0)(img, lab)
    torch.testing.assert_close(out, img)
    torch.testing.assert_close(out_lab, lab)
    a = BatchRandSliceAffine(prob=0.5, seed=3)(img)[0]
    b = BatchRandSliceAffine(prob=0.5, seed=3)(img)[0]
    torch.testing.assert_close(a, b)


def test_batch_augment_component_rates():
    aug = BatchRandSliceAffine(prob=0.5, flip=False, seed=1)
    theta = aug.theta(4000, (32, 32), torch.device("cpu"))
    moved = (theta[:, :, 2].abs().sum(1) > 0).float().mean()  # the shift is on for about half the slices
    assert float(moved) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("kw", [{"prob": -0.1}, {"scale_range": -1}])
def test_batch_augment_invalid(kw):
    with pytest.raises(ValueError):
        BatchRandSliceAffine(**kw)
