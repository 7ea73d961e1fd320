"""Moving a batch to the device, with optional on-device augmentation and channels-last layout."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from monai.engines import PrepareBatch

from bundle.transforms.augment import BatchRandSliceAffine

__all__ = ["SlicePrepareBatch"]


class SlicePrepareBatch(PrepareBatch):
    """MONAI ``prepare_batch`` for slice batches: to the device, then (optionally) augment there and go NHWC.

    Args:
        augment: a :class:`BatchRandSliceAffine` applied to image and label on the device.
        enabled: apply ``augment`` (False: the loader workers augmented already).
        channels_last: return the image in ``torch.channels_last`` memory format.
        image_key: batch key of the image.
        label_key: batch key of the label (absent: None is returned in its place).
    """

    def __init__(
        self,
        augment: BatchRandSliceAffine | None = None,
        enabled: bool = True,
        channels_last: bool = False,
        image_key: str = "image",
        label_key: str = "label",
    ) -> None:
        self.augment = augment if enabled else None
        self.channels_last = channels_last
        self.image_key, self.label_key = image_key, label_key

    def __call__(
        self, batchdata: Mapping, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        image = torch.as_tensor(batchdata[self.image_key]).to(device=device, non_blocking=non_blocking, **kwargs)
        label = batchdata.get(self.label_key)
        if label is not None:
            label = torch.as_tensor(label).to(device=device, non_blocking=non_blocking, **kwargs)
        if self.augment is not None:
            image, label = self.augment(image, label)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return image, label
