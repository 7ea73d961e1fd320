"""Decode cached slice images (float16, or uint8 holding 255 x intensity) to float32 tensors in 0..1."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch

from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = ["DecodeSlice", "DecodeSliced"]


class DecodeSlice(Transform):
    """A cached slice image as a float32 tensor in 0..1: uint8 is divided by 255, other types are cast.

    The slice cache may store images as uint8 (``bundle.data.SliceCache(dtype="uint8")``), half the memory of
    float16; this makes both storages look the same to the rest of the pipeline.
    """

    backend = [torch.Tensor]

    def __call__(self, img: np.ndarray | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(img)) if not isinstance(img, torch.Tensor) else img
        return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()


class DecodeSliced(MapTransform):
    """Dictionary wrapper of :class:`DecodeSlice`."""

    backend = DecodeSlice.backend

    def __init__(self, keys: KeysCollection = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.decoder = DecodeSlice()

    def __call__(self, data: Mapping[Hashable, np.ndarray]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.decoder(d[key])
        return d
