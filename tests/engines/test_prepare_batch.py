import torch

from bundle.engines import SlicePrepareBatch
from bundle.transforms import BatchRandSliceAffine


def test_to_device_channels_last_and_augment_switch():
    batch = {"image": torch.rand(4, 1, 16, 16), "label": (torch.rand(4, 1, 16, 16) > 0.5).float(), "volume": [0] * 4}
    img, lab = SlicePrepareBatch(augment=BatchRandSliceAffine(prob=1.0, seed=0), enabled=False, channels_last=True)(
        batch, torch.device("cpu")
    )
    assert img.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(img, batch["image"])  # disabled: untouched values
    img2, lab2 = SlicePrepareBatch(augment=BatchRandSliceAffine(prob=1.0, seed=0))(batch, "cpu")
    assert not torch.equal(img2, batch["image"]) and lab2.shape == lab.shape
    img3, lab3 = SlicePrepareBatch()({"image": batch["image"]}, "cpu")
    assert lab3 is None
