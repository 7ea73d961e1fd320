"""Decode cached slices (float16, or uint8 holding 255 x intensity) to float32 tensors."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch

from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import ensure_tuple_rep

__all__ = ["DecodeSlice", "DecodeSliced"]


class DecodeSlice(Transform):
    """A cached slice as a float32 tensor: uint8 images are divided by 255, anything else is cast.

    The slice cache may store images as uint8 (``bundle.data.SliceCache(dtype="uint8")``), half the memory of
    float16; this makes both storages look the same to the rest of the pipeline. The result is always a new
    tensor, so a read-only memory-mapped cache is never written to.

    Args:
        scale_uint8: divide uint8 input by 255 (images); False keeps the values (masks).
    """

    backend = [torch.Tensor]

    def __init__(self, scale_uint8: bool = True) -> None:
        self.scale_uint8 = bool(scale_uint8)

    def __call__(self, img: np.ndarray | torch.Tensor) -> torch.Tensor:
        is_uint8 = img.dtype in (np.uint8, torch.uint8)
        out = img.float() if isinstance(img, torch.Tensor) else torch.from_numpy(np.asarray(img, dtype=np.float32))
        return out / 255.0 if is_uint8 and self.scale_uint8 else out


class DecodeSliced(MapTransform):
    """Dictionary wrapper of :class:`DecodeSlice`.

    Args:
        keys: keys to decode.
        scale_uint8: per key (or one for all): divide uint8 by 255 (images) or not (masks).
        allow_missing_keys: skip keys that are absent.
    """

    backend = DecodeSlice.backend

    def __init__(
        self, keys: KeysCollection = "image", scale_uint8: bool | Sequence[bool] = True, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.decoders = [DecodeSlice(s) for s in ensure_tuple_rep(scale_uint8, len(self.keys))]

    def __call__(self, data: Mapping[Hashable, np.ndarray]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key, decoder in self.key_iterator(d, self.decoders):
            d[key] = decoder(d[key])
        return d
